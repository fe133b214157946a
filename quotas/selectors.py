"""Reads, each scoped to what the asking user may see."""

from django.db.models import Exists, OuterRef, Q, QuerySet, Sum

from pools.models import Accelerator, NodePool, PoolClass
from pools.selectors import pools_offering
from portal.models import AuditEvent, User
from quotas.models import CapacityRequest, Grant, Membership, ServingDeployment, Team
from quotas.rules import PoolFigures
from quotas.states import HOLDING_STATES, RequestState


def is_team_lead(*, user: User, team_id: int) -> bool:
    return Membership.objects.filter(user=user, team_id=team_id, role=Membership.Role.LEAD).exists()


def teams_of(*, user: User) -> QuerySet[Team]:
    return Team.objects.filter(memberships__user=user).distinct()


def teams_visible_to(*, user: User) -> QuerySet[Team]:
    return Team.objects.all() if user.sees_everything else teams_of(user=user)


def capacity_request_list(*, user: User) -> QuerySet[CapacityRequest]:
    qs = CapacityRequest.objects.select_related("team", "requester", "accelerator", "pool", "pool__cluster")
    if not user.sees_everything:
        qs = qs.filter(team__memberships__user=user)
    return qs


def capacity_request_get(*, user: User, pk: int) -> CapacityRequest:
    """Raises CapacityRequest.DoesNotExist for rows the user may not see: outsiders get a 404, not a 403."""
    return capacity_request_list(user=user).get(pk=pk)


def approval_inbox(*, user: User) -> QuerySet[CapacityRequest]:
    """Requests waiting for this user's decision; never the user's own."""
    lead_of = Membership.objects.filter(user=user, role=Membership.Role.LEAD, team=OuterRef("team"))
    condition = Q(state=RequestState.PENDING_LEAD) & Exists(lead_of)
    if user.is_platform_admin:
        condition |= Q(state=RequestState.PENDING_PLATFORM)
    return (
        CapacityRequest.objects.filter(condition)
        .exclude(requester=user)
        .select_related("team", "requester", "accelerator", "pool", "pool__cluster")
        .order_by("created_at", "id")
    )


def grant_list(*, user: User) -> QuerySet[Grant]:
    qs = Grant.objects.select_related("team", "pool", "pool__cluster", "pool__accelerator", "request")
    if not user.sees_everything:
        qs = qs.filter(team__memberships__user=user)
    return qs


def serving_deployment_list(*, user: User) -> QuerySet[ServingDeployment]:
    qs = ServingDeployment.objects.select_related("team", "grant", "grant__pool", "grant__pool__accelerator")
    if not user.sees_everything:
        qs = qs.filter(team__memberships__user=user)
    return qs


def audit_event_list(*, user: User) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.select_related("actor", "team")
    if not user.sees_everything:
        qs = qs.filter(team__memberships__user=user)
    return qs


def pool_figures(*, pool: NodePool, team_id: int | None = None) -> PoolFigures:
    holding = Grant.objects.filter(pool=pool, request__state__in=HOLDING_STATES)
    sums = holding.aggregate(
        granted=Sum("gpus"),
        batch=Sum("gpus", filter=Q(request__pool_class=PoolClass.BATCH)),
        team=Sum("gpus", filter=Q(team_id=team_id or 0)),
    )
    return PoolFigures(
        capacity=pool.capacity_gpus,
        headroom=pool.headroom_gpus,
        granted=sums["granted"] or 0,
        batch_granted=sums["batch"] or 0,
        batch_fraction=pool.batch_fraction,
        team_granted=sums["team"] or 0,
        max_per_team=pool.max_gpus_per_team,
    )


def accelerators_for_class(*, pool_class: str) -> list[tuple[Accelerator, int]]:
    """Accelerators offered for a pool class, each with the free units of its roomiest pool."""
    best: dict[int, tuple[Accelerator, int]] = {}
    for pool in pools_offering(pool_class=pool_class):
        free = pool_figures(pool=pool).free
        if pool.accelerator_id not in best or best[pool.accelerator_id][1] < free:
            best[pool.accelerator_id] = (pool.accelerator, free)
    return sorted(best.values(), key=lambda item: item[0].name)
