"""Node groups: what a cluster's autoscaler can add, read from Karpenter NodePools (and NodeClaims) or
from cluster-autoscaler node groups declared in its node-template tag vocabulary.

Pure functions over objects as the apiserver serves them (camelCase dicts) and plain data, like
discovery.py next door: no client, no Django. They answer four questions the portal asks of an
elastic pool without needing a node to exist:

- which node groups can make nodes that a pool's selector picks (the template's labels and
  requirements), and why each other group cannot (the design document's failure mode "node selectors
  do not match any node group", named with the groups' own names and labels);
- whether those nodes would carry the pool's taint, and no taint its pods do not tolerate;
- whether the group's instance types offer the accelerator's resource, and how many units per node;
- how many units the group may hold at most (its limit): an elastic pool's capacity.

`inventory_document` turns the live objects into the plain document the collector keeps for the
approval pre-flight (`preflight_refusal`), so an approval reads that document instead of the cluster.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from pools.kube.discovery import AcceleratorSpec, DiscoveredPool, Inventory, node_accelerator
from pools.kube.objects import (
    AWS_GPU_COUNT_LABEL,
    CA_TEMPLATE_LABEL,
    CA_TEMPLATE_RESOURCE,
    CA_TEMPLATE_TAINT,
    GPU_COUNT_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    HOSTNAME_LABEL,
    INSTANCE_TYPE_LABEL,
    MIG_RESOURCE_PREFIX,
    NODEPOOL_LABEL,
    POOL_CLASS_LABEL,
    POOL_LABEL,
    REPELLING_EFFECTS,
    WELL_KNOWN_NODE_LABELS,
    ZONE_LABEL,
    condition_of,
    expression_matches,
    is_gpu_resource,
    labels_of,
    name_of,
    node_cordoned,
    node_gpu_allocatable,
    node_ready,
    node_taints,
    parse_time,
    quantity,
    selector_text,
    taint_text,
)

Json = dict[str, Any]

KARPENTER = "karpenter"
CLUSTER_AUTOSCALER = "cluster-autoscaler"
KIND_NAMES = {KARPENTER: "NodePool", CLUSTER_AUTOSCALER: "node group"}


# ----------------------------------------------------------------------------------------------
# The node group, as plain data


@dataclass(frozen=True)
class NodeGroup:
    """What one node group would make: its template and its bounds."""

    name: str
    kind: str  # KARPENTER or CLUSTER_AUTOSCALER
    labels: dict[str, str]  # template labels every node gets
    requirements: list[Json]  # {key, operator, values}: labels a node gets one value of
    taints: list[dict[str, str]]  # template taints (startup taints, removed after start, excluded)
    instance_types: list[str]  # empty: any the provider offers
    # GPU resources per node by instance type ("" when the group names none), e.g. {"p5.48xlarge":
    # {"nvidia.com/gpu": 8}}; a type missing here is one the portal knows nothing about.
    resources: dict[str, dict[str, int]]
    limits: dict[str, int]  # resource -> most units all its nodes together may have (Karpenter)
    zones: list[str]
    min_nodes: int | None = None  # cluster-autoscaler bounds
    max_nodes: int | None = None
    # The group's own verdict (Karpenter's NodePool Ready condition); None when it gives none.
    ready: bool | None = None
    message: str = ""

    @property
    def title(self) -> str:
        return f"{KIND_NAMES.get(self.kind, 'node group')} {self.name}"

    def to_json(self) -> Json:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeGroup:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def units_per_node(self, resource: str) -> int:
        """The most units of `resource` one node of the group can have."""
        return max((r.get(resource, 0) for r in self.resources.values()), default=0)

    def unknown_instance_types(self) -> list[str]:
        return sorted(t for t in self.instance_types if t not in self.resources)

    def capacity(self, resource: str) -> int | None:
        """Most units of `resource` the group may hold: its limit, else max nodes x units per node;
        None when nothing bounds it."""
        if resource in self.limits:
            return self.limits[resource]
        per_node = self.units_per_node(resource)
        if self.max_nodes is not None and per_node:
            return self.max_nodes * per_node
        return None

    def label_values(self, key: str) -> list[str] | None:
        """The values a node of this group can have for label `key`: [v] for a template label, the
        requirement's values for In; None when the group says nothing about the key."""
        if key in self.labels:
            return [self.labels[key]]
        if key == NODEPOOL_LABEL and self.kind == KARPENTER:
            return [self.name]
        for requirement in self.requirements:
            if requirement.get("key") == key and requirement.get("operator") == "In":
                return list(requirement.get("values") or [])
        return None


# ----------------------------------------------------------------------------------------------
# Reading node groups from the cluster's objects


def _int(value: object) -> int:
    try:
        return int(quantity(value))
    except (ValueError, ArithmeticError):
        return 0


def _gpu_resources(resources: Mapping[str, Any]) -> dict[str, int]:
    return {k: _int(v) for k, v in resources.items() if is_gpu_resource(k) and _int(v) > 0}


def observed_instance_types(
    nodes: Iterable[Json], nodeclaims: Iterable[Json] = ()
) -> dict[str, dict[str, int]]:
    """Instance type -> the GPU resources its nodes (and Karpenter's NodeClaims) really report: the
    truest source, once a node of the type has existed."""
    seen: dict[str, dict[str, int]] = {}
    for node in nodes:
        kind = labels_of(node).get(INSTANCE_TYPE_LABEL)
        gpus = node_gpu_allocatable(node)
        if kind and any(gpus.values()):
            seen[kind] = {k: v for k, v in gpus.items() if v}
    for claim in nodeclaims:
        kind = labels_of(claim).get(INSTANCE_TYPE_LABEL)
        gpus = _gpu_resources((claim.get("status") or {}).get("allocatable") or {})
        if kind and gpus and kind not in seen:
            seen[kind] = gpus
    return seen


def _template_gpus(labels: Mapping[str, str], requirements: Sequence[Json]) -> dict[str, int]:
    """GPUs a template states itself: GPU Feature Discovery count labels (`nvidia.com/gpu.count`,
    `nvidia.com/mig-<profile>.count`) or Karpenter AWS's instance-gpu-count requirement."""
    found: dict[str, int] = {}
    for key, value in labels.items():
        if key == GPU_COUNT_LABEL:
            found[GPU_RESOURCE] = _int(value)
        elif key.startswith(MIG_RESOURCE_PREFIX) and key.endswith(".count"):
            found[key.removesuffix(".count")] = _int(value)
    mig = {k for k in found if k.startswith(MIG_RESOURCE_PREFIX)}
    if mig:
        # A MIG node (mixed strategy) advertises the slices, not whole GPUs.
        found.pop(GPU_RESOURCE, None)
    if not found:
        for requirement in requirements:
            values = requirement.get("values") or []
            if (
                requirement.get("key") == AWS_GPU_COUNT_LABEL
                and requirement.get("operator") == "In"
                and values
            ):
                found[GPU_RESOURCE] = min(_int(v) for v in values)
    return {k: v for k, v in found.items() if v > 0}


def _requirement(requirement: Json) -> Json:
    return {
        "key": requirement.get("key", ""),
        "operator": requirement.get("operator", ""),
        "values": [str(v) for v in requirement.get("values") or []],
    }


def _taint(taint: Mapping[str, Any]) -> dict[str, str]:
    return {
        "key": taint.get("key", ""),
        "value": str(taint.get("value") or ""),
        "effect": taint.get("effect", ""),
    }


def nodegroup_from_nodepool(
    nodepool: Json, instance_types: Mapping[str, Mapping[str, int]] | None = None
) -> NodeGroup:
    """A Karpenter NodePool as a node group. `instance_types` gives the GPU resources per instance
    type the portal knows (observed nodes first, then the configured catalogue); the template's own
    GPU labels count for the types it does not know."""
    spec = nodepool.get("spec") or {}
    template = spec.get("template") or {}
    tmeta, tspec = template.get("metadata") or {}, template.get("spec") or {}
    labels = {str(k): str(v) for k, v in (tmeta.get("labels") or {}).items()}
    requirements = [_requirement(r) for r in tspec.get("requirements") or []]
    types: list[str] = []
    zones: list[str] = []
    for requirement in requirements:
        if requirement["operator"] != "In":
            continue
        if requirement["key"] == INSTANCE_TYPE_LABEL:
            types = sorted(requirement["values"])
        elif requirement["key"] == ZONE_LABEL:
            zones = sorted(requirement["values"])
    if INSTANCE_TYPE_LABEL in labels:
        types = [labels[INSTANCE_TYPE_LABEL]]
    if ZONE_LABEL in labels:
        zones = [labels[ZONE_LABEL]]
    known = instance_types or {}
    stated = _template_gpus(labels, requirements)
    resources: dict[str, dict[str, int]] = {}
    for kind in types or [""]:
        if kind in known:
            resources[kind] = {k: int(v) for k, v in known[kind].items() if v}
        elif stated:
            resources[kind] = dict(stated)
    # Unknown (Karpenter has not looked yet) is no verdict; only an explicit False stops launches.
    status = (condition_of(nodepool, "Ready") or {}).get("status")
    verdict = {"True": True, "False": False}.get(status or "")
    ready = condition_of(nodepool, "Ready") or {}
    return NodeGroup(
        name=name_of(nodepool),
        kind=KARPENTER,
        labels=labels,
        requirements=requirements,
        taints=[_taint(t) for t in tspec.get("taints") or []],
        instance_types=types,
        resources=resources,
        limits={k: _int(v) for k, v in (spec.get("limits") or {}).items()},
        zones=zones,
        ready=verdict,
        message=(ready.get("message") or ready.get("reason") or "") if verdict is False else "",
    )


def nodegroup_from_autoscaler(name: str, declaration: Mapping[str, Any]) -> NodeGroup:
    """A cluster-autoscaler node group, declared the way its cloud node group is tagged for scale from
    zero: `{"minSize": 0, "maxSize": 4, "instanceType": "p5.48xlarge", "tags": {
    "k8s.io/cluster-autoscaler/node-template/label/<key>": "<value>",
    "k8s.io/cluster-autoscaler/node-template/taint/<key>": "<value>:<Effect>",
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu": "8"}, "zones": [...]}`."""
    tags = {str(k): str(v) for k, v in (declaration.get("tags") or {}).items()}
    labels = {
        k.removeprefix(CA_TEMPLATE_LABEL): v for k, v in tags.items() if k.startswith(CA_TEMPLATE_LABEL)
    }
    taints = []
    for key, text in tags.items():
        if key.startswith(CA_TEMPLATE_TAINT):
            value, _, effect = text.rpartition(":")
            taints.append({"key": key.removeprefix(CA_TEMPLATE_TAINT), "value": value, "effect": effect})
    declared = _gpu_resources(
        {
            k.removeprefix(CA_TEMPLATE_RESOURCE): v
            for k, v in tags.items()
            if k.startswith(CA_TEMPLATE_RESOURCE)
        }
    )
    kind = str(declaration.get("instanceType") or labels.get(INSTANCE_TYPE_LABEL, ""))
    gpus = declared or _template_gpus(labels, [])
    zones = [
        str(z) for z in declaration.get("zones") or ([labels[ZONE_LABEL]] if ZONE_LABEL in labels else [])
    ]

    def bound(key: str) -> int | None:
        value = declaration.get(key)
        return None if value in (None, "") else _int(value)

    return NodeGroup(
        name=name,
        kind=CLUSTER_AUTOSCALER,
        labels=labels,
        requirements=[],
        taints=sorted(taints, key=lambda t: (t["key"], t["effect"])),
        instance_types=[kind] if kind else [],
        resources={kind: gpus} if gpus else {},
        limits={},
        zones=sorted(zones),
        min_nodes=bound("minSize"),
        max_nodes=bound("maxSize"),
    )


# ----------------------------------------------------------------------------------------------
# Does a group make nodes a pool's selector picks, with the pool's taint and its resource?


def selector_mismatch(group: NodeGroup, selector: Mapping[str, str]) -> str | None:
    """Why no node of `group` can carry the labels of `selector`, or None when one can."""
    for key, wanted in sorted(selector.items()):
        if key in group.labels:
            if group.labels[key] != wanted:
                return f"{key}={group.labels[key]}"
            continue
        if key == NODEPOOL_LABEL and group.kind == KARPENTER:
            if wanted != group.name:
                return f"{key}={group.name}"
            continue
        rules = [r for r in group.requirements if r.get("key") == key]
        if rules:
            # Requirements are ANDed; a node takes one value that satisfies them all.
            if not all(expression_matches(r, {key: wanted}) for r in rules):
                allowed = next((r for r in rules if not expression_matches(r, {key: wanted})), rules[0])
                values = ", ".join(allowed.get("values") or [])
                return f"{key} {allowed.get('operator')} [{values}]"
            continue
        if key in WELL_KNOWN_NODE_LABELS and key != HOSTNAME_LABEL:
            continue  # set from the instance type or its offering; unconstrained here
        return f"no {key} label"
    return None


def taint_problem(group: NodeGroup, pool_taint: Mapping[str, str]) -> str | None:
    """Why the group's nodes would break the pool's contract: without the pool's taint any workload
    could land on them; with a taint the pool's pods do not tolerate, none of them can."""
    tolerated = {(pool_taint["key"], pool_taint.get("value") or "", pool_taint["effect"])}
    tolerated.add((GPU_TAINT["key"], GPU_TAINT["value"], GPU_TAINT["effect"]))
    if not any(
        (t["key"], t["value"], t["effect"])
        == (pool_taint["key"], pool_taint.get("value") or "", pool_taint["effect"])
        for t in group.taints
    ):
        return (
            f"its template lacks the pool taint {taint_text(pool_taint)}, so any workload could land "
            "on its nodes"
        )
    foreign = [
        t
        for t in group.taints
        if t["effect"] in REPELLING_EFFECTS and (t["key"], t["value"], t["effect"]) not in tolerated
    ]
    if foreign:
        return (
            "its nodes carry "
            + ", ".join(taint_text(t) for t in foreign)
            + ", which granted workloads do not tolerate"
        )
    return None


def resource_problem(group: NodeGroup, resource: str) -> str | None:
    """Why the group's instance types would not give the pool's pods their accelerator."""
    if group.units_per_node(resource) > 0:
        if group.limits.get(resource, 1) == 0 or group.max_nodes == 0:
            return f"its limit allows no {resource} at all"
        return None
    unknown = group.unknown_instance_types()
    if unknown or not group.resources:
        types = ", ".join(unknown) or "(none named)"
        return (
            f"the portal does not know what its instance types {types} offer; add them to "
            "PORTAL_INSTANCE_TYPES or label the template with nvidia.com/gpu.count"
        )
    offered = sorted({k for r in group.resources.values() for k in r})
    types = ", ".join(group.instance_types) or "(any)"
    return f"its instance types {types} offer {', '.join(offered) or 'no GPU'}, not {resource}"


def group_problem(group: NodeGroup, *, taint: Mapping[str, str], resource: str) -> str | None:
    """Everything that keeps a group that matches a pool's selector from serving it, or None."""
    if group.ready is False:
        return f"it is not Ready ({group.message or 'no reason given'})"
    return taint_problem(group, taint) or resource_problem(group, resource)


def groups_for(groups: Iterable[NodeGroup], selector: Mapping[str, str]) -> list[NodeGroup]:
    return [g for g in groups if selector and selector_mismatch(g, selector) is None]


def missing_gpu_taint(group: NodeGroup) -> bool:
    """A GPU node group whose nodes would lack the GPU taint (the conformance report flags it)."""
    gpus = any(group.resources.values()) or any(k.startswith("nvidia.com/") for k in group.labels)
    return gpus and not any(
        (t["key"], t["value"], t["effect"]) == (GPU_TAINT["key"], GPU_TAINT["value"], GPU_TAINT["effect"])
        for t in group.taints
    )


# ----------------------------------------------------------------------------------------------
# The collector's inventory: nodes summarised, node groups, claims in flight


# A node's labels unique to it: left out of the summary's grouping (the names stand for them).
_PER_NODE_LABELS = frozenset({HOSTNAME_LABEL})


def node_summary(nodes: Iterable[Json]) -> list[Json]:
    """Nodes grouped by everything the pre-flight reads (labels but the hostname, taints, Ready,
    cordoned, GPU allocatable), each group with the names of its nodes. Thousands of nodes of a few
    shapes stay a few entries, and the document only changes when one of those facts does."""
    groups: dict[str, Json] = {}
    for node in nodes:
        labels = {k: v for k, v in labels_of(node).items() if k not in _PER_NODE_LABELS}
        taints = sorted(
            (_taint(t) for t in node_taints(node)), key=lambda t: (t["key"], t["value"], t["effect"])
        )
        entry = {
            "labels": dict(sorted(labels.items())),
            "taints": taints,
            "ready": node_ready(node),
            "cordoned": node_cordoned(node),
            "gpus": dict(sorted(node_gpu_allocatable(node).items())),
        }
        key = repr(sorted(entry.items()))
        groups.setdefault(key, {**entry, "names": []})["names"].append(name_of(node))
    summary = list(groups.values())
    for entry in summary:
        entry["names"].sort()
    return sorted(summary, key=lambda e: e["names"][0])


def _claim_time(claim: Json, kind: str) -> datetime | None:
    condition = condition_of(claim, kind)
    if condition is None or condition.get("status") != "True":
        return None
    return parse_time(condition.get("lastTransitionTime"))


@dataclass(frozen=True)
class ClaimState:
    """A Karpenter NodeClaim: a node being (or having been) brought up."""

    name: str
    nodepool: str
    instance_type: str
    created_at: datetime | None
    initialized_at: datetime | None
    node: str

    @property
    def provisioning(self) -> bool:
        return self.initialized_at is None

    @property
    def bringup_seconds(self) -> float | None:
        """Time to node: from the claim's creation (a pending pod asked for it) until Karpenter calls it
        Initialized (the node is Ready and its GPUs are registered)."""
        if self.created_at is None or self.initialized_at is None:
            return None
        return max(0.0, (self.initialized_at - self.created_at).total_seconds())


def claim_state(claim: Json) -> ClaimState:
    meta = claim.get("metadata") or {}
    labels = labels_of(claim)
    return ClaimState(
        name=name_of(claim),
        nodepool=labels.get(NODEPOOL_LABEL, ""),
        instance_type=labels.get(INSTANCE_TYPE_LABEL, ""),
        created_at=parse_time(meta.get("creationTimestamp")),
        initialized_at=_claim_time(claim, "Initialized"),
        node=(claim.get("status") or {}).get("nodeName") or "",
    )


def inventory_document(
    *,
    nodes: Iterable[Json],
    nodepools: Iterable[Json] = (),
    nodeclaims: Iterable[Json] = (),
    declared: Mapping[str, Mapping[str, Any]] | None = None,
    instance_catalogue: Mapping[str, Mapping[str, int]] | None = None,
) -> Json:
    """The plain document the approval pre-flight reads: the nodes summarised, every node group with
    its template, and per group the nodes it has now and the claims still being brought up."""
    nodes = list(nodes)
    claims = list(nodeclaims)
    known = {**(instance_catalogue or {}), **observed_instance_types(nodes, claims)}
    groups = [nodegroup_from_nodepool(p, known) for p in nodepools]
    groups += [nodegroup_from_autoscaler(name, spec) for name, spec in sorted((declared or {}).items())]
    members: dict[str, list[Json]] = defaultdict(list)
    for node in nodes:
        owner = labels_of(node).get(NODEPOOL_LABEL)
        if owner:
            members[owner].append(node)
    in_flight: dict[str, int] = defaultdict(int)
    for claim in claims:
        state = claim_state(claim)
        if state.provisioning:
            in_flight[state.nodepool] += 1
    return {
        "nodes": node_summary(nodes),
        "node_groups": [
            {
                **g.to_json(),
                "nodes": len(members.get(g.name, [])) if g.kind == KARPENTER else None,
                "nodes_ready": sum(node_ready(n) for n in members.get(g.name, []))
                if g.kind == KARPENTER
                else None,
                "provisioning": in_flight.get(g.name, 0),
            }
            for g in sorted(groups, key=lambda g: (g.kind, g.name))
        ],
    }


def groups_of(document: Mapping[str, Any]) -> list[NodeGroup]:
    return [NodeGroup.from_json(g) for g in document.get("node_groups") or []]


# ----------------------------------------------------------------------------------------------
# The approval pre-flight, over the collector's document


@dataclass(frozen=True)
class PoolAsk:
    """What the pre-flight needs of a pool."""

    title: str  # cluster/pool, as messages name it
    cluster: str
    selector: Mapping[str, str]
    taint: Mapping[str, str]
    resource: str


def _summary_matches(entry: Json, selector: Mapping[str, str]) -> list[str]:
    """Names of the summarised nodes of `entry` the selector picks."""
    labels = entry.get("labels") or {}
    rest = {k: v for k, v in selector.items() if k != HOSTNAME_LABEL}
    if any(labels.get(k) != v for k, v in rest.items()):
        return []
    names = entry.get("names") or []
    if HOSTNAME_LABEL in selector:
        return [n for n in names if n == selector[HOSTNAME_LABEL]]
    return list(names)


def _carries(entry: Json, taint: Mapping[str, str]) -> bool:
    return any(
        t.get("key") == taint["key"]
        and (t.get("value") or "") == (taint.get("value") or "")
        and t.get("effect") == taint["effect"]
        for t in entry.get("taints") or []
    )


def _listed(names: list[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _group_labels(group: NodeGroup, keys: Collection[str]) -> str:
    """The group's labels that decide, for a message: the selector's keys first, then its pool labels."""
    shown = []
    for key in [*sorted(keys), POOL_LABEL, POOL_CLASS_LABEL]:
        if any(s.startswith(f"{key}") for s in shown):
            continue
        values = group.label_values(key)
        if values is None:
            if key in keys:
                shown.append(f"{key} unset")
        elif len(values) == 1:
            shown.append(f"{key}={values[0]}")
        else:
            shown.append(f"{key} in [{', '.join(values)}]")
    return ", ".join(dict.fromkeys(shown))


def preflight_refusal(ask: PoolAsk, document: Mapping[str, Any]) -> str | None:
    """Why work granted on the pool could not run on its cluster, judged from the collector's
    inventory document, or None.

    Nodes first (a Ready node matching the selector, carrying the pool taint and advertising the
    resource is enough); without one, a node group whose template satisfies the selector, carries the
    pool taint and no taint the pool's pods do not tolerate, and whose instance types offer the
    resource is enough too: a pool that scales from zero can be granted. A Ready node without the pool
    taint refuses in any case: any workload could land on it.
    """
    selector = dict(ask.selector)
    where = f"cluster {ask.cluster}"
    sel = selector_text(selector)
    matching: list[tuple[Json, list[str]]] = []
    for entry in document.get("nodes") or []:
        names = _summary_matches(entry, selector)
        if names:
            matching.append((entry, names))
    schedulable = [(e, n) for e, n in matching if e.get("ready") and not e.get("cordoned")]
    untainted = [name for e, names in schedulable if not _carries(e, ask.taint) for name in names]
    if untainted:
        return (
            f"Pool {ask.title}: Ready nodes {_listed(untainted)} lack the pool taint "
            f"{ask.taint['key']}={ask.taint.get('value', '')}:{ask.taint['effect']}, so any workload "
            "could land on them. Taint them before granting the pool."
        )
    if any((e.get("gpus") or {}).get(ask.resource, 0) > 0 for e, _ in schedulable):
        return None

    groups = groups_of(document)
    candidates = groups_for(groups, selector)
    problems = {g.title: group_problem(g, taint=ask.taint, resource=ask.resource) for g in candidates}
    if candidates and any(p is None for p in problems.values()):
        return None
    if candidates:
        listed = "; ".join(f"{title}: {why}" for title, why in problems.items())
        return (
            f"Pool {ask.title}: no Ready node of {where} serves it, and the node groups that match its "
            f"selector {sel} cannot either ({listed})."
        )

    nodes = sum(len(n) for _, n in matching)
    if groups:
        others = "; ".join(f"{g.title} makes nodes with {_group_labels(g, selector)}" for g in groups)
        no_group = (
            f", and no node group can make one: {others}. Fix the pool's node selector or add a node "
            f"group whose template carries {sel}."
        )
    else:
        no_group = ""
    if not matching:
        return (
            f"Pool {ask.title}: no node of {where} matches its selector {sel}, so granted workloads would "
            + (
                f"stay Pending{no_group}"
                if groups
                else "stay Pending. Fix the pool's node selector or add nodes first."
            )
        )
    if not schedulable:
        return f"Pool {ask.title}: none of the {nodes} nodes matching {sel} is Ready and schedulable" + (
            no_group or "."
        )
    return f"Pool {ask.title}: no Ready node advertises {ask.resource}; is the device plugin running?"


# ----------------------------------------------------------------------------------------------
# Pools proposed from node groups (inventory sync)


def _pool_name(group: NodeGroup) -> str:
    values = group.label_values(POOL_LABEL)
    return values[0] if values and len(values) == 1 else ""


def _group_accelerator(group: NodeGroup) -> AcceleratorSpec | None:
    shapes = list(group.resources.values()) or [{}]
    allocatable = max(shapes, key=lambda r: sum(r.values()))
    return node_accelerator({"metadata": {"labels": group.labels}, "status": {"allocatable": allocatable}})


def discover_node_groups(
    groups: Iterable[NodeGroup], *, pool_classes: Collection[str], inventory: Inventory | None = None
) -> Inventory:
    """Merge pools made by node groups into `inventory` (from the nodes; a new one without): a group
    whose template carries the pool label proposes that pool even with no node yet. An elastic pool's
    capacity is what its node groups may hold (their limits), not the nodes that exist now; the nodes
    keep their accelerator and zones. Groups that name no pool or no offered class are skipped."""
    inventory = inventory or Inventory()
    by_pool: dict[str, list[NodeGroup]] = defaultdict(list)
    for group in groups:
        name = _pool_name(group)
        if not name:
            if any(group.resources.values()):
                inventory.warnings.append(
                    f"{group.title} makes GPU nodes but its template names no {POOL_LABEL}; "
                    "no pool is proposed for it"
                )
            continue
        by_pool[name].append(group)
    for name, members in sorted(by_pool.items()):
        classes = {(g.label_values(POOL_CLASS_LABEL) or [""])[0] for g in members}
        if len(classes) > 1 or not classes <= set(pool_classes):
            inventory.skipped.setdefault(
                name,
                f"node groups {', '.join(g.name for g in members)} give {POOL_CLASS_LABEL} "
                f"{', '.join(sorted(classes)) or 'none'}, not one class the portal offers",
            )
            continue
        accelerators = {_group_accelerator(g) for g in members}
        found = inventory.pool(name)
        if found is not None:
            accelerators.add(found.accelerator)
        accelerators.discard(None)
        if len(accelerators) != 1:
            inventory.skipped[name] = (
                "its node groups offer no GPU"
                if not accelerators
                else "its node groups and nodes mix accelerators: "
                + ", ".join(sorted(map(str, accelerators)))
            )
            if found is not None:
                inventory.pools.remove(found)
            continue
        accelerator = accelerators.pop()
        bounded = [g.capacity(accelerator.resource_name) for g in members]
        capacity = sum(c for c in bounded if c is not None)
        unbounded = [g.name for g, c in zip(members, bounded, strict=True) if c is None]
        if unbounded:
            inventory.warnings.append(
                f"pool {name}: node groups {', '.join(unbounded)} set no {accelerator.resource_name} limit "
                "(nor a maximum size); their capacity is not counted"
            )
        taint = next(
            (
                t
                for g in members
                for t in g.taints
                if t["key"] == POOL_LABEL and t["effect"] in REPELLING_EFFECTS
            ),
            None,
        )
        zones = sorted({z for g in members for z in g.zones} | set(found.zones if found else []))
        pool = DiscoveredPool(
            name=name,
            pool_class=classes.pop(),
            accelerator=accelerator,
            capacity=max(capacity, found.capacity if found else 0),
            zones=zones,
            nodes=found.nodes if found else [],
            node_selector={POOL_LABEL: name},
            taint=(found.taint if found and found.taint else taint),
            node_groups=sorted(g.name for g in members),
        )
        if found is not None:
            inventory.pools[inventory.pools.index(found)] = pool
        else:
            inventory.pools.append(pool)
        inventory.skipped.pop(name, None)
    inventory.pools.sort(key=lambda p: p.name)
    return inventory


def bringup_percentile(seconds: Sequence[float], pct: float = 95.0) -> float:
    """Nearest-rank percentile; 0 for no samples."""
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
