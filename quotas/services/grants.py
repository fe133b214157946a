"""Grants: revoking, expiring, shrinking and deleting their namespace (each an audited change of the
desired state the reconciler applies), and the state moves the reconciler makes (quotas.reconcile)."""

from datetime import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from portal import statements
from portal.models import User
from portal.querysets import locked
from quotas import policies
from quotas.models import CapacityRequest, Grant
from quotas.services.common import (
    PROVISIONABLE_STATES,
    desired_state_bump,
    desired_state_change,
    live_deployments,
    locked_grant,
    transition,
)
from quotas.services.requests import capacity_requests_expire_due
from quotas.states import HOLDING_STATES, TERMINAL_STATES, RequestState

S = RequestState


def _end_grant(grant: Grant, *, to: str, actor: User | None, action: str, message: str) -> None:
    req = locked(CapacityRequest.objects.select_related("team")).get(pk=grant.request_id)
    if req.state not in HOLDING_STATES:
        raise ValidationError(
            f"Grant {grant.namespace} is already {req.get_state_display().lower()}.",
            code="invalid_transition",
        )
    # The state move is the audited change; the bump makes the reconciler take the quota away.
    transition(req, to=to, actor=actor, action=action, message=message, audit_obj=grant)
    desired_state_bump(grant)


@transaction.atomic
def grant_revoke(*, grant: Grant, actor: User, reason: str) -> Grant:
    if not policies.can_manage_grants(user=actor):
        raise PermissionDenied("Only a platform admin can revoke a grant.")
    if not reason.strip():
        raise ValidationError({"reason": ["Say why the grant is revoked; the team reads it."]})
    grant = Grant.objects.select_for_update().get(pk=grant.pk)
    _end_grant(grant, to=S.REVOKED, actor=actor, action="grant.revoked", message=reason)
    return grant


@transaction.atomic
def grant_expire(*, grant: Grant) -> Grant:
    grant = Grant.objects.select_for_update().get(pk=grant.pk)
    _end_grant(
        grant, to=S.EXPIRED, actor=None, action="grant.expired", message=f"Validity ended at {grant.ends_at}"
    )
    return grant


def grants_expire_due(*, now: datetime | None = None) -> list[int]:
    """Expire every holding grant whose window has ended, each in its own transaction; return their ids.

    Pending requests whose window ended undecided expire in the same periodic run.
    """
    now = now or timezone.now()
    capacity_requests_expire_due(now=now)
    due = list(
        Grant.objects.filter(ends_at__lte=now, request__state__in=HOLDING_STATES).values_list("pk", flat=True)
    )
    expired = []
    for pk in due:
        try:
            grant_expire(grant=Grant(pk=pk))
        except ValidationError:
            continue  # changed state since we looked: someone revoked it meanwhile
        expired.append(pk)
    return expired


@transaction.atomic
def grant_shrink(*, grant: Grant, actor: User, gpus: int) -> Grant:
    """Lower a running grant's GPUs; the reconciler lowers the quota and the per-pod maximum."""
    if not policies.can_manage_grants(user=actor):
        raise PermissionDenied("Only a platform admin can shrink a grant.")
    grant = locked_grant(
        grant, states=HOLDING_STATES, needed="only a running grant can be shrunk", code="invalid_transition"
    )
    if not 1 <= gpus < grant.gpus:
        hint = "revoke it to take every GPU away" if gpus < 1 else "a grant only grows through a new request"
        bounds = (
            f"Shrink to between 1 and {grant.gpus - 1} GPUs (it holds {grant.gpus})"
            if grant.gpus > 1
            else f"Grant {grant.namespace} holds 1 GPU, the least a grant can hold"
        )
        raise ValidationError({"gpus": [f"{bounds}; {hint}."]})
    live = [d for d in live_deployments(grant).order_by("name") if d.replicas * d.gpus_per_replica]
    used = sum(d.replicas * d.gpus_per_replica for d in live)
    if used > gpus:
        names = ", ".join(f"{d.name} ({d.replicas} x {d.gpus_per_replica})" for d in live)
        raise ValidationError(
            {
                "gpus": [
                    f"Serving deployments of {grant.namespace} need {used} GPUs: {names}. Scale them down "
                    f"or delete them before shrinking the grant to {gpus}."
                ]
            }
        )
    desired_state_change(
        grant,
        actor=actor,
        action="grant.shrunk",
        team=grant.team,
        changes={"gpus": gpus},
        message=f"Grant {grant.namespace} shrunk from {grant.gpus} to {gpus} GPUs.",
    )
    return grant


# --- provisioning: state moves made by the reconciler (quotas.reconcile) -------------------------


def _request_locked(pk: int) -> QuerySet[CapacityRequest]:
    return locked(CapacityRequest.objects.select_related("team")).filter(pk=pk)


def _locked_request(grant: Grant) -> CapacityRequest:
    # Compiled once per process (portal.statements): every reconcile's state move reads it.
    found = statements.bound_instances("request to move", _request_locked, pk=grant.request_id)
    if not found:
        raise CapacityRequest.DoesNotExist(f"CapacityRequest {grant.request_id} does not exist.")
    return found[0]


@transaction.atomic
def grant_provisioning_start(*, grant: Grant) -> bool:
    """approved -> provisioning, when the reconciler first works on the grant. False if not approved."""
    req = _locked_request(grant)
    if req.state != S.APPROVED:
        return False
    transition(
        req,
        to=S.PROVISIONING,
        actor=None,
        action="grant.provisioning",
        message=f"Applying the grant to cluster {grant.pool.cluster.name}",
        audit_obj=grant,
    )
    return True


@transaction.atomic
def grant_provisioning_succeed(*, grant: Grant, message: str) -> bool:
    """-> active once the cluster holds and enforces every object. False if already active or ended."""
    req = _locked_request(grant)
    if req.state not in {S.APPROVED, S.PROVISIONING, S.FAILED}:
        return False
    transition(req, to=S.ACTIVE, actor=None, action="grant.active", message=message, audit_obj=grant)
    return True


@transaction.atomic
def grant_provisioning_fail(*, grant: Grant, message: str) -> bool:
    """-> failed on an error retrying cannot fix (the cluster's message). False if failed or ended."""
    req = _locked_request(grant)
    if req.state not in PROVISIONABLE_STATES:
        return False
    transition(req, to=S.FAILED, actor=None, action="grant.failed", message=message, audit_obj=grant)
    return True


@transaction.atomic
def grant_namespace_delete(*, grant: Grant, actor: User) -> Grant:
    """Delete an ended grant's namespace (and everything in it). Only on a platform admin's word:
    revoking or expiring a grant keeps the namespace so that the team's objects and data survive."""
    if not policies.can_manage_grants(user=actor):
        raise PermissionDenied("Only a platform admin can delete a grant's namespace.")
    grant = locked(Grant.objects.select_related("request", "team")).get(pk=grant.pk)
    if grant.request.state not in TERMINAL_STATES:
        raise ValidationError(
            f"Grant {grant.namespace} is {grant.request.get_state_display().lower()}; revoke it or let it "
            "expire before deleting its namespace.",
            code="invalid_transition",
        )
    if grant.namespace_deleted_at is not None:
        raise ValidationError(f"The namespace {grant.namespace} is already deleted.", code="already_deleted")
    desired_state_change(
        grant,
        actor=actor,
        action="grant.namespace_deleted",
        team=grant.team,
        changes={"namespace_deleted_at": timezone.now()},
        before={},
        after={"namespace": grant.namespace},
        message=f"Namespace {grant.namespace} and everything in it will be deleted from the cluster.",
    )
    return grant
