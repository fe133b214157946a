"""Level-based reconcile of grants and serving deployments onto their clusters.

Every reconcile reads what the database wants, builds the manifests with the pure builders
(`pools.manifests`, `quotas.manifests`), server-side applies everything with the portal's one field
manager (reading each live object first when it looks for drift), reads back what the cluster says
and records it as status conditions plus the observed generation. Nothing depends on what an earlier
run did, so a run may be repeated, interrupted or duplicated at any point: the next one converges.

Cluster errors: a temporary one (unreachable, throttled, 5xx) is recorded as Ready=False with the
cluster's reason and re-raised for the task to retry with backoff; a permanent one (forbidden, invalid)
is recorded with the apiserver's message and fails the grant until a later resync succeeds.

Modules: `base` (desired state, compare and apply, conditions, audit notes), `grants`, `bulk` (new
grants of a cluster in one pass: what approvals queue), `serving`
(serving deployments), `sweep` (what the periodic sweeper queues again).
"""

from quotas.reconcile.base import Condition, diff, grant_contract, merge_conditions, serving_spec
from quotas.reconcile.bulk import BulkOutcome, grants_provision, grants_reconcile
from quotas.reconcile.grants import grant_reconcile
from quotas.reconcile.serving import serving_deployment_reconcile
from quotas.reconcile.sweep import reconcile_due

__all__ = [
    "BulkOutcome",
    "Condition",
    "diff",
    "grant_contract",
    "grant_reconcile",
    "grants_provision",
    "grants_reconcile",
    "merge_conditions",
    "reconcile_due",
    "serving_deployment_reconcile",
    "serving_spec",
]
