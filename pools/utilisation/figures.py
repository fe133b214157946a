"""Pool utilisation figures, computed from what a cluster reports.

Pure functions over node and pod dicts exactly as the apiserver serves them (camelCase JSON) and
plain descriptions of the portal's pools and grants. No database and no API client (the cluster
vocabulary, pods' GPU requests included, is read through pools.kube.objects): the collector feeds
these functions from its watch caches, the tests from hand-made topologies.

Definitions (docs/utilisation.md explains them for users):
- A pod holds GPUs of a node when it is bound to it (spec.nodeName) and not Succeeded/Failed; what
  it holds is the scheduler's effective request: max(largest init container, sum of containers),
  with restartable init containers (sidecars) counted alongside the containers, plus pod overhead.
- A node is *schedulable* when it is Ready and not cordoned; only schedulable nodes have free GPUs.
- Fragmentation: free GPUs on partly used schedulable nodes are *stranded* (a pod needing a whole
  node cannot use them); the *largest free block* is the most GPUs one new pod could still get.
- A GPU pod is *pending* while it is not bound to a node; its queue wait runs from its creation. A
  pending pod held by a scheduling gate (a queue's quota admission) *waits for quota*; any other
  *waits for a node* (GPUs to free up, or the autoscaler's new node).
- Warm-headroom placeholder pods (pools.headroom) hold GPUs like any pod, but they are counted as
  *placeholder GPUs* rather than a namespace's use, and a placeholder waiting for a node is neither
  a pending pod nor queue wait: it is the autoscaler's work (*nodes provisioning*).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pools.kube.objects import (
    ZONE_LABEL,
    constrained_keys,
    is_warm_placeholder,
    key_of,
    labels_of,
    name_of,
    node_cordoned,
    node_gpu_allocatable,
    node_ready,
    parse_time,
    pod_finished,
    pod_gpu_requests,
    pod_scheduling_gated,
    pod_selects,
    pod_unschedulable_reason,
)

Json = dict[str, Any]

# How many pods a figure keeps by name (pending pods, non-GPU pods on GPU nodes); the counts stay exact.
LISTED_PODS = 50
# Nodes a pool's GPU grid draws, the first by name; the rest are counted. The published detail keeps
# them apart, so that a page of a 5,000-node pool reads these, not every node.
DRAWN_NODES = 100


# ----------------------------------------------------------------------------------------------
# The table of pool figures: the one list the live row (PoolUtilisation), the history
# (PoolSnapshot), the API, /metrics and the pool page read. A new figure is a row here and a
# property of PoolFigures with the same name (plus its migration).


class Rollup:
    """How history keeps a figure over a bucket of time."""

    NONE = ""  # live only
    AVERAGE = "average"  # weighted by the seconds each sample stands for
    MAXIMUM = "maximum"


@dataclass(frozen=True)
class Figure:
    name: str  # PoolFigures property, PoolUtilisation column, PoolSnapshot column, API field
    label: str
    help: str
    unit: str  # "nodes", "units" (GPUs or MIG slices), "pods", "seconds"
    metric: str  # /metrics gauge gpu_portal_pool_<metric>
    rollup: str = Rollup.NONE
    integer: bool = True


POOL_FIGURES: tuple[Figure, ...] = (
    Figure("nodes_total", "Nodes", "Nodes in the pool.", "nodes", "nodes"),
    Figure("nodes_ready", "Ready nodes", "Ready nodes in the pool.", "nodes", "nodes_ready", Rollup.AVERAGE),
    Figure(
        "nodes_cordoned",
        "Cordoned nodes",
        "Cordoned (unschedulable) nodes in the pool.",
        "nodes",
        "nodes_cordoned",
    ),
    Figure(
        "nodes_fully_free",
        "Empty nodes",
        "Ready, uncordoned nodes with no GPU requested.",
        "nodes",
        "nodes_fully_free",
    ),
    Figure(
        "gpus_allocatable",
        "Allocatable",
        "Allocatable accelerator units (GPUs or MIG slices).",
        "units",
        "gpus_allocatable",
        Rollup.AVERAGE,
    ),
    Figure(
        "gpus_requested",
        "Requested",
        "Units requested by pods bound to the pool's nodes.",
        "units",
        "gpus_requested",
        Rollup.AVERAGE,
    ),
    Figure(
        "gpus_free", "Free", "Units free on Ready, uncordoned nodes.", "units", "gpus_free", Rollup.AVERAGE
    ),
    Figure(
        "gpus_stranded",
        "Stranded",
        "Free units on nodes that already run GPU pods (fragmentation).",
        "units",
        "gpus_stranded",
        Rollup.AVERAGE,
    ),
    Figure(
        "largest_free_block",
        "Largest free block",
        "Most units one new pod could still get on one node.",
        "units",
        "largest_free_block_gpus",
        Rollup.AVERAGE,
    ),
    Figure(
        "pods_pending",
        "Pending pods",
        "GPU pods waiting to be scheduled on the pool.",
        "pods",
        "pending_pods",
        Rollup.AVERAGE,
    ),
    Figure(
        "queue_wait_max_seconds",
        "Longest queue wait",
        "Longest wait of a pending GPU pod.",
        "seconds",
        "queue_wait_max_seconds",
        Rollup.MAXIMUM,
        integer=False,
    ),
    Figure(
        "non_gpu_pods",
        "Non-GPU pods",
        "Pods without a GPU request on the pool's GPU nodes (allowlist aside).",
        "pods",
        "non_gpu_pods",
    ),
    # Elastic pools: the autoscaler's side (pools.utilisation.nodegroups fills in the node-group ones).
    Figure(
        "placeholder_gpus",
        "Warm GPUs held",
        "Units held by warm-headroom placeholder pods; an interactive pod preempts them at once.",
        "units",
        "placeholder_gpus",
        Rollup.AVERAGE,
    ),
    Figure(
        "nodes_provisioning",
        "Nodes provisioning",
        "Nodes the autoscaler is bringing up: asked for and not yet Ready with their GPUs.",
        "nodes",
        "nodes_provisioning",
        Rollup.AVERAGE,
    ),
    Figure(
        "pods_waiting_node",
        "Pods waiting for a node",
        "Pending GPU pods the scheduler cannot place yet: they wait for GPUs or a new node.",
        "pods",
        "pods_waiting_node",
        Rollup.AVERAGE,
    ),
    Figure(
        "pods_waiting_quota",
        "Pods waiting for quota",
        "Pending GPU pods held back by a scheduling gate (a queue's quota admission, such as Kueue's).",
        "pods",
        "pods_waiting_quota",
        Rollup.AVERAGE,
    ),
    Figure(
        "node_bringup_last_seconds",
        "Last node bring-up",
        "Time to node of the pool's newest node: from the autoscaler's request until Ready with GPUs.",
        "seconds",
        "node_bringup_last_seconds",
        integer=False,
    ),
    Figure(
        "node_bringup_p95_seconds",
        "Node bring-up p95",
        "95th percentile of the time to node over the pool's last 20 new nodes.",
        "seconds",
        "node_bringup_p95_seconds",
        integer=False,
    ),
    Figure(
        "gpu_pod_arrivals_per_hour",
        "GPU pod arrivals",
        "New GPU pods per hour on the pool over the last 15 minutes (placeholders excluded).",
        "pods/hour",
        "gpu_pod_arrivals_per_hour",
        Rollup.AVERAGE,
        integer=False,
    ),
    Figure(
        "gpu_arrivals_per_hour",
        "GPUs arriving",
        "Units asked for by new GPU pods per hour over the last 15 minutes (placeholders excluded).",
        "units/hour",
        "gpu_arrivals_per_hour",
        Rollup.AVERAGE,
        integer=False,
    ),
)
FIGURES_BY_NAME = {figure.name: figure for figure in POOL_FIGURES}
HISTORY_FIGURES = tuple(figure for figure in POOL_FIGURES if figure.rollup)


@dataclass(frozen=True)
class PoolSpec:
    """What the figures need to know about a NodePool row."""

    id: int
    name: str
    node_selector: Mapping[str, str]
    resource: str  # the accelerator unit: nvidia.com/gpu or nvidia.com/mig-<profile>
    pool_class: str = ""
    headroom: int = 0
    interactive: bool = False


@dataclass(frozen=True)
class GrantSpec:
    """The grant a namespace belongs to; `gpus` counts only while the grant holds capacity."""

    namespace: str
    grant_id: int | None
    team_id: int | None
    team: str
    pool_id: int | None
    gpus: int


@dataclass
class NodeFigures:
    name: str
    zone: str
    ready: bool
    cordoned: bool
    allocatable: int
    requested: int
    gpu_pods: int

    @property
    def schedulable(self) -> bool:
        return self.ready and not self.cordoned

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.requested) if self.schedulable else 0


@dataclass
class PendingPod:
    namespace: str
    name: str
    gpus: int
    wait_seconds: float
    reason: str


@dataclass
class NamespaceUsage:
    namespace: str
    gpus: int = 0
    pods: int = 0
    pending_pods: int = 0
    pending_gpus: int = 0
    team_id: int | None = None
    team: str = ""
    grant_id: int | None = None
    granted: int = 0


@dataclass
class PoolFigures:
    pool_id: int
    nodes: list[NodeFigures] = field(default_factory=list)
    pending: list[PendingPod] = field(default_factory=list)
    pods_pending: int = 0
    namespaces: dict[str, NamespaceUsage] = field(default_factory=dict)
    non_gpu_pods: int = 0
    non_gpu_pod_names: list[str] = field(default_factory=list)
    headroom: int = 0
    interactive: bool = False
    placeholder_gpus: int = 0
    placeholders_pending: int = 0
    pods_waiting_node: int = 0
    pods_waiting_quota: int = 0
    # GPU pods (placeholders aside) created at or after compute()'s `created_since`, by key -> units:
    # the collector counts arrivals from them.
    new_pods: dict[str, int] = field(default_factory=dict)
    # Set by the collector's node-group module (pools.utilisation.nodegroups) for elastic pools.
    nodes_provisioning: int = 0
    node_bringup_last_seconds: float = 0.0
    node_bringup_p95_seconds: float = 0.0
    gpu_pod_arrivals_per_hour: float = 0.0
    gpu_arrivals_per_hour: float = 0.0

    @property
    def nodes_total(self) -> int:
        return len(self.nodes)

    @property
    def nodes_ready(self) -> int:
        return sum(n.ready for n in self.nodes)

    @property
    def nodes_cordoned(self) -> int:
        return sum(n.cordoned for n in self.nodes)

    @property
    def gpus_allocatable(self) -> int:
        return sum(n.allocatable for n in self.nodes)

    @property
    def gpus_requested(self) -> int:
        return sum(n.requested for n in self.nodes)

    @property
    def gpus_free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def gpus_stranded(self) -> int:
        """Free GPUs on nodes that already run GPU work: usable only by pods that fit the gap."""
        return sum(n.free for n in self.nodes if n.requested > 0)

    @property
    def largest_free_block(self) -> int:
        return max((n.free for n in self.nodes), default=0)

    @property
    def nodes_fully_free(self) -> int:
        return sum(1 for n in self.nodes if n.schedulable and n.requested == 0 and n.allocatable > 0)

    @property
    def queue_wait_max_seconds(self) -> float:
        return max((p.wait_seconds for p in self.pending), default=0.0)

    @property
    def headroom_short(self) -> bool:
        """An interactive pool has fewer free GPUs than its warm buffer (placeholders' GPUs count as
        free for interactive pods: they preempt them)."""
        return self.interactive and self.gpus_free + self.placeholder_gpus < self.headroom

    def totals(self) -> dict[str, int | float]:
        return {figure.name: getattr(self, figure.name) for figure in POOL_FIGURES}


@dataclass
class ClusterFigures:
    pools: dict[int, PoolFigures]
    # GPU nodes that no pool's selector matches: capacity the portal does not offer.
    unpooled_gpu_nodes: list[str] = field(default_factory=list)
    # Pending GPU pods that target no known pool.
    unmatched_pending: int = 0


# The apiserver stamps creation times in RFC 3339, UTC, to the second ("2026-12-03T08:00:00Z"), and
# such stamps order as their text does: compared as text, a recompute over 50,000 pods parses none.
_STAMP = "%Y-%m-%dT%H:%M:%SZ"
_STAMP_LENGTH = len("2026-12-03T08:00:00Z")


def _created_since(stamp: str | None, since: datetime, since_text: str) -> bool:
    if not stamp:
        return False
    if len(stamp) == _STAMP_LENGTH and stamp[10] == "T" and stamp[-1] == "Z":
        return stamp >= since_text
    created = parse_time(stamp)  # any other spelling: an offset, fractions of a second
    return created is not None and created >= since


def queue_wait_seconds(pod: Json, now: datetime) -> float:
    """Time since the pod was created (it has queued ever since), or since the scheduler first
    reported it unschedulable when the creation time is missing."""
    meta = pod.get("metadata") or {}
    since = parse_time(meta.get("creationTimestamp"))
    if since is None:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                since = parse_time(condition.get("lastTransitionTime"))
    if since is None:
        return 0.0
    return max(0.0, (now - since).total_seconds())


# ----------------------------------------------------------------------------------------------
# Node selection


def node_pool(node: Json, pools: Sequence[PoolSpec]) -> PoolSpec | None:
    """The pool whose selector the node satisfies; the most specific selector wins an overlap."""
    labels = labels_of(node)
    matching = [
        p for p in pools if p.node_selector and all(labels.get(k) == v for k, v in p.node_selector.items())
    ]
    if not matching:
        return None
    return min(matching, key=lambda p: (-len(p.node_selector), p.name))


def pending_pod_pools(
    pod: Json,
    requests: Mapping[str, int],
    pools: Sequence[PoolSpec],
    pool_node_labels: Mapping[int, list[Mapping[str, str]]],
) -> list[PoolSpec]:
    """Pools a pending GPU pod waits for.

    A pod that constrains a pool's own selector labels (the pool label, normally) waits for the
    pools it names. Otherwise it waits for every pool that offers a resource it requests and has
    a node matching its nodeSelector and required affinity.
    """
    constrained = constrained_keys(pod)
    named = [
        p
        for p in pools
        if p.node_selector
        and constrained & p.node_selector.keys()
        and pod_selects(pod, p.node_selector, frozenset(p.node_selector))
    ]
    if named:
        return named
    if any(constrained & p.node_selector.keys() for p in pools):
        return []  # it names a pool the portal does not know
    return [
        p
        for p in pools
        if p.resource in requests
        and any(pod_selects(pod, labels) for labels in pool_node_labels.get(p.id, []))
    ]


# ----------------------------------------------------------------------------------------------
# The figures


def compute(
    nodes: Iterable[Json],
    pods: Iterable[Json],
    pools: Sequence[PoolSpec],
    grants: Mapping[str, GrantSpec],
    now: datetime,
    allowed_on_gpu_nodes: Callable[[Json], bool] = lambda pod: False,
    created_since: datetime | None = None,
) -> ClusterFigures:
    """Per-pool figures of one cluster. `grants` maps namespace -> grant; `allowed_on_gpu_nodes`
    tells the GPU-operation daemons (device plugin, DCGM exporter...) that belong on GPU nodes;
    GPU pods created at or after `created_since` (to the second the apiserver stamps) are listed in
    each pool's `new_pods`."""
    # Creation times are whole seconds: a pod made in the second of `created_since` counts too, and
    # the caller drops the ones it has already seen.
    since = created_since.replace(microsecond=0) - timedelta(seconds=1) if created_since else None
    since_text = since.astimezone(UTC).strftime(_STAMP) if since else ""
    figures = ClusterFigures(
        pools={p.id: PoolFigures(pool_id=p.id, headroom=p.headroom, interactive=p.interactive) for p in pools}
    )
    pool_of_node: dict[str, PoolSpec] = {}
    gpu_nodes: set[str] = set()
    node_rows: dict[str, NodeFigures] = {}
    pool_node_labels: dict[int, list[Mapping[str, str]]] = defaultdict(list)
    for node in nodes:
        name, labels = name_of(node), labels_of(node)
        allocatable = node_gpu_allocatable(node)
        if any(allocatable.values()):
            gpu_nodes.add(name)
        pool = node_pool(node, pools)
        if pool is None:
            if any(allocatable.values()):
                figures.unpooled_gpu_nodes.append(name)
            continue
        pool_of_node[name] = pool
        pool_node_labels[pool.id].append(labels)
        row = NodeFigures(
            name=name,
            zone=labels.get(ZONE_LABEL, ""),
            ready=node_ready(node),
            cordoned=node_cordoned(node),
            allocatable=allocatable.get(pool.resource, 0),
            requested=0,
            gpu_pods=0,
        )
        node_rows[name] = row
        figures.pools[pool.id].nodes.append(row)

    def usage(pool_id: int, namespace: str) -> NamespaceUsage:
        rows = figures.pools[pool_id].namespaces
        if namespace not in rows:
            rows[namespace] = _namespace_usage(namespace, grants.get(namespace))
        return rows[namespace]

    for pod in pods:
        if pod_finished(pod):
            continue
        meta = pod.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        node_name = (pod.get("spec") or {}).get("nodeName")
        requests = pod_gpu_requests(pod)
        placeholder = bool(requests) and is_warm_placeholder(pod)
        arrived = (
            since is not None
            and not placeholder
            and _created_since(meta.get("creationTimestamp"), since, since_text)
        )
        if node_name:
            pool = pool_of_node.get(node_name)
            if requests:
                if pool is not None and pool.resource in requests:
                    node_rows[node_name].requested += requests[pool.resource]
                    node_rows[node_name].gpu_pods += 1
                    if placeholder:
                        figures.pools[pool.id].placeholder_gpus += requests[pool.resource]
                        continue
                    if arrived:
                        figures.pools[pool.id].new_pods[f"{namespace}/{name}"] = requests[pool.resource]
                    row = usage(pool.id, namespace)
                    row.gpus += requests[pool.resource]
                    row.pods += 1
            elif node_name in gpu_nodes and pool is not None and not allowed_on_gpu_nodes(pod):
                pool_figures = figures.pools[pool.id]
                pool_figures.non_gpu_pods += 1
                if len(pool_figures.non_gpu_pod_names) < LISTED_PODS:
                    pool_figures.non_gpu_pod_names.append(key_of(pod))
            continue
        if not requests:
            continue
        targets = pending_pod_pools(pod, requests, pools, pool_node_labels)
        if placeholder:
            for pool in targets:
                figures.pools[pool.id].placeholders_pending += 1
            continue
        if not targets:
            figures.unmatched_pending += 1
        waited = queue_wait_seconds(pod, now)
        gated = pod_scheduling_gated(pod)
        for pool in targets:
            pool_figures = figures.pools[pool.id]
            gpus = requests.get(pool.resource, sum(requests.values()))
            pool_figures.pods_pending += 1
            if gated:
                pool_figures.pods_waiting_quota += 1
            else:
                pool_figures.pods_waiting_node += 1
            if arrived:
                pool_figures.new_pods[f"{namespace}/{name}"] = gpus
            pool_figures.pending.append(
                PendingPod(namespace, name, gpus, waited, pod_unschedulable_reason(pod))
            )
            row = usage(pool.id, namespace)
            row.pending_pods += 1
            row.pending_gpus += gpus

    for pool_figures in figures.pools.values():
        pool_figures.nodes.sort(key=lambda n: n.name)
        pool_figures.pending.sort(key=lambda p: (-p.wait_seconds, p.namespace, p.name))
        del pool_figures.pending[LISTED_PODS:]
    figures.unpooled_gpu_nodes.sort()
    return figures


def _namespace_usage(namespace: str, grant: GrantSpec | None) -> NamespaceUsage:
    if grant is None:
        return NamespaceUsage(namespace=namespace)
    return NamespaceUsage(
        namespace=namespace,
        team_id=grant.team_id,
        team=grant.team,
        grant_id=grant.grant_id,
        granted=grant.gpus,
    )
