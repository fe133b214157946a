"""Writes for teams, capacity requests and grants.

Every function is keyword-only and transactional, and writes its audit row in the same transaction
as the change. Errors are Django ValidationError (bad input, with field names where there is one)
or PermissionDenied (the actor may not do this); forms and the API turn both into messages.
"""

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from pools.models import Accelerator, NodePool, PoolClass
from pools.selectors import pools_offering
from pools.services import pool_preflight_refusal
from portal.models import User
from portal.services import audit_event_record
from quotas import rules
from quotas.models import ApprovalDecision, CapacityRequest, Grant, Membership, ServingDeployment, Team
from quotas.selectors import is_team_lead, is_team_member, pool_figures, pool_figures_bulk
from quotas.states import HOLDING_STATES, PENDING_STATES, TERMINAL_STATES, RequestState, check_transition

S = RequestState


def _snapshot(req: CapacityRequest) -> dict[str, Any]:
    return {"state": req.state, "gpus": req.gpus, "pool": req.pool_id}


def _transition(
    req: CapacityRequest,
    *,
    to: str,
    actor: User | None,
    action: str,
    message: str = "",
    audit_obj: models.Model | None = None,
    **changes: Any,
) -> None:
    check_transition(req.state, to)
    before = _snapshot(req)
    req.state = to
    for field, value in changes.items():
        setattr(req, field, value)
    req.save()
    audit_event_record(
        actor=actor,
        action=action,
        obj=audit_obj or req,
        team=req.team,
        before=before,
        after=_snapshot(req),
        message=message,
    )


def _queue_reconcile(grant: Grant) -> None:
    # Imported here: tasks import services, and the task must only be queued once the grant is committed.
    # `robust`: a broker outage must not turn a committed approval into an error page; the
    # provisioning sweeper queues every grant whose observed generation lags.
    from quotas.tasks import grant_reconcile

    transaction.on_commit(lambda: grant_reconcile.delay(grant.pk), robust=True)


def _queue_serving_reconcile(deployment: ServingDeployment) -> None:
    from quotas.tasks import serving_deployment_reconcile

    transaction.on_commit(lambda: serving_deployment_reconcile.delay(deployment.pk), robust=True)


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
) -> NodePool:
    """Check a request against every rule that does not depend on other pending requests; pick its pool."""
    errors: dict[str, list[str]] = {}
    if not is_team_member(user=requester, team_id=team.pk):
        raise PermissionDenied(f"You are not a member of team {team.slug}.")
    if pool_class not in PoolClass.values:
        errors.setdefault("pool_class", []).append(f"Unknown pool class {pool_class!r}.")
    if gpus < 1:
        errors.setdefault("gpus", []).append("Ask for at least one GPU.")
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

    candidates = list(pools_offering(pool_class=pool_class, accelerator=accelerator))
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
    figures_by_pool = pool_figures_bulk(pairs=[(pool, team.pk) for pool in candidates])
    for pool in candidates:
        figures = figures_by_pool[(pool.pk, team.pk)]
        refusal = rules.capacity_refusal(
            figures, gpus=gpus, pool_name=str(pool), is_batch=pool_class == PoolClass.BATCH
        )
        scored.append(
            (refusal is not None, pool.pool_class != pool_class, -figures.free, pool.pk, pool, refusal)
        )
    scored.sort(key=lambda row: row[:4])
    best = scored[0]
    if best[0]:
        raise ValidationError({"gpus": [best[5]]})
    return best[4]


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
    )
    audit_event_record(
        actor=requester, action="capacity_request.created", obj=req, team=team, after=_snapshot(req)
    )
    if submit:
        capacity_request_submit(capacity_request=req, actor=requester)
    return req


@transaction.atomic
def capacity_request_submit(*, capacity_request: CapacityRequest, actor: User) -> CapacityRequest:
    req = CapacityRequest.objects.select_for_update().get(pk=capacity_request.pk)
    if actor.pk != req.requester_id:
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
            capacity_request.refresh_from_db()
            return capacity_request
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
        if is_team_lead(user=actor, team_id=req.team_id) or not other_leads.exists()
        else (S.PENDING_LEAD)
    )
    _transition(req, to=target, actor=actor, action="capacity_request.submitted", message=note)
    capacity_request.refresh_from_db()
    return capacity_request


def _lock_and_check_capacity(req: CapacityRequest) -> str | None:
    """Lock the pool row so concurrent approvals of its last GPUs serialise, then apply the rules."""
    pool = NodePool.objects.select_for_update().select_related("cluster").get(pk=req.pool_id)
    figures = pool_figures(pool=pool, team_id=req.team_id)
    return rules.capacity_refusal(
        figures, gpus=req.gpus, pool_name=str(pool), is_batch=req.pool_class == PoolClass.BATCH
    )


def _approve_final(req: CapacityRequest, *, actor: User | None, stage: str, comment: str) -> Grant:
    ApprovalDecision.objects.create(
        request=req, stage=stage, approver=actor, decision=ApprovalDecision.Decision.APPROVE, comment=comment
    )
    _transition(req, to=S.APPROVED, actor=actor, action="capacity_request.approved", message=comment)
    grant = Grant.objects.create(
        request=req,
        team=req.team,
        pool=req.pool,
        gpus=req.gpus,
        namespace=Grant.namespace_for(req),
        starts_at=req.starts_at,
        ends_at=req.ends_at,
    )
    audit_event_record(
        actor=actor,
        action="grant.created",
        obj=grant,
        team=req.team,
        after={"gpus": grant.gpus, "pool": str(grant.pool), "namespace": grant.namespace},
    )
    _queue_reconcile(grant)
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


def _check_decider(req: CapacityRequest, actor: User) -> str:
    """Return the stage `actor` may decide, or raise PermissionDenied saying why not."""
    if actor.pk == req.requester_id:
        raise PermissionDenied("Nobody approves or rejects their own request.")
    if req.state == S.PENDING_LEAD:
        if not is_team_lead(user=actor, team_id=req.team_id):
            raise PermissionDenied(f"Only a lead of team {req.team.slug} can decide at the team-lead stage.")
        return ApprovalDecision.Stage.LEAD
    if req.state == S.PENDING_PLATFORM:
        if not actor.is_platform_admin:
            raise PermissionDenied("Only a platform admin can decide at the platform stage.")
        if req.decisions.filter(stage=ApprovalDecision.Stage.LEAD, approver=actor).exists():
            # Two stages mean two people: a lead who is also a platform admin cannot wave their own
            # lead approval through.
            raise PermissionDenied(
                "You made the team-lead decision on this request; a different person must approve at "
                "the platform stage."
            )
        return ApprovalDecision.Stage.PLATFORM
    raise ValidationError(
        f"Request #{req.pk} is {req.get_state_display().lower()}; only pending requests can be decided.",
        code="not_pending",
    )


@transaction.atomic
def capacity_request_approve(
    *, capacity_request: CapacityRequest, actor: User, comment: str = ""
) -> CapacityRequest:
    req = CapacityRequest.objects.select_for_update().select_related("team").get(pk=capacity_request.pk)
    stage = _check_decider(req, actor)
    _check_window(req)
    if stage == ApprovalDecision.Stage.LEAD:
        ApprovalDecision.objects.create(
            request=req,
            stage=stage,
            approver=actor,
            decision=ApprovalDecision.Decision.APPROVE,
            comment=comment,
        )
        _transition(
            req, to=S.PENDING_PLATFORM, actor=actor, action="capacity_request.lead_approved", message=comment
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
    req = CapacityRequest.objects.select_for_update().select_related("team").get(pk=capacity_request.pk)
    stage = _check_decider(req, actor)
    ApprovalDecision.objects.create(
        request=req, stage=stage, approver=actor, decision=ApprovalDecision.Decision.REJECT, comment=comment
    )
    _transition(req, to=S.REJECTED, actor=actor, action="capacity_request.rejected", message=comment)
    capacity_request.refresh_from_db()
    return capacity_request


@transaction.atomic
def capacity_request_cancel(*, capacity_request: CapacityRequest, actor: User) -> CapacityRequest:
    req = CapacityRequest.objects.select_for_update().select_related("team").get(pk=capacity_request.pk)
    if actor.pk != req.requester_id and not is_team_lead(user=actor, team_id=req.team_id):
        raise PermissionDenied("Only the requester or a team lead can cancel a request.")
    if req.state not in PENDING_STATES | {S.DRAFT}:
        raise ValidationError(
            f"Request #{req.pk} is {req.get_state_display().lower()}; "
            "only drafts and pending requests can be "
            "cancelled (an approved grant is revoked instead).",
            code="invalid_transition",
        )
    _transition(req, to=S.CANCELLED, actor=actor, action="capacity_request.cancelled")
    capacity_request.refresh_from_db()
    return capacity_request


# --- grants -----------------------------------------------------------------------------------


def _end_grant(grant: Grant, *, to: str, actor: User | None, action: str, message: str) -> None:
    req = CapacityRequest.objects.select_for_update().select_related("team").get(pk=grant.request_id)
    if req.state not in HOLDING_STATES:
        raise ValidationError(
            f"Grant {grant.namespace} is already {req.get_state_display().lower()}.",
            code="invalid_transition",
        )
    _transition(req, to=to, actor=actor, action=action, message=message, audit_obj=grant)
    Grant.objects.filter(pk=grant.pk).update(generation=grant.generation + 1)
    grant.refresh_from_db()
    _queue_reconcile(grant)


@transaction.atomic
def grant_revoke(*, grant: Grant, actor: User, reason: str) -> Grant:
    if not actor.is_platform_admin:
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


@transaction.atomic
def capacity_request_expire(*, capacity_request: CapacityRequest, now: datetime) -> bool:
    """pending -> expired once the request's window has ended undecided. False if it changed meanwhile."""
    req = CapacityRequest.objects.select_for_update().select_related("team").get(pk=capacity_request.pk)
    if req.state not in PENDING_STATES or req.ends_at > now:
        return False
    _transition(
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
    if not actor.is_platform_admin:
        raise PermissionDenied("Only a platform admin can shrink a grant.")
    grant = (
        Grant.objects.select_for_update()
        .select_related("request", "team", "pool__accelerator")
        .get(pk=grant.pk)
    )
    if grant.request.state not in HOLDING_STATES:
        raise ValidationError(
            f"Grant {grant.namespace} is {grant.request.get_state_display().lower()}; only a running grant "
            "can be shrunk.",
            code="invalid_transition",
        )
    if not 1 <= gpus < grant.gpus:
        hint = "revoke it to take every GPU away" if gpus < 1 else "a grant only grows through a new request"
        bounds = (
            f"Shrink to between 1 and {grant.gpus - 1} GPUs (it holds {grant.gpus})"
            if grant.gpus > 1
            else f"Grant {grant.namespace} holds 1 GPU, the least a grant can hold"
        )
        raise ValidationError({"gpus": [f"{bounds}; {hint}."]})
    live = [d for d in _live_deployments(grant).order_by("name") if d.replicas * d.gpus_per_replica]
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
    before = {"gpus": grant.gpus}
    grant.gpus = gpus
    grant.generation += 1
    grant.save(update_fields=["gpus", "generation"])
    audit_event_record(
        actor=actor,
        action="grant.shrunk",
        obj=grant,
        team=grant.team,
        before=before,
        after={"gpus": gpus},
        message=f"Grant {grant.namespace} shrunk from {before['gpus']} to {gpus} GPUs.",
    )
    _queue_reconcile(grant)
    return grant


# --- provisioning: state moves made by the reconciler (quotas.reconcile) -------------------------

PROVISIONABLE_STATES = frozenset({S.APPROVED, S.PROVISIONING, S.ACTIVE})


def _locked_request(grant: Grant) -> CapacityRequest:
    return CapacityRequest.objects.select_for_update().select_related("team").get(pk=grant.request_id)


@transaction.atomic
def grant_provisioning_start(*, grant: Grant) -> bool:
    """approved -> provisioning, when the reconciler first works on the grant. False if not approved."""
    req = _locked_request(grant)
    if req.state != S.APPROVED:
        return False
    _transition(
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
    _transition(req, to=S.ACTIVE, actor=None, action="grant.active", message=message, audit_obj=grant)
    return True


@transaction.atomic
def grant_provisioning_fail(*, grant: Grant, message: str) -> bool:
    """-> failed on an error retrying cannot fix (the cluster's message). False if failed or ended."""
    req = _locked_request(grant)
    if req.state not in PROVISIONABLE_STATES:
        return False
    _transition(req, to=S.FAILED, actor=None, action="grant.failed", message=message, audit_obj=grant)
    return True


@transaction.atomic
def grant_namespace_delete(*, grant: Grant, actor: User) -> Grant:
    """Delete an ended grant's namespace (and everything in it). Only on a platform admin's word:
    revoking or expiring a grant keeps the namespace so that the team's objects and data survive."""
    if not actor.is_platform_admin:
        raise PermissionDenied("Only a platform admin can delete a grant's namespace.")
    grant = Grant.objects.select_for_update().select_related("request", "team").get(pk=grant.pk)
    if grant.request.state not in TERMINAL_STATES:
        raise ValidationError(
            f"Grant {grant.namespace} is {grant.request.get_state_display().lower()}; revoke it or let it "
            "expire before deleting its namespace.",
            code="invalid_transition",
        )
    if grant.namespace_deleted_at is not None:
        raise ValidationError(f"The namespace {grant.namespace} is already deleted.", code="already_deleted")
    grant.namespace_deleted_at = timezone.now()
    grant.generation += 1
    grant.save(update_fields=["namespace_deleted_at", "generation"])
    audit_event_record(
        actor=actor,
        action="grant.namespace_deleted",
        obj=grant,
        team=grant.team,
        after={"namespace": grant.namespace},
        message=f"Namespace {grant.namespace} and everything in it will be deleted from the cluster.",
    )
    _queue_reconcile(grant)
    return grant


# --- serving deployments --------------------------------------------------------------------------

IMAGE_REFERENCE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the portal on every model server.
RESERVED_ENV = frozenset({"MODEL_NAME", "HF_HOME"})
MAX_REPLICAS = 64


def _image_errors(image: str) -> list[str]:
    allowlist = settings.PORTAL_PROVISIONING["IMAGE_REGISTRY_ALLOWLIST"]
    if not IMAGE_REFERENCE.match(image):
        return [f"{image!r} is not an image reference like registry.example.com/llm/vllm:v0.6.3."]
    # An entry ends at a path boundary: "registry.example.com" must not admit "registry.example.com.evil".
    prefixes = [entry if entry.endswith("/") else f"{entry}/" for entry in allowlist]
    if not any(image.startswith(prefix) for prefix in prefixes):
        return [f"Images must come from an allowlisted registry: {', '.join(prefixes) or 'none configured'}."]
    last = image.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        return ["Name a tag or a digest (e.g. :v0.6.3): an implicit :latest changes under a running model."]
    return []


def _check_operator(grant: Grant, actor: User) -> None:
    if not (actor.is_platform_admin or is_team_member(user=actor, team_id=grant.team_id)):
        raise PermissionDenied(f"Only members of team {grant.team.slug} can manage its serving deployments.")


def _live_deployments(grant: Grant) -> QuerySet[ServingDeployment]:
    """The grant's serving deployments that still hold (or may hold) its GPUs."""
    return ServingDeployment.objects.filter(grant=grant, deleted_at__isnull=True)


def _gpu_budget_error(
    grant: Grant, *, replicas: int, gpus_per_replica: int, exclude: int | None
) -> str | None:
    others = _live_deployments(grant).exclude(pk=exclude)
    used = sum(d.replicas * d.gpus_per_replica for d in others)
    wanted = replicas * gpus_per_replica
    if used + wanted <= grant.gpus:
        return None
    unit = grant.pool.accelerator.resource_name
    return (
        f"{replicas} x {gpus_per_replica} {unit} = {wanted} does not fit grant {grant.namespace}: it holds "
        f"{grant.gpus} and other serving deployments use {used}, so {max(0, grant.gpus - used)} are left."
    )


def _running_grant(grant: Grant) -> Grant:
    grant = (
        Grant.objects.select_for_update()
        .select_related("request", "team", "pool__accelerator")
        .get(pk=grant.pk)
    )
    if grant.request.state not in PROVISIONABLE_STATES:
        raise ValidationError(
            f"Grant {grant.namespace} is {grant.request.get_state_display().lower()}; serving deployments "
            "need an approved or active grant.",
            code="grant_not_active",
        )
    return grant


@transaction.atomic
def serving_deployment_create(
    *,
    grant: Grant,
    actor: User,
    name: str,
    model_name: str,
    image: str,
    replicas: int = 1,
    gpus_per_replica: int = 1,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ServingDeployment:
    grant = _running_grant(grant)
    _check_operator(grant, actor)
    name, model_name, image = name.strip(), model_name.strip(), image.strip()
    args, env = list(args or []), dict(env or {})
    errors: dict[str, list[str]] = {}
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?", name):
        errors["name"] = ["Use 1-50 lower-case letters, digits and '-', starting and ending alphanumeric."]
    elif ServingDeployment.objects.filter(grant=grant, name=name).exists():
        errors["name"] = [f"Grant {grant.namespace} already has (or had) a deployment named {name!r}."]
    if not model_name:
        errors["model_name"] = ["Name the model being served."]
    if image_errors := _image_errors(image):
        errors["image"] = image_errors
    if not 1 <= replicas <= MAX_REPLICAS:
        errors["replicas"] = [f"Replicas must be between 1 and {MAX_REPLICAS}."]
    if gpus_per_replica < 1:
        errors["gpus_per_replica"] = ["A model server needs at least one GPU."]
    if not all(isinstance(arg, str) for arg in args):
        errors["args"] = ["Arguments must be strings."]
    bad_env = sorted(k for k, v in env.items() if not ENV_NAME.match(str(k)) or not isinstance(v, str))
    if bad_env:
        errors["env"] = [
            f"Invalid variables (names like MAX_MODEL_LEN, string values): {', '.join(bad_env)}."
        ]
    elif reserved := sorted(RESERVED_ENV & env.keys()):
        errors["env"] = [f"{', '.join(reserved)} are set by the portal."]
    if not errors:
        problem = _gpu_budget_error(grant, replicas=replicas, gpus_per_replica=gpus_per_replica, exclude=None)
        if problem:
            errors["replicas"] = [problem]
    if errors:
        raise ValidationError(errors)
    deployment = ServingDeployment.objects.create(
        grant=grant,
        team=grant.team,
        name=name,
        model_name=model_name,
        image=image,
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        args=args,
        env=env,
        created_by=actor,
    )
    audit_event_record(
        actor=actor,
        action="serving_deployment.created",
        obj=deployment,
        team=grant.team,
        after={
            "image": image,
            "model": model_name,
            "replicas": replicas,
            "gpus_per_replica": gpus_per_replica,
        },
    )
    _queue_serving_reconcile(deployment)
    return deployment


@transaction.atomic
def serving_deployment_scale(
    *, deployment: ServingDeployment, actor: User, replicas: int
) -> ServingDeployment:
    deployment = ServingDeployment.objects.select_for_update().get(pk=deployment.pk)
    grant = _running_grant(deployment.grant)
    _check_operator(grant, actor)
    if deployment.deleted_at is not None:
        raise ValidationError(f"Deployment {deployment.name} is deleted.", code="deleted")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ValidationError({"replicas": [f"Replicas must be between 0 and {MAX_REPLICAS}."]})
    problem = _gpu_budget_error(
        grant, replicas=replicas, gpus_per_replica=deployment.gpus_per_replica, exclude=deployment.pk
    )
    if problem:
        raise ValidationError({"replicas": [problem]})
    if replicas == deployment.replicas:
        return deployment
    before = {"replicas": deployment.replicas}
    deployment.replicas = replicas
    deployment.generation += 1
    deployment.save(update_fields=["replicas", "generation"])
    audit_event_record(
        actor=actor,
        action="serving_deployment.scaled",
        obj=deployment,
        team=deployment.team,
        before=before,
        after={"replicas": replicas},
    )
    _queue_serving_reconcile(deployment)
    return deployment


@transaction.atomic
def serving_deployment_delete(*, deployment: ServingDeployment, actor: User) -> ServingDeployment:
    deployment = (
        ServingDeployment.objects.select_for_update().select_related("grant__team").get(pk=deployment.pk)
    )
    _check_operator(deployment.grant, actor)
    if deployment.deleted_at is not None:
        raise ValidationError(f"Deployment {deployment.name} is already deleted.", code="deleted")
    deployment.deleted_at = timezone.now()
    deployment.generation += 1
    deployment.save(update_fields=["deleted_at", "generation"])
    audit_event_record(
        actor=actor,
        action="serving_deployment.deleted",
        obj=deployment,
        team=deployment.team,
        before={"replicas": deployment.replicas},
    )
    _queue_serving_reconcile(deployment)
    return deployment


# --- teams ------------------------------------------------------------------------------------


@transaction.atomic
def membership_set(*, team: Team, user: User, role: str, actor: User | None, message: str = "") -> Membership:
    membership, created = Membership.objects.select_for_update().get_or_create(
        team=team, user=user, defaults={"role": role}
    )
    if created or membership.role != role:
        before = None if created else {"role": membership.role}
        membership.role = role
        membership.save()
        audit_event_record(
            actor=actor,
            action="membership.set",
            obj=membership,
            team=team,
            before=before,
            after={"role": role},
            message=message,
        )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User | None, message: str = "") -> None:
    # Recorded before the delete, while the row still has its id for the audit trail.
    audit_event_record(
        actor=actor,
        action="membership.removed",
        obj=membership,
        team=membership.team,
        before={"role": membership.role},
        message=message,
    )
    membership.delete()
