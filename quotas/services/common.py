"""What the services share: the state move with its audit row, the audited change of desired state
that the reconciler then carries to the cluster, and queuing that reconcile once the change commits."""

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import QuerySet

from portal.models import User
from portal.querysets import locked
from portal.services import audit_event_record, row_insert
from quotas.models import ApprovalDecision, CapacityRequest, Grant, ServingDeployment, Team
from quotas.states import RequestState, check_transition

S = RequestState
# Grants whose objects the cluster should hold: serving deployments may run in them.
PROVISIONABLE_STATES = frozenset({S.APPROVED, S.PROVISIONING, S.ACTIVE})


def snapshot(req: CapacityRequest) -> dict[str, Any]:
    borrow = {"borrow_gpus": req.borrow_gpus} if req.borrow_gpus else {}
    return {"state": req.state, "gpus": req.gpus, "pool": req.pool_id, **borrow}


def transition(
    req: CapacityRequest,
    *,
    to: str,
    actor: User | None,
    action: str,
    message: str = "",
    audit_obj: models.Model | None = None,
    **changes: Any,
) -> None:
    """Move a request to state `to` (checked against the state machine) and audit the move."""
    check_transition(req.state, to)
    before = snapshot(req)
    req.state = to
    for field, value in changes.items():
        setattr(req, field, value)
    # Only what moved: an UPDATE of every column costs a bulk decision noticeably per request.
    req.save(update_fields=["state", "updated_at", *changes])
    audit_event_record(
        actor=actor,
        action=action,
        obj=audit_obj or req,
        team=req.team,
        before=before,
        after=snapshot(req),
        message=message,
    )


def decision_record(
    req: CapacityRequest, *, actor: User | None, stage: str, decision: str, comment: str, to: str, action: str
) -> None:
    """A decision on `req` at `stage`: its row, and the request's audited move to state `to`. The one
    write of single and bulk decisions (inside inserts_batched, the row is inserted with the batch)."""
    row_insert(ApprovalDecision(request=req, stage=stage, approver=actor, decision=decision, comment=comment))
    transition(req, to=to, actor=actor, action=action, message=comment)


def queue_grant_reconcile(grant: Grant) -> None:
    # Imported here: tasks import services, and the task must only be queued once the grant is committed.
    # `robust`: a broker outage must not turn a committed approval into an error page; the
    # provisioning sweeper queues every grant whose observed generation lags.
    from quotas.tasks import grant_reconcile

    transaction.on_commit(lambda: grant_reconcile.delay(grant.pk), robust=True)


def queue_serving_reconcile(deployment: ServingDeployment) -> None:
    from quotas.tasks import serving_deployment_reconcile

    transaction.on_commit(lambda: serving_deployment_reconcile.delay(deployment.pk), robust=True)


DesiredState = Grant | ServingDeployment


def desired_state_change(
    obj: DesiredState,
    *,
    actor: User | None,
    action: str,
    team: Team,
    changes: dict[str, Any],
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    message: str = "",
) -> None:
    """Change what the cluster should hold for `obj`: set the fields, bump the generation (so the
    reconciler and the sweeper see there is something to apply), save, audit, and queue the
    reconcile for when the transaction commits. Call inside the service's transaction."""
    before = before if before is not None else {key: getattr(obj, key) for key in changes}
    for key, value in changes.items():
        setattr(obj, key, value)
    desired_state_bump(obj, fields=list(changes))
    audit_event_record(
        actor=actor,
        action=action,
        obj=obj,
        team=team,
        before=before or None,
        after=(after if after is not None else {key: _plain(v) for key, v in changes.items()}) or None,
        message=message,
    )


def desired_state_bump(obj: DesiredState, *, fields: Sequence[str] = ()) -> None:
    """Save `obj` with its generation bumped, and queue its reconcile for when the transaction
    commits: the level-based reconciler applies whatever the newest generation says."""
    obj.generation += 1
    obj.save(update_fields=[*fields, "generation"])
    if isinstance(obj, Grant):
        queue_grant_reconcile(obj)
    else:
        queue_serving_reconcile(obj)


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def locked_grant(grant: Grant, *, states: frozenset[str], needed: str, code: str) -> Grant:
    """The grant, row-locked for the rest of the transaction, if its request is in one of `states`;
    otherwise a ValidationError saying what it is and what was `needed`."""
    grant = locked(Grant.objects.select_related("request", "team", "pool__accelerator")).get(pk=grant.pk)
    if grant.request.state not in states:
        raise ValidationError(
            f"Grant {grant.namespace} is {grant.request.get_state_display().lower()}; {needed}.", code=code
        )
    return grant


def live_deployments(grant: Grant) -> QuerySet[ServingDeployment]:
    """The grant's serving deployments that still hold (or may hold) its GPUs."""
    return ServingDeployment.objects.filter(grant=grant, deleted_at__isnull=True)


# Approved grants are provisioned in passes of up to this many: one task applies a pass's objects and
# probes enforcement once (quotas.reconcile.bulk), and several worker processes share a big batch.
RECONCILE_CHUNK = 25


def queue_grants_provision(grant_ids: Sequence[int]) -> None:
    """Queue the first apply of grants just approved once the transaction commits, `RECONCILE_CHUNK`
    per task. Each task's pass also takes the other approved grants of the cluster still waiting for
    theirs, so approvals arriving one by one share passes when the workers are busy."""
    from quotas.tasks import grants_provision

    ids = list(grant_ids)
    chunks = [ids[i : i + RECONCILE_CHUNK] for i in range(0, len(ids), RECONCILE_CHUNK)]
    if chunks:
        # `robust`, as queue_grant_reconcile: the sweeper queues whatever a broker outage loses.
        transaction.on_commit(lambda: [grants_provision.delay(chunk) for chunk in chunks], robust=True)
