"""Capacity requests: creating and validating them, routing them through approval, deciding, cancelling
and expiring. The final approval creates the grant (quotas.services.grants owns it from there)."""

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from pools.models import QUEUEING_CLASSES, Accelerator, AdmissionMode, NodePool, PoolClass
from pools.selectors import pool_candidates, pools_offering
from pools.services import pool_preflight_refusal
from portal.models import User
from portal.querysets import locked
from portal.services import audit_event_record, inserts_batched
from quotas import policies, rules
from quotas.models import ApprovalDecision, CapacityRequest, Grant, Membership, Team
from quotas.selectors import pool_capacity, pool_capacity_bulk
from quotas.services.common import decision_record, queue_grants_provision, snapshot, transition
from quotas.states import PENDING_STATES, RequestState, check_transition

S = RequestState


def _preflight_refusal(req: CapacityRequest) -> str | None:
    """Why the request's pool cannot be provisioned on its cluster now (settings.PORTAL_PREFLIGHT)."""
    if not settings.PORTAL_PREFLIGHT:
        return None
    pool = NodePool.objects.select_related("cluster", "accelerator").get(pk=req.pool_id)
    return pool_preflight_refusal(pool=pool)


# --- validation -------------------------------------------------------------------------------


def _memory_fit_error(
    *, accelerator: Accelerator, parameters: Decimal, precision: str, gpus_per_replica: int, pool_class: str
) -> str | None:
    need = rules.model_memory_gib(parameters, precision)
    offered = accelerator.memory_gib * gpus_per_replica
    if need <= offered:
        return None
    fitting = sorted(
        {
            pool.accelerator
            for pool in pools_offering(pool_class=pool_class)
            if pool.accelerator.memory_gib * gpus_per_replica >= need
        },
        key=lambda acc: (acc.memory_gib, acc.name),
    )
    hint = (
        f"Types that fit with {gpus_per_replica} per replica: {', '.join(a.name for a in fitting)}."
        if fitting
        else (
            f"No {PoolClass(pool_class).label.lower()} accelerator fits it "
            f"with {gpus_per_replica} per replica."
        )
    )
    spread = rules.units_needed(need, accelerator.memory_gib)
    return (
        f"A {parameters}B-parameter model at {precision} needs about {need} GiB per replica; "
        f"{gpus_per_replica} x {accelerator.name} offers {offered} GiB. {hint} "
        f"Or span {spread} {accelerator.name} units per replica."
    )


def _validate_request(
    *,
    team: Team,
    requester: User,
    pool_class: str,
    accelerator: Accelerator,
    gpus: int,
    starts_at: datetime,
    ends_at: datetime,
    model_parameters_billion: Decimal | None,
    model_precision: str,
    gpus_per_replica: int,
    borrow_gpus: int = 0,
) -> NodePool:
    """Check a request against every rule that does not depend on other pending requests; pick its pool."""
    errors: dict[str, list[str]] = {}
    if not policies.can_request(user=requester, team_id=team.pk):
        raise PermissionDenied(f"You are not a member of team {team.slug}.")
    if pool_class not in PoolClass.values:
        errors.setdefault("pool_class", []).append(f"Unknown pool class {pool_class!r}.")
    if gpus < 1:
        errors.setdefault("gpus", []).append("Ask for at least one GPU.")
    if borrow_gpus < 0:
        errors.setdefault("borrow_gpus", []).append("Borrow 0 GPUs or more.")
    elif borrow_gpus and pool_class not in QUEUEING_CLASSES:
        errors.setdefault("borrow_gpus", []).append(
            "Only batch inference and experimentation grants queue and may borrow idle GPUs; "
            "interactive and embedding grants get exactly their own."
        )
    if gpus_per_replica < 1 or gpus_per_replica > max(gpus, 1):
        errors.setdefault("gpus_per_replica", []).append(
            f"GPUs per replica must be between 1 and the GPUs requested ({gpus})."
        )
    if ends_at <= starts_at:
        errors.setdefault("ends_at", []).append("The end must be after the start.")
    elif (ends_at - starts_at).days > settings.PORTAL_MAX_REQUEST_DAYS:
        errors.setdefault("ends_at", []).append(
            f"Requests may last at most {settings.PORTAL_MAX_REQUEST_DAYS} days; ask again to extend."
        )
    if ends_at <= timezone.now():
        errors.setdefault("ends_at", []).append("The end is in the past.")
    if (model_parameters_billion is None) != (not model_precision):
        errors.setdefault("model_precision", []).append(
            "Give both the parameter count and the precision, or neither."
        )
    if errors:
        raise ValidationError(errors)

    if model_parameters_billion is not None:
        problem = _memory_fit_error(
            accelerator=accelerator,
            parameters=model_parameters_billion,
            precision=model_precision,
            gpus_per_replica=gpus_per_replica,
            pool_class=pool_class,
        )
        if problem:
            raise ValidationError({"accelerator": [problem]})

    candidates = pool_candidates(pool_class=pool_class, accelerator=accelerator)
    if not candidates:
        offered = sorted({p.accelerator.name for p in pools_offering(pool_class=pool_class)})
        raise ValidationError(
            {
                "accelerator": [
                    f"No pool offers {accelerator.name} for {PoolClass(pool_class).label.lower()}. "
                    f"Offered: {', '.join(offered) or 'nothing yet'}."
                ]
            }
        )
    # Prefer a pool of the request's own class (batch only borrows), then the one with most room.
    scored = []
    figures_by_pool = pool_capacity_bulk(pairs=[(pool, team.pk) for pool in candidates])
    for pool in candidates:
        figures = figures_by_pool[(pool.pk, team.pk)]
        is_batch = pool_class == PoolClass.BATCH
        refusal = rules.capacity_refusal(figures, gpus=gpus, pool_name=str(pool), is_batch=is_batch)
        field = "gpus"
        if refusal is None:
            refusal, field = _borrow_refusal(pool, figures, gpus=gpus, borrow=borrow_gpus, is_batch=is_batch)
        scored.append(
            (refusal is not None, pool.pool_class != pool_class, -figures.free, pool.pk, pool, refusal, field)
        )
    scored.sort(key=lambda row: row[:4])
    best = scored[0]
    if best[0]:
        raise ValidationError({best[6]: [best[5]]})
    return best[4]


def _borrow_refusal(
    pool: NodePool, figures: rules.PoolCapacity, *, gpus: int, borrow: int, is_batch: bool
) -> tuple[str | None, str]:
    refusal = rules.borrow_refusal(
        figures,
        gpus=gpus,
        borrow=borrow,
        pool_name=str(pool),
        is_batch=is_batch,
        queued=pool.admission_mode == AdmissionMode.KUEUE,
        max_borrow=pool.max_borrow_gpus,
    )
    return refusal, "borrow_gpus"


# --- requests ---------------------------------------------------------------------------------


@transaction.atomic
def capacity_request_create(
    *,
    requester: User,
    team: Team,
    pool_class: str,
    accelerator: Accelerator,
    gpus: int,
    starts_at: datetime,
    ends_at: datetime,
    purpose: str,
    cpu: Decimal | None = None,
    memory_gib: int | None = None,
    model_parameters_billion: Decimal | None = None,
    model_precision: str = "",
    gpus_per_replica: int = 1,
    borrow_gpus: int = 0,
    submit: bool = True,
) -> CapacityRequest:
    if not purpose.strip():
        raise ValidationError({"purpose": ["Say what the GPUs are for; approvers read it."]})
    pool = _validate_request(
        team=team,
        requester=requester,
        pool_class=pool_class,
        accelerator=accelerator,
        gpus=gpus,
        starts_at=starts_at,
        ends_at=ends_at,
        model_parameters_billion=model_parameters_billion,
        model_precision=model_precision,
        gpus_per_replica=gpus_per_replica,
        borrow_gpus=borrow_gpus,
    )
    req = CapacityRequest.objects.create(
        team=team,
        requester=requester,
        pool_class=pool_class,
        accelerator=accelerator,
        pool=pool,
        gpus=gpus,
        cpu=cpu,
        memory_gib=memory_gib,
        starts_at=starts_at,
        ends_at=ends_at,
        purpose=purpose.strip(),
        model_parameters_billion=model_parameters_billion,
        model_precision=model_precision,
        gpus_per_replica=gpus_per_replica,
        borrow_gpus=borrow_gpus,
    )
    # Its audit rows (and an auto-approval's decision) go in with one statement as the block ends.
    with inserts_batched():
        audit_event_record(
            actor=requester, action="capacity_request.created", obj=req, team=team, after=snapshot(req)
        )
        if submit:
            _submit(req, actor=requester)  # the row is this transaction's own: nobody else can see it yet
    return req


@transaction.atomic
def capacity_request_submit(*, capacity_request: CapacityRequest, actor: User) -> CapacityRequest:
    # With the team and accelerator its audit row names: an auto-approval holds the pool's row lock.
    req = locked(CapacityRequest.objects.select_related("team", "accelerator")).get(pk=capacity_request.pk)
    _submit(req, actor=actor)
    capacity_request.refresh_from_db()
    return capacity_request


def _submit(req: CapacityRequest, *, actor: User) -> None:
    """Submit `req`, a row this transaction holds: locked by capacity_request_submit, or inserted by
    capacity_request_create (which then needs neither the lock nor a second read)."""
    if not policies.can_submit(user=actor, capacity_request=req):
        raise PermissionDenied("Only the requester can submit a draft.")
    check_transition(req.state, S.PENDING_LEAD)

    _check_window(req)
    rule = settings.PORTAL_AUTO_APPROVAL.get(req.pool_class)
    if rules.within_auto_approval(gpus=req.gpus, starts_at=req.starts_at, ends_at=req.ends_at, rule=rule):
        refusal = _preflight_refusal(req) or _lock_and_check_capacity(req)
        if refusal is None:
            _approve_final(
                req, actor=None, stage=ApprovalDecision.Stage.AUTO, comment="Within the auto-approval rule"
            )
            return
        note = f"Not auto-approved: {refusal}"
    else:
        note = ""

    # A lead's own request (or a team whose only lead is the requester) skips the lead stage:
    # nobody else on the team could approve it, and nobody approves their own request.
    other_leads = Membership.objects.filter(team_id=req.team_id, role=Membership.Role.LEAD).exclude(
        user_id=req.requester_id
    )
    target = (
        S.PENDING_PLATFORM
        if policies.is_team_lead(user=actor, team_id=req.team_id) or not other_leads.exists()
        else (S.PENDING_LEAD)
    )
    transition(req, to=target, actor=actor, action="capacity_request.submitted", message=note)


def _lock_and_check_capacity(req: CapacityRequest) -> str | None:
    """Lock the pool row so concurrent approvals of its last GPUs serialise, then apply the rules."""
    pool = locked(NodePool.objects.select_related("cluster", "accelerator")).get(pk=req.pool_id)
    req.pool = pool  # the locked row, with its cluster and accelerator: what the grant is created from
    figures = pool_capacity(pool=pool, team_id=req.team_id)
    return capacity_refusal(req, pool=pool, figures=figures)


def capacity_refusal(req: CapacityRequest, *, pool: NodePool, figures: rules.PoolCapacity) -> str | None:
    """Why granting `req` on `pool` with these figures would break a capacity rule (borrowing from
    the cohort included); None when it fits. The one check of single and bulk final approvals
    (quotas.services.decisions)."""
    is_batch = req.pool_class == PoolClass.BATCH
    return (
        rules.capacity_refusal(figures, gpus=req.gpus, pool_name=str(pool), is_batch=is_batch)
        or _borrow_refusal(pool, figures, gpus=req.gpus, borrow=req.borrow_gpus, is_batch=is_batch)[0]
    )


def _approve_final(
    req: CapacityRequest, *, actor: User | None, stage: str, comment: str, queue: bool = True
) -> Grant:
    decision_record(
        req,
        actor=actor,
        stage=stage,
        decision=ApprovalDecision.Decision.APPROVE,
        comment=comment,
        to=S.APPROVED,
        action="capacity_request.approved",
    )
    # The pool row is locked (_lock_and_check_capacity): its admission mode is the one just checked.
    grant = Grant.objects.create(
        request=req,
        team=req.team,
        pool=req.pool,
        gpus=req.gpus,
        admission=req.pool.admission_mode,
        borrow_gpus=req.borrow_gpus,
        namespace=Grant.namespace_for(req),
        starts_at=req.starts_at,
        ends_at=req.ends_at,
    )
    after = {"gpus": grant.gpus, "pool": str(grant.pool), "namespace": grant.namespace}
    if grant.queued:
        after |= {"admission": grant.admission, "borrow_gpus": grant.borrow_gpus}
    audit_event_record(actor=actor, action="grant.created", obj=grant, team=req.team, after=after)
    if queue:  # a bulk decision queues its grants together (quotas.services.decisions)
        queue_grants_provision([grant.pk])
    return grant


def _check_window(req: CapacityRequest) -> None:
    # A request can wait in a queue past its own window; granting it then would hand out GPUs for a
    # period that is already over.
    if req.ends_at <= timezone.now():
        raise ValidationError(
            f"Request #{req.pk}'s window ended at {req.ends_at:%Y-%m-%d %H:%M} UTC; it can no longer be "
            "approved. Ask for a new window instead.",
            code="window_ended",
        )


@transaction.atomic
def capacity_request_approve(
    *, capacity_request: CapacityRequest, actor: User, comment: str = ""
) -> CapacityRequest:
    req = locked(CapacityRequest.objects.select_related("team", "accelerator")).get(pk=capacity_request.pk)
    stage = policies.decision_stage(user=actor, capacity_request=req)
    _check_window(req)
    if stage == ApprovalDecision.Stage.LEAD:
        decision_record(
            req,
            actor=actor,
            stage=stage,
            decision=ApprovalDecision.Decision.APPROVE,
            comment=comment,
            to=S.PENDING_PLATFORM,
            action="capacity_request.lead_approved",
        )
    else:
        # Before the pool lock: the pre-flight asks the cluster, and nobody should wait on that.
        refusal = _preflight_refusal(req)
        if refusal:
            raise ValidationError(refusal, code="preflight")
        refusal = _lock_and_check_capacity(req)
        if refusal:
            raise ValidationError(refusal, code="capacity")
        _approve_final(req, actor=actor, stage=stage, comment=comment)
    capacity_request.refresh_from_db()
    return capacity_request


@transaction.atomic
def capacity_request_reject(
    *, capacity_request: CapacityRequest, actor: User, comment: str
) -> CapacityRequest:
    if not comment.strip():
        raise ValidationError({"comment": ["Say why the request is rejected; the requester reads it."]})
    req = locked(CapacityRequest.objects.select_related("team")).get(pk=capacity_request.pk)
    stage = policies.decision_stage(user=actor, capacity_request=req)
    decision_record(
        req,
        actor=actor,
        stage=stage,
        decision=ApprovalDecision.Decision.REJECT,
        comment=comment,
        to=S.REJECTED,
        action="capacity_request.rejected",
    )
    capacity_request.refresh_from_db()
    return capacity_request


@transaction.atomic
def capacity_request_cancel(*, capacity_request: CapacityRequest, actor: User) -> CapacityRequest:
    req = locked(CapacityRequest.objects.select_related("team")).get(pk=capacity_request.pk)
    if not policies.can_cancel(user=actor, capacity_request=req):
        raise PermissionDenied("Only the requester or a team lead can cancel a request.")
    if req.state not in PENDING_STATES | {S.DRAFT}:
        raise ValidationError(
            f"Request #{req.pk} is {req.get_state_display().lower()}; "
            "only drafts and pending requests can be "
            "cancelled (an approved grant is revoked instead).",
            code="invalid_transition",
        )
    transition(req, to=S.CANCELLED, actor=actor, action="capacity_request.cancelled")
    capacity_request.refresh_from_db()
    return capacity_request


@transaction.atomic
def capacity_request_expire(*, capacity_request: CapacityRequest, now: datetime) -> bool:
    """pending -> expired once the request's window has ended undecided. False if it changed meanwhile."""
    req = locked(CapacityRequest.objects.select_related("team")).get(pk=capacity_request.pk)
    if req.state not in PENDING_STATES or req.ends_at > now:
        return False
    transition(
        req,
        to=S.EXPIRED,
        actor=None,
        action="capacity_request.expired",
        message=f"Its window ended at {req.ends_at:%Y-%m-%d %H:%M} UTC before it was decided",
    )
    return True


def capacity_requests_expire_due(*, now: datetime | None = None) -> list[int]:
    """Expire every pending request whose window has ended. Each request in its own transaction."""
    now = now or timezone.now()
    due = CapacityRequest.objects.filter(ends_at__lte=now, state__in=PENDING_STATES).values_list(
        "pk", flat=True
    )
    return [
        pk for pk in list(due) if capacity_request_expire(capacity_request=CapacityRequest(pk=pk), now=now)
    ]
