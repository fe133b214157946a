"""Writes for teams, capacity requests, grants and serving deployments.

Every function is keyword-only and transactional, and writes its audit row in the same transaction
as the change. Errors are Django ValidationError (bad input, with field names where there is one)
or PermissionDenied (the actor may not do this: quotas.policies says who may); forms and the API
turn both into messages. One module per entity; this package re-exports them all.
"""

from quotas.services.decisions import DecisionResult, capacity_requests_decide
from quotas.services.grants import (
    grant_expire,
    grant_namespace_delete,
    grant_provisioning_fail,
    grant_provisioning_start,
    grant_provisioning_succeed,
    grant_revoke,
    grant_shrink,
    grants_expire_due,
)
from quotas.services.requests import (
    capacity_request_approve,
    capacity_request_cancel,
    capacity_request_create,
    capacity_request_expire,
    capacity_request_reject,
    capacity_request_submit,
    capacity_requests_expire_due,
)
from quotas.services.serving import (
    serving_deployment_create,
    serving_deployment_delete,
    serving_deployment_scale,
)
from quotas.services.teams import membership_remove, membership_set

__all__ = [
    "DecisionResult",
    "capacity_request_approve",
    "capacity_request_cancel",
    "capacity_request_create",
    "capacity_request_expire",
    "capacity_request_reject",
    "capacity_request_submit",
    "capacity_requests_decide",
    "capacity_requests_expire_due",
    "grant_expire",
    "grant_namespace_delete",
    "grant_provisioning_fail",
    "grant_provisioning_start",
    "grant_provisioning_succeed",
    "grant_revoke",
    "grant_shrink",
    "grants_expire_due",
    "membership_remove",
    "membership_set",
    "serving_deployment_create",
    "serving_deployment_delete",
    "serving_deployment_scale",
]
