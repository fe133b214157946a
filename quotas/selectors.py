"""Reads, each scoped to what the asking user may see."""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import CharField, Count, Exists, F, OuterRef, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import Cast, Coalesce

from pools.models import (
    Accelerator,
    Cluster,
    KueueStatus,
    NamespaceWorkloads,
    NodePool,
    PoolClass,
    PoolUtilisation,
    QueueStatus,
    WorkloadWatchState,
)
from pools.selectors import pools_offering
from portal import statements
from portal.models import AuditEvent, User
from quotas.models import ApprovalDecision, CapacityRequest, Grant, Membership, ServingDeployment, Team
from quotas.rules import PoolCapacity, capacity_refusal
from quotas.states import HOLDING_STATES, RequestState


def holding_grant_count(*, pool_id: int) -> int:
    """Grants that hold capacity of the pool now (approved, provisioning, active or failed)."""
    return Grant.objects.filter(pool_id=pool_id, request__state__in=HOLDING_STATES).count()


def grant_cluster_id(*, grant_id: int) -> int | None:
    """The cluster a grant's reconcile talks to (its shard queue is chosen by it)."""
    return Grant.objects.filter(pk=grant_id).values_list("pool__cluster_id", flat=True).first()


def serving_deployment_cluster_id(*, deployment_id: int) -> int | None:
    return (
        ServingDeployment.objects.filter(pk=deployment_id)
        .values_list("grant__pool__cluster_id", flat=True)
        .first()
    )


def teams_of(*, user: User) -> QuerySet[Team]:
    return Team.objects.filter(memberships__user=user).distinct()


def teams_visible_to(*, user: User) -> QuerySet[Team]:
    return Team.objects.visible_to(user)


def capacity_request_list(*, user: User) -> QuerySet[CapacityRequest]:
    # Teams, accelerators and pools are a handful of rows: fetching them in small separate queries keeps
    # the page query to one join, which PostgreSQL plans and runs in half the time of a six-table join.
    # The cluster is only named here: its credentials stay in the database, not decrypted per row.
    clusters = Prefetch("pool__cluster", queryset=Cluster.objects.defer(*Cluster.CREDENTIALS))
    return (
        CapacityRequest.objects.visible_to(user)
        .select_related("requester")
        .prefetch_related("team", "accelerator", clusters)
    )


# What the API's representation of a request reads (quotas.api.serializers.capacity_request_rows): the
# request's own columns and the names of what it points to, as plain values.
REQUEST_VALUES = (
    "pk",
    "team__slug",
    "requester__username",
    "pool_class",
    "accelerator__slug",
    "pool_id",
    "pool__name",
    "pool__cluster__name",
    "gpus",
    "cpu",
    "memory_gib",
    "starts_at",
    "ends_at",
    "purpose",
    "model_parameters_billion",
    "model_precision",
    "gpus_per_replica",
    "borrow_gpus",
    "state",
    "created_at",
    "updated_at",
    "grant__id",
)
DECISION_VALUES = ("request_id", "stage", "approver__username", "decision", "comment", "decided_at")


def capacity_request_values(queryset: QuerySet[CapacityRequest]) -> QuerySet[CapacityRequest]:
    """The rows of a (scoped, filtered, ordered) request queryset as dicts of REQUEST_VALUES: one
    query for a page, joins included, and no model instances to build."""
    return queryset.select_related(None).prefetch_related(None).values(*REQUEST_VALUES)


def capacity_request_row(*, user: User, pk: int) -> dict[str, Any] | None:
    """One request as capacity_request_values reads it, if `user` may see it; compiled once per user
    (a create or a decision answers with its row)."""

    def build(pk: int) -> QuerySet[CapacityRequest]:
        return capacity_request_values(capacity_request_list(user=user).filter(pk=pk))

    found = statements.bound_rows(("capacity request row", statements.user_key(user)), build, pk=pk)
    return found[0] if found else None


def capacity_request_decision_values(*, request_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """The decisions of these requests (already read through a scoped selector), oldest first, per
    request id: one query."""
    by_request: dict[int, list[dict[str, Any]]] = defaultdict(list)
    ids = list(dict.fromkeys(request_ids))
    if not ids:
        return by_request

    def build(ids: list[int]) -> QuerySet[ApprovalDecision]:
        rows = ApprovalDecision.objects.filter(request_id__in=ids).order_by("decided_at", "id")
        return rows.values(*DECISION_VALUES)

    # Compiled once per number of requests: a page's decisions differ only in the ids they are of.
    for row in statements.bound_rows("request decisions", build, ids=ids):
        by_request[row["request_id"]].append(row)
    return by_request


def capacity_request_get(*, user: User, pk: int) -> CapacityRequest:
    """Raises CapacityRequest.DoesNotExist for rows the user may not see: outsiders get a 404, not a 403."""
    return capacity_request_list(user=user).get(pk=pk)


def approval_inbox(*, user: User) -> QuerySet[CapacityRequest]:
    """Requests waiting for this user's decision; never the user's own."""
    # The query form of quotas.policies.decision_stage: a lead of the team at the lead stage, a
    # platform admin at the platform stage unless they made the lead decision; never one's own.
    if user.is_read_only:
        return CapacityRequest.objects.none()
    lead_of = Membership.objects.filter(user=user, role=Membership.Role.LEAD, team=OuterRef("team"))
    condition = Q(state=RequestState.PENDING_LEAD) & Exists(lead_of)
    if user.is_admin:
        decided_as_lead = ApprovalDecision.objects.filter(
            request=OuterRef("pk"), stage=ApprovalDecision.Stage.LEAD, approver=user
        )
        condition |= Q(state=RequestState.PENDING_PLATFORM) & ~Exists(decided_as_lead)
    return (
        CapacityRequest.objects.filter(condition)
        .exclude(requester=user)
        .select_related("team", "requester", "accelerator", "pool", "pool__cluster")
        .order_by("created_at", "id")
    )


@dataclass(frozen=True)
class BatchPoolImpact:
    """What approving the selected inbox requests of one pool would do to it, counted in request id
    order as the bulk decision counts them (quotas.services.decisions)."""

    pool: NodePool
    figures: PoolCapacity
    final: list[CapacityRequest]  # at the platform stage: approving them grants GPUs
    lead_stage: list[CapacityRequest]  # approving them only moves them to the platform stage
    refused: dict[int, str]  # request id -> why approving it now would be refused

    @property
    def fitting(self) -> int:
        return len(self.final) - len(self.refused)

    @property
    def gpus(self) -> int:
        return sum(r.gpus for r in self.final if r.pk not in self.refused)

    @property
    def granted_after(self) -> int:
        return self.figures.granted + self.gpus


def approval_batch_impact(*, user: User, request_ids: Iterable[int]) -> list[BatchPoolImpact]:
    """The capacity impact, per pool, of approving these requests of `user`'s inbox (others are
    ignored): two queries, whatever the number of requests."""
    requests = list(approval_inbox(user=user).filter(pk__in=list(request_ids)).order_by("pk"))
    by_pool: dict[int, list[CapacityRequest]] = defaultdict(list)
    for req in requests:
        if req.pool is not None:
            by_pool[req.pool.pk].append(req)
    pairs = [(reqs[0].pool, r.team_id) for reqs in by_pool.values() for r in reqs]
    figures = pool_capacity_bulk(pairs=pairs)
    impacts = []
    for reqs in by_pool.values():
        pool = reqs[0].pool
        base = figures[(pool.pk, reqs[0].team_id)]
        granted, batch, per_team = base.granted, base.batch_granted, defaultdict(int)
        refused: dict[int, str] = {}
        final = [r for r in reqs if r.state == RequestState.PENDING_PLATFORM]
        for req in final:
            team = figures[(pool.pk, req.team_id)]
            now = replace(
                team,
                granted=granted,
                batch_granted=batch,
                team_granted=team.team_granted + per_team[req.team_id],
            )
            is_batch = req.pool_class == PoolClass.BATCH
            refusal = capacity_refusal(now, gpus=req.gpus, pool_name=str(pool), is_batch=is_batch)
            if refusal:
                refused[req.pk] = refusal
                continue
            granted += req.gpus
            batch += req.gpus if is_batch else 0
            per_team[req.team_id] += req.gpus
        lead_stage = [r for r in reqs if r.state == RequestState.PENDING_LEAD]
        impacts.append(BatchPoolImpact(pool, base, final, lead_stage, refused))
    return sorted(impacts, key=lambda i: str(i.pool))


def grant_list(*, user: User) -> QuerySet[Grant]:
    # As for requests: join only the one-to-one request, prefetch the few teams and pools.
    return (
        Grant.objects.visible_to(user)
        .select_related("request")
        .prefetch_related("team", "pool__cluster", "pool__accelerator")
    )


def serving_deployment_list(*, user: User) -> QuerySet[ServingDeployment]:
    return (
        ServingDeployment.objects.visible_to(user)
        .select_related("grant")
        .prefetch_related("team", "grant__pool__cluster", "grant__pool__accelerator")
    )


def audit_event_list(*, user: User) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.visible_to(user).select_related("actor", "team")


def pool_capacity(*, pool: NodePool, team_id: int | None = None) -> PoolCapacity:
    return pool_capacity_bulk(pairs=[(pool, team_id)])[(pool.pk, team_id)]


def accelerators_for_class(*, pool_class: str) -> list[tuple[Accelerator, int]]:
    """Accelerators offered for a pool class, each with the free units of its roomiest pool."""
    best: dict[int, tuple[Accelerator, int]] = {}
    pools = list(pools_offering(pool_class=pool_class))
    figures = pool_capacity_bulk(pairs=[(pool, None) for pool in pools])
    for pool in pools:
        free = figures[(pool.pk, None)].free
        if pool.accelerator_id not in best or best[pool.accelerator_id][1] < free:
            best[pool.accelerator_id] = (pool.accelerator, free)
    return sorted(best.values(), key=lambda item: item[0].name)


# --- reads for the browser pages ----------------------------------------------------------------


def pool_capacity_bulk(
    *, pairs: Iterable[tuple[NodePool, int | None]]
) -> dict[tuple[int, int | None], PoolCapacity]:
    """`pool_capacity` for many (pool, team id or None) pairs in one query, keyed by (pool id, team id).

    List pages use it so that showing the figures of N pools or N inbox items costs one query, not N.
    """
    pairs = list(pairs)
    pools = {pool.pk: pool for pool, _ in pairs}

    def build(pool_ids: list[int]) -> QuerySet[Grant]:
        return (
            Grant.objects.filter(pool_id__in=pool_ids, request__state__in=HOLDING_STATES)
            .values("pool_id", "team_id")
            .annotate(granted=Sum("gpus"), batch=Sum("gpus", filter=Q(request__pool_class=PoolClass.BATCH)))
        )

    # Compiled once per number of pools: every request's create and every approval reads it.
    rows = statements.bound_rows("granted per pool and team", build, pool_ids=list(pools))
    granted: dict[int, int] = {}
    batch: dict[int, int] = {}
    per_team: dict[tuple[int, int], int] = {}
    for row in rows:
        pool_id = row["pool_id"]
        granted[pool_id] = granted.get(pool_id, 0) + row["granted"]
        batch[pool_id] = batch.get(pool_id, 0) + (row["batch"] or 0)
        per_team[(pool_id, row["team_id"])] = row["granted"]
    return {
        (pool.pk, team_id): PoolCapacity(
            capacity=pool.capacity_gpus,
            headroom=pool.headroom_gpus,
            granted=granted.get(pool.pk, 0),
            batch_granted=batch.get(pool.pk, 0),
            batch_fraction=pool.batch_fraction,
            team_granted=per_team.get((pool.pk, team_id), 0) if team_id is not None else 0,
            max_per_team=pool.max_gpus_per_team,
        )
        for pool, team_id in pairs
    }


def grant_usage_list(*, user: User) -> QuerySet[Grant]:
    """Grants with `gpus_deployed`: the GPUs their live serving deployments ask for."""
    live = Q(deployments__deleted_at__isnull=True)
    return grant_list(user=user).annotate(
        gpus_deployed=Coalesce(
            Sum(F("deployments__replicas") * F("deployments__gpus_per_replica"), filter=live), 0
        )
    )


def capacity_request_timeline(*, user: User, capacity_request: CapacityRequest) -> QuerySet[AuditEvent]:
    """The audit trail of a request, its grant and the grant's serving deployments, oldest first."""

    def ids(qs: QuerySet) -> QuerySet:
        # AuditEvent.object_id is text: compare against the ids as text inside one SQL statement.
        return qs.annotate(text_id=Cast("pk", CharField())).values("text_id")

    req_id = capacity_request.pk
    about = (
        Q(object_type=CapacityRequest._meta.label_lower, object_id=str(req_id))
        | Q(object_type=Grant._meta.label_lower, object_id__in=ids(Grant.objects.filter(request_id=req_id)))
        | Q(
            object_type=ServingDeployment._meta.label_lower,
            object_id__in=ids(ServingDeployment.objects.filter(grant__request_id=req_id)),
        )
    )
    return audit_event_list(user=user).filter(about).order_by("created_at", "id")


# --- reads for the API --------------------------------------------------------------------------


def granted_by_team_and_pool(
    *, user: User, team_ids: Iterable[int] | None = None, pool_ids: Iterable[int] | None = None
) -> list[dict]:
    """GPUs held per (team, pool) by grants in a holding state, for the teams `user` may see; one query."""
    qs = grant_list(user=user).filter(request__state__in=HOLDING_STATES)
    if team_ids is not None:
        qs = qs.filter(team_id__in=list(team_ids))
    if pool_ids is not None:
        qs = qs.filter(pool_id__in=list(pool_ids))
    return list(
        qs.values(
            "team_id",
            "team__slug",
            "pool_id",
            "pool__name",
            "pool__cluster__name",
            "pool__accelerator__slug",
            "pool__accelerator__hourly_cost",
        )
        .annotate(gpus=Sum("gpus"), grants=Count("id"))
        .order_by("team__slug", "pool__cluster__name", "pool__name")
    )


def pool_capacity_rows(*, user: User, pools: Iterable[NodePool]) -> list[dict[str, Any]]:
    """The API's granted-capacity row of each pool, with the share of each team `user` may see."""
    pools = list(pools)
    figures = pool_capacity_bulk(pairs=[(pool, None) for pool in pools])
    teams: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in granted_by_team_and_pool(user=user, pool_ids=[p.pk for p in pools]):
        teams[row["pool_id"]].append(
            {"team": row["team__slug"], "gpus": row["gpus"], "grants": row["grants"]}
        )
    rows = []
    for pool in pools:
        f = figures[(pool.pk, None)]
        rows.append(
            {
                "pool": pool.pk,
                "name": str(pool),
                "pool_class": pool.pool_class,
                "accelerator": pool.accelerator.slug,
                "capacity_gpus": f.capacity,
                "headroom_gpus": f.headroom,
                "grantable_gpus": f.grantable,
                "granted_gpus": f.granted,
                "free_gpus": f.free,
                "batch_granted_gpus": f.batch_granted,
                "batch_cap_gpus": f.batch_cap,
                "granted_percent": round(100 * f.granted / f.capacity, 1) if f.capacity else 0.0,
                "teams": teams[pool.pk],
            }
        )
    return rows


def team_capacity_rows(*, user: User, teams: Iterable[Team]) -> list[dict[str, Any]]:
    """The API's granted-capacity row of each team: GPUs per pool and their hourly cost."""
    teams = list(teams)
    pools: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in granted_by_team_and_pool(user=user, team_ids=[t.pk for t in teams]):
        pools[row["team_id"]].append(
            {
                "pool": row["pool_id"],
                "name": f"{row['pool__cluster__name']}/{row['pool__name']}",
                "accelerator": row["pool__accelerator__slug"],
                "gpus": row["gpus"],
                "grants": row["grants"],
                "hourly_cost": row["gpus"] * row["pool__accelerator__hourly_cost"],
            }
        )
    return [
        {
            "team": team.slug,
            "name": team.name,
            "granted_gpus": sum(p["gpus"] for p in pools[team.pk]),
            "grants": sum(p["grants"] for p in pools[team.pk]),
            "hourly_cost": sum((p["hourly_cost"] for p in pools[team.pk]), Decimal(0)),
            "pools": pools[team.pk],
        }
        for team in teams
    ]


def grant_measured_usage(*, grants: Iterable[Grant]) -> dict[int, dict[str, int]]:
    """What the pods in each grant's namespace use now, from the utilisation collector's figures.

    Takes grants the caller already read through a scoped selector; returns {grant id: {"gpus",
    "pending_gpus"}} for the grants the collector has seen, in one query.
    """
    grants = list(grants)
    by_namespace = {grant.namespace: grant.pk for grant in grants}
    pool_ids = {grant.pool_id for grant in grants}
    usage: dict[int, dict[str, int]] = {}
    for detail in PoolUtilisation.objects.filter(pool_id__in=pool_ids).values_list("detail", flat=True):
        for row in detail.get("namespaces", []):
            grant_id = by_namespace.get(row.get("namespace"))
            if grant_id is not None:
                usage[grant_id] = {"gpus": row.get("gpus", 0), "pending_gpus": row.get("pending_gpus", 0)}
    return usage


# --- what runs in a grant's namespace -----------------------------------------------------------


@dataclass(frozen=True)
class GrantWorkloads:
    """What the collector last saw in a grant's namespace (pools.utilisation.diagnosis rows)."""

    namespace: str
    # live, syncing, stale (the cluster does not answer), silent (the collector stopped) or none
    freshness: str
    observed_at: datetime | None = None
    stale_since: datetime | None = None
    # The collector's error (admins and auditors only: it can name the cluster's internals).
    last_error: str = ""
    changed_at: datetime | None = None
    workloads: list[dict[str, Any]] = field(default_factory=list)
    troubled: int = 0

    @property
    def current(self) -> bool:
        return self.freshness == "live"


def grant_of_request(*, user: User, capacity_request: CapacityRequest) -> Grant | None:
    """The grant of a request, with its pool and nothing else: for the grant page's polls."""
    return Grant.objects.visible_to(user).select_related("pool").filter(request=capacity_request).first()


def grant_workloads_get(*, user: User, grant: Grant, now: datetime) -> GrantWorkloads:
    """The workloads of `grant`'s namespace and why those not running are not, as the collector's
    watches last wrote them: two queries, never a request to the cluster. `grant` must come from a
    scoped selector (grant_list)."""
    cluster_id = grant.pool.cluster_id
    state = WorkloadWatchState.objects.filter(cluster_id=cluster_id).first()
    if state is None:
        return GrantWorkloads(namespace=grant.namespace, freshness="none")
    found = NamespaceWorkloads.objects.filter(cluster_id=cluster_id, namespace=grant.namespace).first()
    return GrantWorkloads(
        namespace=grant.namespace,
        freshness=state.freshness(now),
        observed_at=state.observed_at,
        stale_since=state.heartbeat_at if state.freshness(now) == "silent" else state.stale_since,
        last_error=state.last_error if user.sees_everything else "",
        changed_at=found.changed_at if found else None,
        workloads=found.workloads if found else [],
        troubled=found.troubled if found else 0,
    )


# --- queues of grants that queue through Kueue (written by the collector's queue watch) ----------

# The queue watch writes at least every 5 s; a status older than this is not current.
QUEUE_SILENT_AFTER = timedelta(seconds=20)


@dataclass
class KueueHealth:
    """What a page says about a cluster's Kueue: its webhook answers, fails (since when), or unknown."""

    status: KueueStatus | None
    now: datetime

    @property
    def current(self) -> bool:
        return self.status is not None and self.now - self.status.heartbeat_at <= QUEUE_SILENT_AFTER

    @property
    def failing(self) -> bool:
        return self.status is not None and self.status.webhook_ok is False

    @property
    def message(self) -> str:
        return self.status.webhook_message if self.status is not None else ""

    @property
    def since(self) -> datetime | None:
        return self.status.webhook_failing_since if self.status is not None else None


def kueue_health(*, cluster_id: int, now: datetime) -> KueueHealth:
    return KueueHealth(KueueStatus.objects.filter(cluster_id=cluster_id).first(), now)


def queue_list(*, user: User) -> QuerySet[QueueStatus]:
    """The live ClusterQueues of the grants `user` may see."""
    return QueueStatus.objects.visible_to(user).select_related("grant", "team", "pool", "cluster")


def grant_queue_get(*, user: User, grant: Grant) -> QueueStatus | None:
    return queue_list(user=user).filter(grant=grant).first()


def grant_queues_bulk(*, user: User, grants: Iterable[Grant]) -> dict[int, QueueStatus]:
    """The live queue of each of `grants`, by grant id, in one query."""
    ids = [g.pk for g in grants if g.queued]
    if not ids:
        return {}
    return {q.grant_id: q for q in queue_list(user=user).filter(grant_id__in=ids)}


def pool_cohorts_bulk(*, pools: Iterable[NodePool]) -> dict[int, dict[str, int]]:
    """Cohort totals of many pools in one query, for approvers: pool id -> queues, nominal, used,
    borrowed GPUs and pending Workloads. Pool-level figures, shown to whoever sees the pool."""
    result: dict[int, dict[str, int]] = {}
    rows = QueueStatus.objects.filter(pool__in=list(pools)).values(
        "pool_id", "nominal_gpus", "used_gpus", "borrowed_gpus", "pending_workloads"
    )
    for row in rows:
        totals = result.setdefault(
            row["pool_id"], {"queues": 0, "nominal": 0, "used": 0, "borrowed": 0, "pending": 0}
        )
        totals["queues"] += 1
        totals["nominal"] += row["nominal_gpus"]
        totals["used"] += row["used_gpus"]
        totals["borrowed"] += row["borrowed_gpus"]
        totals["pending"] += row["pending_workloads"]
    return result
