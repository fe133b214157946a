"""The scheduling-contract conformance report: the seed's failure modes, checked against live objects.

A pure function over node and pod dicts (as the apiserver returns them) and the portal's pool
records, so every rule is tested without a cluster. Rules:

- gpu-node-missing-pool-taint: a GPU node without its pool's taint takes any pod that asks for no GPU.
- non-gpu-pod-on-gpu-node: a running pod that requests no GPU sits on a GPU node (general workloads
  eating CPU and memory of inference nodes); the daemons GPUs need are allowlisted.
- pool-selector-matches-no-node: a pool whose node selector matches no node can never schedule
  (the autoscaler finds no node group either).
- pool-mixes-accelerators: one pool with several accelerator kinds fragments and misplaces models.
"""

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pools.kube.discovery import (
    POOL_LABEL,
    TAINT_EFFECTS,
    has_taint,
    is_gpu_node,
    matches,
    node_accelerator,
    node_name,
    node_pool,
    node_taints,
)
from pools.utilisation import pod_gpu_requests

MISSING_POOL_TAINT = "gpu-node-missing-pool-taint"
NON_GPU_POD = "non-gpu-pod-on-gpu-node"
SELECTOR_MATCHES_NOTHING = "pool-selector-matches-no-node"
MIXED_ACCELERATORS = "pool-mixes-accelerators"
RULES = {
    MISSING_POOL_TAINT: "GPU node without its pool taint",
    NON_GPU_POD: "Pod without a GPU request on a GPU node",
    SELECTOR_MATCHES_NOTHING: "Pool selector matches no node",
    MIXED_ACCELERATORS: "Pool mixes accelerator types",
}
FINISHED_PHASES = ("Succeeded", "Failed")

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


def requests_gpu(pod: Obj) -> bool:
    """Whether the scheduler reserves a GPU for `pod`: counted exactly as the utilisation figures
    count it, so the report and the dashboard agree on which pods are GPU pods (a request of 0 is none)."""
    return bool(pod_gpu_requests(pod))


def _pod_key(pod: Obj) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _expected_taint(pool: str, records: Mapping[str, PoolRecord]) -> dict[str, str]:
    record = records.get(pool)
    if record is not None:
        return record.taint
    return {"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}


def conformance_report(
    *,
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    pools: Iterable[PoolRecord],
    allowlist: Allowlist,
    only_pools: Collection[str] | None = None,
) -> list[Finding]:
    """Every violation of the scheduling contract, sorted by pool, rule, node and pod.

    A node belongs to the pool its pool label names; `only_pools` keeps the findings of those pools
    (a node without a pool label belongs to pool "").
    """
    nodes = list(nodes)
    records = {record.name: record for record in pools}
    findings: list[Finding] = []
    gpu_nodes = {node_name(node): node for node in nodes if is_gpu_node(node)}

    for name, node in gpu_nodes.items():
        pool = node_pool(node)
        if not pool:
            if not any(
                t.get("key") == POOL_LABEL and t.get("effect") in TAINT_EFFECTS for t in node_taints(node)
            ):
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
        if not has_taint(node, taint):
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
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        node = gpu_nodes.get(spec.get("nodeName", ""))
        if node is None or status.get("phase") in FINISHED_PHASES:
            continue
        if requests_gpu(pod) or allowlist.allows(pod):
            continue
        findings.append(
            Finding(
                NON_GPU_POD,
                node_pool(node),
                f"Pod {_pod_key(pod)} requests no GPU but runs on GPU node {node_name(node)}, using CPU "
                "and memory that inference needs.",
                node=node_name(node),
                pod=_pod_key(pod),
            )
        )

    for record in records.values():
        selector = record.node_selector or {}
        if selector and not any(matches(selector, node) for node in nodes):
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
            findings.append(
                Finding(
                    SELECTOR_MATCHES_NOTHING,
                    record.name,
                    f"Pool {record.name} selects nodes with {wanted}, and no node has those labels: "
                    "its workloads can never be scheduled.",
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
        pool = node_pool(node)
        if pool and pool not in records:
            members.setdefault(pool, []).append(node)
    for name, record in records.items():
        if record.node_selector:
            members[name] = [node for node in nodes if matches(record.node_selector, node)]
    return members
