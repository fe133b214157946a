"""The scheduling-contract conformance report: the seed's failure modes, checked against live objects.

A pure function over node and pod dicts (as the apiserver returns them) and the portal's pool
records, so every rule is tested without a cluster. Rules:

- gpu-node-missing-pool-taint: a GPU node without its pool's taint takes any pod that asks for no GPU.
- non-gpu-pod-on-gpu-node: a running pod that requests no GPU sits on a GPU node (general workloads
  eating CPU and memory of inference nodes); the daemons GPUs need are allowlisted.
- pool-selector-matches-no-node: a pool whose node selector matches no node and no node group can
  never schedule (the design document's "node selectors do not match any node group").
- pool-mixes-accelerators: one pool with several accelerator kinds fragments and misplaces models.
- node-group-missing-gpu-taint: an autoscaler node group whose template lacks the GPU taint makes GPU
  nodes that take any pod asking for no GPU.
"""

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pools.kube.discovery import is_gpu_node, node_accelerator
from pools.kube.nodegroups import NodeGroup, groups_for, missing_gpu_taint
from pools.kube.objects import (
    GPU_TAINT,
    POOL_LABEL,
    carries_taint,
    has_repelling_taint,
    key_of,
    labels_match,
    labels_of,
    name_of,
    node_pool_label,
    pod_finished,
    pool_taint,
    requests_gpu,
    taint_text,
)

MISSING_POOL_TAINT = "gpu-node-missing-pool-taint"
NON_GPU_POD = "non-gpu-pod-on-gpu-node"
SELECTOR_MATCHES_NOTHING = "pool-selector-matches-no-node"
MIXED_ACCELERATORS = "pool-mixes-accelerators"
GROUP_MISSING_GPU_TAINT = "node-group-missing-gpu-taint"
RULES = {
    MISSING_POOL_TAINT: "GPU node without its pool taint",
    NON_GPU_POD: "Pod without a GPU request on a GPU node",
    SELECTOR_MATCHES_NOTHING: "Pool selector matches no node",
    MIXED_ACCELERATORS: "Pool mixes accelerator types",
    GROUP_MISSING_GPU_TAINT: "Node group template without the GPU taint",
}

Obj = dict[str, Any]


class PoolRecord(Protocol):
    """What the report needs of a NodePool (a model instance satisfies it)."""

    name: str
    node_selector: dict[str, str]

    @property
    def taint(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Finding:
    rule: str
    pool: str
    message: str
    node: str = ""
    pod: str = ""  # namespace/name

    @property
    def title(self) -> str:
        return RULES[self.rule]


@dataclass(frozen=True)
class Allowlist:
    """Pods allowed on GPU nodes without requesting a GPU: the daemons that make the GPUs usable."""

    namespaces: frozenset[str] = frozenset()
    # Namespaces where only DaemonSet pods are allowed (kube-system: kube-proxy and the CNI agent
    # belong on every node, CoreDNS does not).
    daemonset_namespaces: frozenset[str] = frozenset()
    labels: Mapping[str, frozenset[str]] | None = None

    @classmethod
    def from_setting(cls, value: Mapping[str, Any]) -> "Allowlist":
        return cls(
            namespaces=frozenset(value.get("namespaces", ())),
            daemonset_namespaces=frozenset(value.get("daemonset_namespaces", ())),
            labels={key: frozenset(values) for key, values in (value.get("labels") or {}).items()},
        )

    def allows(self, pod: Obj) -> bool:
        meta = pod.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if namespace in self.namespaces:
            return True
        if namespace in self.daemonset_namespaces and any(
            ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []
        ):
            return True
        labels = meta.get("labels") or {}
        return any(labels.get(key) in values for key, values in (self.labels or {}).items())


def _expected_taint(pool: str, records: Mapping[str, PoolRecord]) -> dict[str, str]:
    record = records.get(pool)
    return record.taint if record is not None else pool_taint(pool)


def conformance_report(
    *,
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    pools: Iterable[PoolRecord],
    allowlist: Allowlist,
    only_pools: Collection[str] | None = None,
    node_groups: Iterable[NodeGroup] = (),
) -> list[Finding]:
    """Every violation of the scheduling contract, sorted by pool, rule, node and pod.

    A node belongs to the pool its pool label names; `only_pools` keeps the findings of those pools
    (a node without a pool label belongs to pool ""). A node group belongs to the pool its template's
    pool label names.
    """
    nodes = list(nodes)
    groups = list(node_groups)
    records = {record.name: record for record in pools}
    findings: list[Finding] = []
    gpu_nodes = {name_of(node): node for node in nodes if is_gpu_node(node)}

    for name, node in gpu_nodes.items():
        pool = node_pool_label(node)
        if not pool:
            if not has_repelling_taint(node, POOL_LABEL):
                findings.append(
                    Finding(
                        MISSING_POOL_TAINT,
                        "",
                        f"GPU node {name} has neither a {POOL_LABEL} label nor a pool taint: any pod "
                        "that tolerates the GPU taint, or asks for no GPU, can land on it.",
                        node=name,
                    )
                )
            continue
        taint = _expected_taint(pool, records)
        if not carries_taint(node, taint):
            findings.append(
                Finding(
                    MISSING_POOL_TAINT,
                    pool,
                    f"GPU node {name} of pool {pool} lacks the taint "
                    f"{taint['key']}={taint['value']}:{taint['effect']}, so pods of other pools can land "
                    "on it.",
                    node=name,
                )
            )

    for pod in pods:
        node = gpu_nodes.get((pod.get("spec") or {}).get("nodeName", ""))
        if node is None or pod_finished(pod):
            continue
        if requests_gpu(pod) or allowlist.allows(pod):
            continue
        findings.append(
            Finding(
                NON_GPU_POD,
                node_pool_label(node),
                f"Pod {key_of(pod)} requests no GPU but runs on GPU node {name_of(node)}, using CPU "
                "and memory that inference needs.",
                node=name_of(node),
                pod=key_of(pod),
            )
        )

    for record in records.values():
        selector = record.node_selector or {}
        if (
            selector
            and not any(labels_match(selector, labels_of(node)) for node in nodes)
            and not groups_for(groups, selector)
        ):
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
            findings.append(
                Finding(
                    SELECTOR_MATCHES_NOTHING,
                    record.name,
                    f"Pool {record.name} selects nodes with {wanted}, and no node has those labels nor can "
                    "any node group make one: its workloads can never be scheduled.",
                )
            )

    for group in groups:
        if missing_gpu_taint(group):
            pool = (group.label_values(POOL_LABEL) or [""])[0]
            findings.append(
                Finding(
                    GROUP_MISSING_GPU_TAINT,
                    pool,
                    f"{group.title} makes GPU nodes without the taint {taint_text(GPU_TAINT)}, so pods "
                    "that ask for no GPU can land on them.",
                    node=group.name,
                )
            )

    for pool, members in _pool_members(nodes, records).items():
        kinds = Counter(node_accelerator(node) for node in members)
        if len(kinds) > 1 and any(kind is not None for kind in kinds):
            listed = ", ".join(
                f"{kind or 'no GPU'} ({count} node{'s' if count > 1 else ''})"
                for kind, count in sorted(kinds.items(), key=lambda item: str(item[0]))
            )
            findings.append(
                Finding(
                    MIXED_ACCELERATORS,
                    pool,
                    f"Pool {pool} mixes accelerators: {listed}. Models sized for one land on another.",
                )
            )

    if only_pools is not None:
        keep = set(only_pools)
        findings = [f for f in findings if f.pool in keep]
    return sorted(findings, key=lambda f: (f.pool, f.rule, f.node, f.pod))


def _pool_members(nodes: list[Obj], records: Mapping[str, PoolRecord]) -> dict[str, list[Obj]]:
    """Nodes of each pool: a record's by its selector, any other pool's by the pool label."""
    members: dict[str, list[Obj]] = {}
    for node in nodes:
        pool = node_pool_label(node)
        if pool and pool not in records:
            members.setdefault(pool, []).append(node)
    for name, record in records.items():
        if record.node_selector:
            members[name] = [node for node in nodes if labels_match(record.node_selector, labels_of(node))]
    return members
