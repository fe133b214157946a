"""Pool utilisation figures, computed from what a cluster reports.

Pure functions over node and pod dicts exactly as the apiserver serves them (camelCase JSON) and
plain descriptions of the portal's pools and grants. No database and no Kubernetes client: the
collector feeds these functions from its watch caches, the tests from hand-made topologies.

Definitions (docs/utilisation.md explains them for users):
- A pod holds GPUs of a node when it is bound to it (spec.nodeName) and not Succeeded/Failed; what
  it holds is the scheduler's effective request: max(largest init container, sum of containers),
  with restartable init containers (sidecars) counted alongside the containers, plus pod overhead.
- A node is *schedulable* when it is Ready and not cordoned; only schedulable nodes have free GPUs.
- Fragmentation: free GPUs on partly used schedulable nodes are *stranded* (a pod needing a whole
  node cannot use them); the *largest free block* is the most GPUs one new pod could still get.
- A GPU pod is *pending* while it is not bound to a node; its queue wait runs from its creation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

Json = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
ZONE_LABEL = "topology.kubernetes.io/zone"
# How many pods a figure keeps by name (pending pods, non-GPU pods on GPU nodes); the counts stay exact.
LISTED_PODS = 50


def is_gpu_resource(name: str) -> bool:
    return name == GPU_RESOURCE or name.startswith(MIG_RESOURCE_PREFIX)


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
        """An interactive pool has fewer free GPUs than its warm buffer."""
        return self.interactive and self.gpus_free < self.headroom

    def totals(self) -> dict[str, int | float]:
        return {
            "nodes_total": self.nodes_total,
            "nodes_ready": self.nodes_ready,
            "nodes_cordoned": self.nodes_cordoned,
            "nodes_fully_free": self.nodes_fully_free,
            "gpus_allocatable": self.gpus_allocatable,
            "gpus_requested": self.gpus_requested,
            "gpus_free": self.gpus_free,
            "gpus_stranded": self.gpus_stranded,
            "largest_free_block": self.largest_free_block,
            "pods_pending": self.pods_pending,
            "queue_wait_max_seconds": self.queue_wait_max_seconds,
            "non_gpu_pods": self.non_gpu_pods,
        }


@dataclass
class ClusterFigures:
    pools: dict[int, PoolFigures]
    # GPU nodes that no pool's selector matches: capacity the portal does not offer.
    unpooled_gpu_nodes: list[str] = field(default_factory=list)
    # Pending GPU pods that target no known pool.
    unmatched_pending: int = 0


# ----------------------------------------------------------------------------------------------
# Parsing helpers


_QUANTITY_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(10) ** (3 * i) for i, s in enumerate("kMGTPE", start=1)},
    **{f"{s}i": Decimal(2) ** (10 * i) for i, s in enumerate("KMGTPE", start=1)},
}


def quantity(value: object) -> Decimal:
    """A Kubernetes quantity ("8", "500m", "1Ki"); 0 for anything unreadable, so one malformed pod
    cannot stop the figures of a whole cluster. Parsed here rather than with the client library's
    parser because only pools/kube imports the client."""
    text = str(value).strip()
    number = text.rstrip("kmMGTPEKi")
    try:
        return Decimal(number) * _QUANTITY_SUFFIXES[text[len(number) :]]
    except (InvalidOperation, KeyError):
        return Decimal(0)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def node_ready(node: Json) -> bool:
    for condition in node.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def node_gpu_allocatable(node: Json) -> dict[str, int]:
    allocatable = node.get("status", {}).get("allocatable") or {}
    return {name: int(quantity(v)) for name, v in allocatable.items() if is_gpu_resource(name)}


def _container_requests(container: Json) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    # Extended resources cannot be overcommitted: a request, when given, equals the limit, and the
    # apiserver copies a lone limit into the request. Hand-written specs often carry only limits.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: quantity(v) for name, v in merged.items() if is_gpu_resource(name)}


def pod_gpu_requests(pod: Json) -> dict[str, int]:
    """The GPU resources the scheduler reserves for `pod`, by resource name."""
    spec = pod.get("spec") or {}
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for container in spec.get("containers") or []:
        for name, value in _container_requests(container).items():
            totals[name] += value
    # Init containers run one after another, each next to the sidecars started before it; sidecars
    # (restartPolicy Always) then keep running next to the containers.
    sidecars: dict[str, Decimal] = defaultdict(Decimal)
    init_peak: dict[str, Decimal] = defaultdict(Decimal)
    for container in spec.get("initContainers") or []:
        requests = _container_requests(container)
        if container.get("restartPolicy") == "Always":
            for name, value in requests.items():
                sidecars[name] += value
                init_peak[name] = max(init_peak[name], sidecars[name])
        else:
            for name, value in requests.items():
                init_peak[name] = max(init_peak[name], value + sidecars[name])
    result: dict[str, int] = {}
    overhead = {k: quantity(v) for k, v in (spec.get("overhead") or {}).items() if is_gpu_resource(k)}
    for name in set(totals) | set(init_peak) | set(sidecars) | set(overhead):
        value = max(totals[name] + sidecars[name], init_peak[name]) + overhead.get(name, Decimal(0))
        if value > 0:
            result[name] = int(value)
    return result


def _pod_name(pod: Json) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def _unschedulable_reason(pod: Json) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("reason") or ""
    return ""


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


def _expression_matches(expression: Json, labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if operator == "Gt" else have < want
    return False


def _required_terms(pod: Json) -> list[list[Json]]:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return [term.get("matchExpressions") or [] for term in required.get("nodeSelectorTerms") or []]


def pod_selects(pod: Json, labels: Mapping[str, str], keys: frozenset[str] | None = None) -> bool:
    """Whether a node with `labels` satisfies the pod's nodeSelector and required node affinity,
    judging only constraints on `keys` when given."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    for key, value in selector.items():
        if (keys is None or key in keys) and labels.get(key) != value:
            return False
    terms = _required_terms(pod)
    if not terms:
        return True
    # Terms are ORed, expressions inside a term ANDed.
    return any(
        all(_expression_matches(e, labels) for e in term if keys is None or e.get("key") in keys)
        for term in terms
    )


def _constrained_keys(pod: Json) -> set[str]:
    keys = set(((pod.get("spec") or {}).get("nodeSelector") or {}).keys())
    for term in _required_terms(pod):
        keys |= {e.get("key", "") for e in term}
    return keys


def node_pool(node: Json, pools: Sequence[PoolSpec]) -> PoolSpec | None:
    """The pool whose selector the node satisfies; the most specific selector wins an overlap."""
    labels = (node.get("metadata") or {}).get("labels") or {}
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
    constrained = _constrained_keys(pod)
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
) -> ClusterFigures:
    """Per-pool figures of one cluster. `grants` maps namespace -> grant; `allowed_on_gpu_nodes`
    tells the GPU-operation daemons (device plugin, DCGM exporter...) that belong on GPU nodes."""
    figures = ClusterFigures(
        pools={p.id: PoolFigures(pool_id=p.id, headroom=p.headroom, interactive=p.interactive) for p in pools}
    )
    pool_of_node: dict[str, PoolSpec] = {}
    gpu_nodes: set[str] = set()
    node_rows: dict[str, NodeFigures] = {}
    pool_node_labels: dict[int, list[Mapping[str, str]]] = defaultdict(list)
    for node in nodes:
        meta = node.get("metadata") or {}
        name, labels = meta.get("name", ""), meta.get("labels") or {}
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
            cordoned=bool((node.get("spec") or {}).get("unschedulable")),
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
        status = pod.get("status") or {}
        if status.get("phase") in TERMINAL_PHASES:
            continue
        namespace, name = _pod_name(pod)
        node_name = (pod.get("spec") or {}).get("nodeName")
        requests = pod_gpu_requests(pod)
        if node_name:
            pool = pool_of_node.get(node_name)
            if requests:
                if pool is not None and pool.resource in requests:
                    node_rows[node_name].requested += requests[pool.resource]
                    node_rows[node_name].gpu_pods += 1
                    row = usage(pool.id, namespace)
                    row.gpus += requests[pool.resource]
                    row.pods += 1
            elif node_name in gpu_nodes and pool is not None and not allowed_on_gpu_nodes(pod):
                pool_figures = figures.pools[pool.id]
                pool_figures.non_gpu_pods += 1
                if len(pool_figures.non_gpu_pod_names) < LISTED_PODS:
                    pool_figures.non_gpu_pod_names.append(f"{namespace}/{name}")
            continue
        if not requests:
            continue
        targets = pending_pod_pools(pod, requests, pools, pool_node_labels)
        if not targets:
            figures.unmatched_pending += 1
        waited = queue_wait_seconds(pod, now)
        for pool in targets:
            pool_figures = figures.pools[pool.id]
            gpus = requests.get(pool.resource, sum(requests.values()))
            pool_figures.pods_pending += 1
            pool_figures.pending.append(PendingPod(namespace, name, gpus, waited, _unschedulable_reason(pod)))
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
