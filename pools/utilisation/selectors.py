"""Reads of live utilisation figures and their history.

Visibility: every signed-in user sees cluster and pool figures (capacity, free GPUs,
fragmentation, queue length): they are what a team needs to plan a request. What is about one
team (its namespaces, pending pods by name, usage, cost) is shown to that team's members, and
everything to platform admins and auditors. The collector and /metrics read without a user.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Min, Model, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTransform

from pools.kube.objects import POOL_LABEL, Label
from pools.models import (
    COLLECTOR_SILENT_AFTER,
    Cluster,
    ClusterInventory,
    ClusterUtilisation,
    CollectorState,
    NodeBringUp,
    NodePool,
    PoolClass,
    PoolSnapshot,
    PoolUtilisation,
    SnapshotResolution,
    TeamUsageSnapshot,
    WarmHeadroom,
)
from pools.utilisation import prometheus
from pools.utilisation.figures import DRAWN_NODES, GrantSpec, PoolSpec
from pools.utilisation.services import floor_time
from portal import statements
from portal.models import User
from quotas.models import Grant, ServingDeployment, Team
from quotas.selectors import grant_list, serving_deployment_list, teams_visible_to
from quotas.states import HOLDING_STATES

R = SnapshotResolution
TIERS = (R.RAW, R.FIVE_MINUTES, R.HOUR)
# COLLECTOR_SILENT_AFTER (pools.models): the collector writes at least every 5 s; silence for longer
# means it is not running. The approval pre-flight reads the same rule.


class Freshness:
    LIVE = "live"
    SYNCING = "syncing"
    STALE = "stale"  # the collector runs but the cluster does not answer
    SILENT = "silent"  # the collector has stopped writing
    NONE = "none"  # no collector has ever reported on this cluster


# ----------------------------------------------------------------------------------------------
# For the collector


def collector_pool_specs(*, cluster_id: int) -> list[PoolSpec]:
    pools = NodePool.objects.filter(cluster_id=cluster_id, enabled=True).select_related("accelerator")
    return [
        PoolSpec(
            id=pool.pk,
            name=pool.name,
            node_selector=pool.node_selector or {POOL_LABEL: pool.name},
            resource=pool.accelerator.resource_name,
            pool_class=pool.pool_class,
            headroom=pool.headroom_gpus,
            interactive=pool.pool_class == PoolClass.INTERACTIVE,
        )
        for pool in pools
    ]


def collector_grant_specs(
    *, cluster_id: int, namespace_labels: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, GrantSpec]:
    """Namespace -> grant, for attributing GPU use to teams.

    Namespaces the portal provisioned carry their grant and team as labels (pools.kube.objects.Label);
    those labels win. Any other namespace is matched by name with Grant.namespace. A grant that no
    longer holds capacity still names its team, with 0 GPUs granted.
    """
    labelled = {
        namespace: labels
        for namespace, labels in (namespace_labels or {}).items()
        if labels.get(Label.GRANT) or labels.get(Label.TEAM)
    }
    label_ids = {int(v) for v in (labels.get(Label.GRANT, "") for labels in labelled.values()) if v.isdigit()}
    rows = Grant.objects.filter(Q(pool__cluster_id=cluster_id) | Q(pk__in=label_ids)).values_list(
        "namespace", "pk", "team_id", "team__slug", "pool_id", "gpus", "request__state"
    )
    by_id = {
        pk: GrantSpec(namespace, pk, team_id, slug, pool_id, gpus if state in HOLDING_STATES else 0)
        for namespace, pk, team_id, slug, pool_id, gpus, state in rows
    }
    specs = {spec.namespace: spec for spec in by_id.values()}
    team_ids = dict(
        Team.objects.filter(slug__in={labels.get(Label.TEAM) for labels in labelled.values()}).values_list(
            "slug", "pk"
        )
    )
    for namespace, labels in labelled.items():
        grant_id = labels.get(Label.GRANT, "")
        if grant_id.isdigit() and int(grant_id) in by_id:
            specs[namespace] = replace(by_id[int(grant_id)], namespace=namespace)
        elif labels.get(Label.TEAM):
            team = labels[Label.TEAM]
            specs[namespace] = GrantSpec(namespace, None, team_ids.get(team), team, None, 0)
    return specs


# ----------------------------------------------------------------------------------------------
# Dashboard


@dataclass
class PoolView:
    pool: NodePool
    live: PoolUtilisation | None

    @property
    def headroom_short(self) -> bool:
        return self.live is not None and self.live.headroom_short

    @property
    def used_percent(self) -> int:
        if self.live is None or not self.live.gpus_allocatable:
            return 0
        return round(100 * self.live.gpus_requested / self.live.gpus_allocatable)


@dataclass
class ClusterView:
    cluster: Cluster
    status: ClusterUtilisation | None
    freshness: str
    pools: list[PoolView] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        return self.freshness in (Freshness.STALE, Freshness.SILENT)

    @property
    def stale_since(self) -> datetime | None:
        if self.status is None:
            return None
        if self.freshness == Freshness.SILENT:
            return self.status.heartbeat_at
        return self.status.stale_since


def _freshness(status: ClusterUtilisation | None, now: datetime) -> str:
    if status is None:
        return Freshness.NONE
    if now - status.heartbeat_at > COLLECTOR_SILENT_AFTER:
        return Freshness.SILENT
    return {
        CollectorState.LIVE: Freshness.LIVE,
        CollectorState.STALE: Freshness.STALE,
    }.get(status.state, Freshness.SYNCING)


def _overview_plan(now: datetime) -> statements.Plan[list[ClusterView]]:
    # Credentials are decrypted when a row is read: pages that only name a cluster do not read them.
    def enabled_clusters() -> QuerySet[Cluster]:
        return Cluster.objects.filter(enabled=True).defer(*Cluster.CREDENTIALS).order_by("name")

    def enabled_pools() -> QuerySet[NodePool]:
        # The cards need the totals only; `detail` (every node, pending pod and namespace) is loaded
        # on first access by the pages that show it.
        return (
            NodePool.objects.filter(cluster__in=enabled_clusters(), enabled=True)
            .select_related("cluster", "accelerator", "utilisation")
            .defer("utilisation__detail", *(f"cluster__{f}" for f in Cluster.CREDENTIALS))
            .order_by("name")
        )

    # Polled every few seconds by every open dashboard: compiled once (statements), none depends on
    # the user. Each cluster comes with its collector's status, in the one query.
    clusters, pools = yield (
        statements.bound_instances_read(
            "overview clusters", lambda: enabled_clusters().select_related("utilisation")
        ),
        statements.bound_instances_read("overview pools", enabled_pools),
    )
    views: dict[int, ClusterView] = {}
    for c in clusters:
        status = getattr(c, "utilisation", None)
        views[c.pk] = ClusterView(cluster=c, status=status, freshness=_freshness(status, now))
    for pool in pools:
        views[pool.cluster_id].pools.append(PoolView(pool=pool, live=getattr(pool, "utilisation", None)))
    return list(views.values())


def utilisation_overview(*, user: User, now: datetime) -> list[ClusterView]:
    """Enabled clusters with their enabled pools' live figures. Pool-level figures are for every
    signed-in `user` (see the module docstring); what is about one team is scoped by the other reads."""
    return statements.run(_overview_plan(now))


@dataclass
class OverviewLive:
    """What the dashboard's live region shows: the clusters and pools, the team usage, and (when
    asked for) the version of them, read first."""

    clusters: list[ClusterView]
    team_rows: list[TeamUsageRow]
    version: str | None = None  # None also on a database without versions (_versioned)


def overview_live_get(*, user: User, now: datetime, versioned: bool) -> OverviewLive:
    """The dashboard's live region for `user` at `now`, all of it in one round trip (statements.together);
    with `versioned`, its version too, read before the figures (as overview_version then the reads)."""
    if not versioned:
        clusters, team_rows = statements.together(_overview_plan(now), _team_usage_plan(user))
        return OverviewLive(clusters=clusters, team_rows=team_rows)
    # The version's read is sent first: a write in between makes the next poll render once more,
    # never keeps newer figures behind an older version.
    version, clusters, team_rows = statements.together(
        _overview_version_plan(user, now), _overview_plan(now), _team_usage_plan(user)
    )
    return OverviewLive(clusters=clusters, team_rows=team_rows, version=version)


def _visible_namespaces(user: User) -> set[str] | None:
    """None means all."""
    if user.sees_everything:
        return None
    return {row["namespace"] for row in statements.fetch(_visible_namespaces_read(user))[0]}


def _visible_namespaces_read(user: User) -> statements.Read:
    # Compiled once per user and scope (statements): a pool's live region asks on every changed poll.
    key = ("visible namespaces", *statements.user_key(user))
    return statements.rows_read(
        statements.remember(
            key, lambda: statements.values_statement(grant_list(user=user).values("namespace"))
        )
    )


@dataclass
class PoolDetail:
    view: PoolView
    cluster: ClusterView
    nodes: list[dict[str, Any]]  # the first DRAWN_NODES by name
    node_count: int
    pending: list[dict[str, Any]]
    pending_hidden: int
    namespaces: list[dict[str, Any]]
    non_gpu_pods: list[str]
    # The cluster's inventory without its node list, `node_groups` read from its document.
    inventory: ClusterInventory | None = None


# The keys of a pool's published detail its page reads (pools.utilisation.services._pool_detail).
_DETAIL_SHOWN = ("drawn_nodes", "node_count", "pending", "namespaces", "non_gpu_pods")


def _pool_detail_plan(user: User, pool_id: int, now: datetime) -> statements.Plan[PoolDetail | None]:
    # One query: the pool, its cluster, accelerator and figures, the cluster's collector state and its
    # inventory's node groups. Of the detail only what the page shows: the grid's nodes, not every
    # node of a big pool; of the inventory not its node list (the approval pre-flight's).
    def build(pool_id: int) -> QuerySet[NodePool]:
        return (
            NodePool.objects.select_related(
                "cluster", "accelerator", "utilisation", "cluster__utilisation", "cluster__inventory"
            )
            .defer(
                "utilisation__detail",
                "cluster__inventory__document",
                *(f"cluster__{f}" for f in Cluster.CREDENTIALS),
            )
            .annotate(
                **{key: KeyTransform(key, "utilisation__detail") for key in _DETAIL_SHOWN},
                inventory_node_groups=KeyTransform("node_groups", "cluster__inventory__document"),
            )
            .filter(pk=pool_id, enabled=True, cluster__enabled=True)
        )

    # Compiled once (statements): the live region asks on every changed poll.
    reads = [statements.bound_instances_read("pool detail", build, pool_id=pool_id)]
    if not user.sees_everything:
        reads.append(_visible_namespaces_read(user))
    found, *namespace_rows = yield tuple(reads)
    if not found:
        return None
    pool = found[0]
    live: PoolUtilisation | None = getattr(pool, "utilisation", None)
    status: ClusterUtilisation | None = getattr(pool.cluster, "utilisation", None)
    inventory: ClusterInventory | None = getattr(pool.cluster, "inventory", None)
    if inventory is not None:
        inventory.node_groups = pool.inventory_node_groups
    view = PoolView(pool=pool, live=live)
    freshness = _freshness(status, now)
    cluster = ClusterView(cluster=pool.cluster, status=status, freshness=freshness, pools=[view])
    nodes, node_count = pool.drawn_nodes, pool.node_count
    if live is not None and nodes is None:  # published before the detail kept them apart
        every = live.detail.get("nodes", [])
        nodes, node_count = every[:DRAWN_NODES], len(every)
    visible = {r["namespace"] for r in namespace_rows[0]} if namespace_rows else None
    pending = [p for p in pool.pending or [] if visible is None or p["namespace"] in visible]
    namespaces = [n for n in pool.namespaces or [] if visible is None or n["namespace"] in visible]
    return PoolDetail(
        view=view,
        cluster=cluster,
        nodes=nodes or [],
        node_count=node_count or 0,
        pending=pending,
        pending_hidden=(view.live.pods_pending if view.live else 0) - len(pending),
        namespaces=namespaces,
        non_gpu_pods=(pool.non_gpu_pods or []) if user.sees_everything else [],
        inventory=inventory,
    )


def _existing(detail: PoolDetail | None, pool_id: int) -> PoolDetail:
    if detail is None:
        raise NodePool.DoesNotExist(f"No enabled pool {pool_id}")
    return detail


def pool_detail_get(*, user: User, pool_id: int, now: datetime) -> PoolDetail:
    """Raises NodePool.DoesNotExist for a pool that is unknown or disabled."""
    return _existing(statements.run(_pool_detail_plan(user, pool_id, now)), pool_id)


def pool_live_get(*, user: User, pool_id: int, now: datetime) -> tuple[str | None, PoolDetail]:
    """The version of a pool's live region (read first) and its detail, in one round trip.
    Raises NodePool.DoesNotExist for a pool that is unknown or disabled."""
    version, detail = statements.together(
        _pool_live_version_plan(user, pool_id, now), _pool_detail_plan(user, pool_id, now)
    )
    return version, _existing(detail, pool_id)


def pool_node_names(*, pool_id: int) -> list[str]:
    """Every node of the pool, by name, as last published."""
    rows = PoolUtilisation.objects.filter(pool_id=pool_id).values_list("detail__nodes", flat=True)
    return [node["name"] for node in next(iter(rows), None) or []]


def pool_prometheus_get(*, detail: PoolDetail) -> prometheus.PoolPrometheus | None:
    """The pool's DCGM figures and its namespaces' vLLM figures from the cluster's Prometheus, or
    None when the cluster has none. Namespaces are those of `detail`, already scoped to the user."""
    pool = detail.view.pool
    if not pool.cluster.prometheus_url:
        return None
    return prometheus.pool_prometheus(
        url=pool.cluster.prometheus_url,
        node_label=pool.cluster.prometheus_node_label,
        nodes=pool_node_names(pool_id=pool.pk),
        gpus_by_namespace={n["namespace"]: n["gpus"] for n in detail.namespaces if n.get("gpus")},
        hourly_cost=pool.accelerator.hourly_cost,
    )


@dataclass
class ServingCostRow:
    cluster: str
    pool: str
    team: str
    serving: prometheus.NamespaceServing


@dataclass
class ServingCost:
    rows: list[ServingCostRow] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # cluster -> why Prometheus did not answer


def serving_cost_list(*, user: User) -> ServingCost:
    """Cost per generated token now, per namespace using GPUs on a cluster with a Prometheus data
    source; only the user's teams' namespaces (everything for admins and auditors)."""
    visible = _visible_namespaces(user)
    live = (
        PoolUtilisation.objects.filter(pool__enabled=True, pool__cluster__enabled=True)
        .exclude(pool__cluster__prometheus_url="")
        .select_related("pool", "pool__cluster", "pool__accelerator")
        .order_by("pool__cluster__name", "pool__name")
    )
    namespaces = dict(live.values_list("pk", "detail__namespaces"))
    result = ServingCost()
    for figures in live.defer("detail"):
        cluster = figures.pool.cluster
        if cluster.name in result.unavailable:
            continue  # one timeout per cluster is enough
        usage = {
            n["namespace"]: n
            for n in namespaces.get(figures.pk) or []
            if n.get("gpus") and (visible is None or n["namespace"] in visible)
        }
        if not usage:
            continue
        try:
            serving = prometheus.namespace_serving(
                prometheus.Client(cluster.prometheus_url),
                gpus_by_namespace={ns: n["gpus"] for ns, n in usage.items()},
                hourly_cost=figures.pool.accelerator.hourly_cost,
            )
        except prometheus.PrometheusError as exc:
            result.unavailable[cluster.name] = exc.reason
            continue
        result.rows += [
            ServingCostRow(cluster.name, figures.pool.name, usage[row.namespace].get("team", ""), row)
            for row in serving
            if row.tokens_per_second is not None
        ]
    return result


@dataclass
class TeamUsageRow:
    team: str
    pool: str
    cluster: str
    granted: int = 0
    used: int = 0
    pending: int = 0

    @property
    def over(self) -> bool:
        return self.used > self.granted


def _team_usage_plan(user: User) -> statements.Plan[list[TeamUsageRow]]:
    scope = statements.user_key(user)

    def read(name: str, build: Callable[[], QuerySet[Any]]) -> statements.Read:
        return statements.rows_read(
            statements.remember(("team usage", name, scope), lambda: statements.values_statement(build()))
        )

    def holding() -> QuerySet[Grant]:  # the scope of grant_list, as values
        grants = Grant.objects.visible_to(user).filter(request__state__in=HOLDING_STATES, pool__enabled=True)
        return grants.values("team__slug", "pool_id", "pool__name", "pool__cluster__name", "gpus")

    def live() -> QuerySet[PoolUtilisation]:
        # Only the namespaces key of `detail`: the node list of a big pool is not read on every poll.
        figures = PoolUtilisation.objects.filter(pool__enabled=True, pool__cluster__enabled=True)
        return figures.values("pool_id", "pool__name", "pool__cluster__name", "detail__namespaces")

    teams, granted, used = yield (
        read("teams", lambda: teams_visible_to(user=user).values("slug")),
        read("granted", holding),
        read("used", live),
    )
    visible_teams = {r["slug"] for r in teams}
    rows: dict[tuple[str, int], TeamUsageRow] = {}

    def row(team: str, pool_id: int, pool: str, cluster: str) -> TeamUsageRow:
        key = (team, pool_id)
        if key not in rows:
            rows[key] = TeamUsageRow(team=team, pool=pool, cluster=cluster)
        return rows[key]

    for g in granted:
        row(g["team__slug"], g["pool_id"], g["pool__name"], g["pool__cluster__name"]).granted += g["gpus"]
    for f in used:
        pool_id, pool, cluster = f["pool_id"], f["pool__name"], f["pool__cluster__name"]
        for usage in f["detail__namespaces"] or []:
            team = usage.get("team") or ""
            if team in visible_teams or (not team and user.sees_everything):
                target = row(team, pool_id, pool, cluster)
                target.used += usage.get("gpus", 0)
                target.pending += usage.get("pending_gpus", 0)
    return sorted(rows.values(), key=lambda r: (r.team == "", r.team, r.cluster, r.pool))


def team_usage_list(*, user: User) -> list[TeamUsageRow]:
    """GPUs in use against GPUs granted, per team and pool, from the live figures: three queries of
    plain values in one round trip, compiled once per user and scope (portal.statements: the
    dashboard's live region reads them on every changed poll, and compiling them cost more than
    running them)."""
    return statements.run(_team_usage_plan(user))


# ----------------------------------------------------------------------------------------------
# Versions of the polled fragments: a poll whose version is unchanged is answered "not modified"
# without reading or rendering the figures. A version covers everything its fragment shows that can
# change: the rows (any column shown), the user's scope, and what changes with time alone.

# What the pool card and the pool's live region show of the pool itself.
_POOL_SHOWN = (
    "pk",
    "name",
    "cluster_id",
    "pool_class",
    "headroom_gpus",
    "node_selector",
    "accelerator__name",
    "accelerator__mig_profile",
)
# What the freshness line and the cluster card show of the collector's state. The heartbeat moves
# on every write of the collector, so it also stands for the pool figures written with it.
_STATUS_SHOWN = (
    "cluster_id",
    "state",
    "heartbeat_at",
    "observed_at",
    "stale_since",
    "last_error",
    "unpooled_gpu_nodes",
    "unmatched_pending",
)


_FINGERPRINT = "(SELECT count(*) || ':' || coalesce(sum(hashtextextended({of}, 0)), 0) FROM ({sql}) r{where})"


def _statement(
    key: tuple[Any, ...], parts: Callable[[], Sequence[QuerySet[Any]]], *, silent: int | None = None
) -> statements.Statement:
    """One query of "rows:sum of the rows' 64-bit hashes" for each queryset of `parts()`, compiled
    once per `key` (portal.statements: building and compiling the querysets cost a poll more than
    running them). A key names everything the compiled text and its parameters depend on (the
    fragment, the user and their scope, the pool); time enters only as the last parameter. The sum
    does not depend on the order of the rows, so PostgreSQL neither sorts them nor sends them: a
    changed, added or removed row changes its part, whatever column changed.

    `silent`: the index of a part of collector states (_STATUS_SHOWN); a last part then
    fingerprints its clusters whose heartbeat is older than the statement's last parameter.
    """

    def make() -> statements.Statement:
        querysets = parts()
        selects, params = [], []
        compiled = [part.query.sql_with_params() for part in querysets]
        # Each `sql` is the ORM's own compiled query, its values left as parameters: nothing is interpolated.
        for sql, part_params in compiled:
            selects.append(_FINGERPRINT.format(of="r::text", sql=sql, where=""))
            params += part_params
        if silent is not None:
            sql, part_params = compiled[silent]
            selects.append(
                _FINGERPRINT.format(of="r.cluster_id::text", sql=sql, where=" WHERE r.heartbeat_at < %s")
            )
            params += part_params
        return statements.Statement("SELECT " + ", ".join(selects), tuple(params), querysets[0].db)

    return statements.remember(("utilisation version", *key), make)


def _versioned() -> bool:
    # The fingerprints are PostgreSQL's (hashtextextended over whole rows). On SQLite, the zero-setup
    # database of `make run`, a region has no version: every poll renders, as before versions.
    return connection.vendor == "postgresql"


def _fingerprints(statement: statements.Statement, *last: Any) -> statements.Read:
    """The read of a version statement: its result is the first (and only) row."""
    return statements.first_row_read(statement, (*statement.params, *last))


def _version(user: User, *keys: object) -> str:
    # The user is part of every version: two users never share one, even when their scopes agree today.
    key = "\0".join(str(k) for k in (user.pk, user.sees_everything, *keys))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _silent_before(now: datetime) -> datetime:
    # A collector falls silent by not writing: `_freshness` flips with time alone, so the set of
    # silent clusters at `now` is part of the version (the same boundary as `_freshness`).
    return now - COLLECTOR_SILENT_AFTER


def _overview_parts(user: User) -> list[QuerySet[Any]]:
    statuses = ClusterUtilisation.objects.filter(cluster__enabled=True)
    return [
        Cluster.objects.filter(enabled=True).values_list("pk", "name"),
        statuses.values_list(*_STATUS_SHOWN),
        NodePool.objects.filter(enabled=True, cluster__enabled=True).values_list(
            *_POOL_SHOWN, "utilisation__computed_at"
        ),
        # The team usage: the user's teams, and their grants that hold capacity.
        teams_visible_to(user=user).values_list("slug"),
        Grant.objects.visible_to(user)
        .filter(request__state__in=HOLDING_STATES, pool__enabled=True)
        .values_list("pk", "gpus", "team__slug", "pool_id", "pool__name", "pool__cluster__name"),
    ]


def _overview_version_plan(user: User, now: datetime) -> statements.Plan[str | None]:
    if not _versioned():
        return None
    key = ("overview", *statements.user_key(user))
    statement = _statement(key, lambda: _overview_parts(user), silent=1)
    (found,) = yield (_fingerprints(statement, _silent_before(now)),)
    return _version(user, "overview", *map(str, found))


def overview_version(*, user: User, now: datetime) -> str | None:
    """The version of what the dashboard's live region shows `user` at `now` (utilisation_overview
    and team_usage_list); one query. None on a database without versions (_versioned)."""
    return statements.run(_overview_version_plan(user, now))


def _pool_live_parts(user: User, pool_id: int) -> list[QuerySet[Any]]:
    pool = NodePool.objects.filter(pk=pool_id, enabled=True, cluster__enabled=True)
    return [
        pool.values_list(*_POOL_SHOWN, "utilisation__computed_at"),
        ClusterUtilisation.objects.filter(cluster_id__in=pool.values("cluster_id")).values_list(
            *_STATUS_SHOWN
        ),
        # The namespaces whose pending pods and usage the user sees (_visible_namespaces).
        Grant.objects.visible_to(user).values_list("namespace"),
        # The autoscaling and warm-headroom panel (pools.utilisation.elastic.pool_elastic_get): the
        # inventory by its digest, the placeholders, and the bring-ups by count and newest id.
        ClusterInventory.objects.filter(cluster_id__in=pool.values("cluster_id")).values_list(
            "digest", "node_groups_served", "node_groups_error", "autoscaler_state", "autoscaler_message"
        ),
        WarmHeadroom.objects.filter(pool_id=pool_id).values_list(
            "gpus_wanted", "gpus_held", "pods_pending", "placeholders", "conditions", "reconciled_at"
        ),
        NodeBringUp.objects.filter(cluster_id__in=pool.values("cluster_id"))
        .values("cluster_id")
        .annotate(rows=Count("id"), last=Max("id"))
        .values_list("rows", "last"),
    ]


def _pool_live_version_plan(user: User, pool_id: int, now: datetime) -> statements.Plan[str | None]:
    if not _versioned():
        return None
    key = ("pool", *statements.user_key(user), pool_id)
    statement = _statement(key, lambda: _pool_live_parts(user, pool_id), silent=1)
    ((found, *rest),) = yield (_fingerprints(statement, _silent_before(now)),)
    if found.startswith("0:"):
        return None
    return _version(user, "pool", pool_id, found, *map(str, rest))


def pool_live_version(*, user: User, pool_id: int, now: datetime) -> str | None:
    """The version of what a pool's live region shows `user` at `now` (pool_detail_get), or None
    for a pool that is unknown or disabled, which is for the page to answer (and on a database
    without versions); one query."""
    return statements.run(_pool_live_version_plan(user, pool_id, now))


def _pool_history_parts(pool_id: int) -> list[QuerySet[Any]]:
    snapshots = PoolSnapshot.objects.filter(pool_id=pool_id)
    return [
        NodePool.objects.filter(pk=pool_id, enabled=True, cluster__enabled=True).values_list("pk"),
        # New samples and roll-ups get new ids; compaction deleting old ones changes the count.
        snapshots.values("pool_id").annotate(rows=Count("id"), last=Max("id")).values_list("rows", "last"),
        # tier_ranges: where each tier begins (each an index probe of (resolution, at)).
        *(
            PoolSnapshot.objects.filter(resolution=tier).order_by("at").values_list("at")[:1]
            for tier in TIERS
        ),
    ]


def pool_history_version(
    *, user: User, pool_id: int, span: timedelta, now: datetime, step: timedelta
) -> str | None:
    """The version of a pool's history over the `span` before `now` (pool_history), or None for a
    pool that is unknown or disabled; one query. The window slides with time alone: `step` is how
    far it may slide before the version changes (less than one column of the chart)."""
    if not _versioned():
        return None
    statement = _statement(("history", pool_id), lambda: _pool_history_parts(pool_id))
    found, *rest = map(str, statements.fetch(_fingerprints(statement))[0])
    if found.startswith("0:"):
        return None
    window = floor_time(now, max(1, int(step.total_seconds())))
    return _version(user, "history", pool_id, span, window.isoformat(), *rest)


# ----------------------------------------------------------------------------------------------
# History


def _ceil_time(moment: datetime, seconds: int) -> datetime:
    floored = floor_time(moment, seconds)
    return floored if floored == moment else floored + timedelta(seconds=seconds)


def tier_ranges(
    start: datetime, end: datetime, *, history: type[Model] = PoolSnapshot
) -> list[tuple[int, datetime, datetime]]:
    """Which tier answers for which part of [start, end): the finest one that still has the data.
    Raw samples cover the recent past; before their first sample (rounded up to the next 5-minute
    bucket) the 5-minute averages take over, and before theirs the hourly ones. `history` is the
    table of samples with `resolution` and `at` (the pools' by default; the queues' have their own)."""
    firsts = {
        row["resolution"]: row["first"]
        for row in history.objects.values("resolution").annotate(first=Min("at"))
    }
    present = [res for res in TIERS if res in firsts]
    ranges = []
    upper = end
    for index, resolution in enumerate(present):
        coarser = present[index + 1] if index + 1 < len(present) else None
        lower = start if coarser is None else max(start, _ceil_time(firsts[resolution], coarser))
        if lower < upper:
            ranges.append((resolution, lower, upper))
        upper = min(upper, lower)
    return ranges


def pool_history(*, pool_id: int, start: datetime, end: datetime) -> list[PoolSnapshot]:
    rows: list[PoolSnapshot] = []
    for resolution, lower, upper in tier_ranges(start, end):
        rows += PoolSnapshot.objects.filter(
            pool_id=pool_id, resolution=resolution, at__gte=lower, at__lt=upper
        )
    return sorted(rows, key=lambda r: r.at)


@dataclass
class TeamCostRow:
    team: str
    cluster: str
    pool: str
    accelerator: str
    hourly_cost: Decimal
    gpu_hours: float

    @property
    def cost(self) -> Decimal:
        return (Decimal(str(round(self.gpu_hours, 4))) * self.hourly_cost).quantize(Decimal("0.01"))


@dataclass
class TeamCost:
    team: str
    rows: list[TeamCostRow]

    @property
    def gpu_hours(self) -> float:
        return sum(r.gpu_hours for r in self.rows)

    @property
    def cost(self) -> Decimal:
        return sum((r.cost for r in self.rows), Decimal("0.00"))


def team_cost_list(*, user: User, start: datetime, end: datetime) -> list[TeamCost]:
    """GPU-hours and their cost per team and pool for [start, end), at catalogue prices (the
    accelerator's hourly cost per unit). Usage outside any grant shows as team "" to admins."""
    qs = TeamUsageSnapshot.objects.visible_to(user)
    sums: dict[tuple[Any, ...], float] = defaultdict(float)
    for resolution, lower, upper in tier_ranges(start, end):
        tier = qs.filter(resolution=resolution, at__gte=lower, at__lt=upper)
        for row in tier.values(
            "team__slug",
            "pool__cluster__name",
            "pool__name",
            "pool__accelerator__name",
            "pool__accelerator__hourly_cost",
        ).annotate(gpu_seconds=Sum("gpu_seconds")):
            key = (
                row["team__slug"] or "",
                row["pool__cluster__name"],
                row["pool__name"],
                row["pool__accelerator__name"],
                row["pool__accelerator__hourly_cost"],
            )
            sums[key] += row["gpu_seconds"]
    teams: dict[str, list[TeamCostRow]] = defaultdict(list)
    for (team, cluster, pool, accelerator, price), gpu_seconds in sorted(sums.items()):
        teams[team].append(TeamCostRow(team, cluster, pool, accelerator, price, gpu_seconds / 3600))
    return [TeamCost(team, rows) for team, rows in sorted(teams.items(), key=lambda t: (t[0] == "", t[0]))]


def serving_load_times(*, user: User, limit: int = 30) -> list[ServingDeployment]:
    """Serving deployments that became ready, newest first, with how long their model took to load."""
    return list(
        serving_deployment_list(user=user)
        .filter(load_seconds__isnull=False)
        .order_by("-ready_at", "-id")[:limit]
    )


# ----------------------------------------------------------------------------------------------
# /metrics (no user: the endpoint is for Prometheus and protected by token or network)


@dataclass
class MetricsData:
    clusters: list[tuple[Cluster, ClusterUtilisation | None]]
    pools: list[PoolUtilisation]
    deployments: list[ServingDeployment]


def metrics_data() -> MetricsData:
    clusters = list(
        Cluster.objects.filter(enabled=True)
        .select_related("utilisation", "inventory")
        .defer("inventory__document")  # a big cluster's node summary is not for a scrape
        .order_by("name")
    )
    return MetricsData(
        clusters=[(c, getattr(c, "utilisation", None)) for c in clusters],
        pools=list(
            PoolUtilisation.objects.filter(pool__enabled=True, pool__cluster__enabled=True).select_related(
                "pool", "pool__cluster", "pool__accelerator"
            )
        ),
        deployments=list(
            ServingDeployment.objects.filter(
                load_seconds__isnull=False, deleted_at__isnull=True
            ).select_related("team", "grant", "grant__pool", "grant__pool__cluster")
        ),
    )
