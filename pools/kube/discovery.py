"""Inventory: what node pools a cluster has, read from node labels, taints and allocatable resources.

Pure functions over node dicts as the apiserver returns them (camelCase JSON), so they are tested
without a cluster. Nodes are grouped by the `accelerator.platform.example.com/pool` label; a group
is proposed as a NodePool when its nodes carry GPUs (whole `nvidia.com/gpu`, or MIG slices
`nvidia.com/mig-<profile>`) of one accelerator and its pool-class label is one the portal offers.
"""

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pools.kube.objects import (
    GPU_MEMORY_LABEL,
    GPU_PRESENT_LABEL,
    GPU_RESOURCE,
    MEMORY_LABEL,
    MIG_PROFILE_LABEL,
    MIG_RESOURCE_PREFIX,
    POOL_CLASS_LABEL,
    POOL_LABEL,
    PRODUCT_LABEL,
    REPELLING_EFFECTS,
    TYPE_LABEL,
    carries_taint,
    gpu_resource_name,
    labels_of,
    name_of,
    node_allocatable,
    node_pool_label,
    node_taints,
    node_zone,
)

Node = dict[str, Any]


@dataclass(frozen=True)
class AcceleratorSpec:
    """One schedulable accelerator unit as nodes describe it: a whole GPU, or one MIG profile of it."""

    product: str
    type_label: str
    gpu_memory_gib: int
    mig_profile: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.product, self.mig_profile)

    @property
    def memory_gib(self) -> int:
        """Memory of one unit: the slice's for MIG (1g.10gb -> 10), the GPU's otherwise."""
        if self.mig_profile:
            size = self.mig_profile.split(".", 1)[-1].lower().removesuffix("gb")
            if size.isdigit():
                return int(size)
        return self.gpu_memory_gib

    @property
    def resource_name(self) -> str:
        return gpu_resource_name(self.mig_profile)

    @property
    def slug(self) -> str:
        # Same shape as the demo catalogue: a100-80gb, a100-40gb-mig-1g-10gb.
        model = self.type_label.removeprefix("nvidia-") or self.product.lower()
        base = f"{model}-{self.gpu_memory_gib}gb".lower().replace(".", "-").replace("_", "-")
        return f"{base}-mig-{self.mig_profile.replace('.', '-')}" if self.mig_profile else base

    @property
    def display_name(self) -> str:
        model = self.type_label.removeprefix("nvidia-").upper() or self.product
        name = f"NVIDIA {model} {self.gpu_memory_gib}GB"
        return f"{name} MIG {self.mig_profile}" if self.mig_profile else name

    def __str__(self) -> str:
        return f"{self.product} MIG {self.mig_profile}" if self.mig_profile else self.product


def _int(value: object) -> int:
    # Extended resources are whole numbers; anything else (a malformed value) counts as none.
    try:
        return int(str(value))
    except ValueError:
        return 0


def _mig_resources(node: Node) -> dict[str, int]:
    return {
        name.removeprefix(MIG_RESOURCE_PREFIX): _int(value)
        for name, value in node_allocatable(node).items()
        if name.startswith(MIG_RESOURCE_PREFIX)
    }


def is_gpu_node(node: Node) -> bool:
    """A node with GPUs: it advertises a GPU resource, or GPU Feature Discovery says one is present
    (a node whose device plugin is not up yet still needs the GPU taint)."""
    labels = labels_of(node)
    if labels.get(GPU_PRESENT_LABEL) == "true" or PRODUCT_LABEL in labels:
        return True
    return _int(node_allocatable(node).get(GPU_RESOURCE, 0)) > 0 or any(_mig_resources(node).values())


def node_accelerator(node: Node) -> AcceleratorSpec | None:
    """The accelerator unit a GPU node offers; None for a node without GPUs."""
    if not is_gpu_node(node):
        return None
    labels = labels_of(node)
    mig_profile = labels.get(MIG_PROFILE_LABEL, "")
    if not mig_profile:
        offered = [profile for profile, count in _mig_resources(node).items() if count > 0]
        mig_profile = offered[0] if len(offered) == 1 else ""
    memory = _int(labels.get(MEMORY_LABEL, 0)) or _int(labels.get(GPU_MEMORY_LABEL, 0)) // 1024
    return AcceleratorSpec(
        product=labels.get(PRODUCT_LABEL, "unknown"),
        type_label=labels.get(TYPE_LABEL, ""),
        gpu_memory_gib=memory,
        mig_profile=mig_profile,
    )


def node_units(node: Node, accelerator: AcceleratorSpec) -> int:
    return _int(node_allocatable(node).get(accelerator.resource_name, 0))


@dataclass
class DiscoveredPool:
    name: str
    pool_class: str
    accelerator: AcceleratorSpec
    capacity: int
    zones: list[str]
    nodes: list[str]
    node_selector: dict[str, str]
    # The pool taint most of its nodes carry; None when none does (the conformance report lists them).
    taint: dict[str, str] | None
    # The autoscaler's node groups that make its nodes (pools.kube.nodegroups); empty for a static pool.
    node_groups: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    pools: list[DiscoveredPool] = field(default_factory=list)
    # Groups that are not proposed, with the reason (no GPUs, unknown class, mixed accelerators...).
    skipped: dict[str, str] = field(default_factory=dict)
    # Things worth a look that do not stop a pool from being proposed.
    warnings: list[str] = field(default_factory=list)
    gpu_nodes: int = 0

    def pool(self, name: str) -> DiscoveredPool | None:
        return next((p for p in self.pools if p.name == name), None)


def _pool_taint(name: str, nodes: list[Node]) -> dict[str, str] | None:
    seen = Counter(
        (t.get("key", ""), t.get("value", ""), t.get("effect", ""))
        for node in nodes
        for t in node_taints(node)
        if t.get("key") == POOL_LABEL and t.get("effect") in REPELLING_EFFECTS
    )
    if not seen:
        return None
    # Prefer the taint whose value is the pool name, then the most common one.
    (key, value, effect), _ = max(seen.items(), key=lambda item: (item[0][1] == name, item[1]))
    return {"key": key, "value": value, "effect": effect}


def discover(nodes: list[Node], *, pool_classes: Collection[str]) -> Inventory:
    """Group `nodes` into proposed GPU pools of the classes the portal offers (`pool_classes`);
    deterministic (sorted by pool name)."""
    inventory = Inventory()
    groups: dict[str, list[Node]] = {}
    unpooled: list[str] = []
    for node in nodes:
        gpu = is_gpu_node(node)
        inventory.gpu_nodes += gpu
        pool = node_pool_label(node)
        if pool:
            groups.setdefault(pool, []).append(node)
        elif gpu:
            unpooled.append(name_of(node))
    if unpooled:
        inventory.warnings.append(
            f"{len(unpooled)} GPU node(s) have no {POOL_LABEL} label and belong to no pool: "
            + ", ".join(sorted(unpooled)[:10])
            + (" ..." if len(unpooled) > 10 else "")
        )

    for name in sorted(groups):
        members = sorted(groups[name], key=name_of)
        accelerators = Counter(node_accelerator(node) for node in members)
        if set(accelerators) == {None}:
            inventory.skipped[name] = "no GPUs"
            continue
        if len(accelerators) > 1:
            kinds = ", ".join(
                f"{acc or 'no GPU'} ({count} node{'s' if count > 1 else ''})"
                for acc, count in sorted(accelerators.items(), key=lambda item: str(item[0]))
            )
            inventory.skipped[name] = f"mixes accelerators: {kinds}"
            continue
        classes = {labels_of(node).get(POOL_CLASS_LABEL, "") for node in members}
        if len(classes) > 1:
            inventory.skipped[name] = f"nodes disagree on {POOL_CLASS_LABEL}: {', '.join(sorted(classes))}"
            continue
        pool_class = classes.pop()
        if pool_class not in pool_classes:
            inventory.skipped[name] = (
                f"{POOL_CLASS_LABEL}={pool_class!r} is not a class the portal offers "
                f"({', '.join(pool_classes)})"
            )
            continue
        accelerator = next(acc for acc in accelerators if acc is not None)
        taint = _pool_taint(name, members)
        untainted = [name_of(n) for n in members if not carries_taint(n, taint)] if taint else []
        if taint is None:
            inventory.warnings.append(f"pool {name}: no node carries a {POOL_LABEL} taint")
        elif untainted:
            inventory.warnings.append(f"pool {name}: {len(untainted)} node(s) lack the pool taint")
        inventory.pools.append(
            DiscoveredPool(
                name=name,
                pool_class=pool_class,
                accelerator=accelerator,
                capacity=sum(node_units(node, accelerator) for node in members),
                zones=sorted({node_zone(node) for node in members} - {""}),
                nodes=[name_of(node) for node in members],
                node_selector={POOL_LABEL: name},
                taint=taint,
            )
        )
    return inventory
