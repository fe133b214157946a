"""The conformance report as a pure function over node and pod dicts and pool records."""

import copy
from dataclasses import dataclass, field
from typing import Any

from pools.kube.conformance import (
    MISSING_POOL_TAINT,
    MIXED_ACCELERATORS,
    NON_GPU_POD,
    SELECTOR_MATCHES_NOTHING,
    Allowlist,
    conformance_report,
)
from pools.kube.discovery import node_accelerator
from pools.kube.objects import POOL_LABEL
from tests.testbed import load_testbed_module

tb = load_testbed_module()
ALLOW = Allowlist.from_setting(
    {
        "namespaces": ["gpu-operator"],
        "daemonset_namespaces": ["kube-system"],
        "labels": {"app.kubernetes.io/name": ["dcgm-exporter"]},
    }
)


@dataclass
class Record:
    """Stands in for a NodePool: the report reads name, node_selector and taint."""

    name: str
    node_selector: dict[str, str] = field(default_factory=dict)
    taint_value: str = ""

    @property
    def taint(self) -> dict[str, str]:
        return {"key": POOL_LABEL, "value": self.taint_value or self.name, "effect": "NoSchedule"}


def topology_nodes() -> list[dict[str, Any]]:
    return tb.render_nodes(tb.load_topology())


def records_for(nodes: list[dict[str, Any]]) -> list[Record]:
    pools = sorted({n["metadata"]["labels"][POOL_LABEL] for n in nodes if node_accelerator(n)})
    return [Record(name, {POOL_LABEL: name}) for name in pools]


def gpu_node(nodes: list[dict[str, Any]], index: int = 0) -> dict[str, Any]:
    return [n for n in nodes if node_accelerator(n)][index]


def pod(name: str, node: str, namespace: str = "team-a", gpus: int = 0, **meta: Any) -> dict[str, Any]:
    limits = {"cpu": "1", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"limits": limits}}]},
        "status": {"phase": "Running"},
    }


def report(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], records: list[Record], **kw: Any) -> list:
    return conformance_report(nodes=nodes, pods=pods, pools=records, allowlist=ALLOW, **kw)


def test_the_clean_topology_has_no_findings():
    nodes = topology_nodes()
    gpu_pods = [
        pod(f"p{i}", n["metadata"]["name"], gpus=1) for i, n in enumerate(nodes) if node_accelerator(n)
    ]
    cpu_pods = [pod(f"c{i}", n["metadata"]["name"]) for i, n in enumerate(nodes) if not node_accelerator(n)]
    assert report(nodes, gpu_pods + cpu_pods, records_for(nodes)) == []


def test_gpu_node_without_its_pool_taint():
    nodes = topology_nodes()
    node = gpu_node(nodes)
    node["spec"]["taints"] = [t for t in node["spec"]["taints"] if t["key"] != POOL_LABEL]
    findings = report(nodes, [], records_for(nodes))
    pool = node["metadata"]["labels"][POOL_LABEL]
    assert [(f.rule, f.pool, f.node) for f in findings] == [
        (MISSING_POOL_TAINT, pool, node["metadata"]["name"])
    ]
    assert f"lacks the taint {POOL_LABEL}={pool}:NoSchedule" in findings[0].message


def test_pool_taint_with_the_wrong_value_or_effect_does_not_count():
    nodes = topology_nodes()
    wrong_value, wrong_effect = gpu_node(nodes, 0), gpu_node(nodes, 1)
    for taint in wrong_value["spec"]["taints"]:
        if taint["key"] == POOL_LABEL:
            taint["value"] = "someone-else"
    for taint in wrong_effect["spec"]["taints"]:
        if taint["key"] == POOL_LABEL:
            taint["effect"] = "PreferNoSchedule"
    findings = report(nodes, [], records_for(nodes))
    assert {f.node for f in findings if f.rule == MISSING_POOL_TAINT} == {
        wrong_value["metadata"]["name"],
        wrong_effect["metadata"]["name"],
    }


def test_an_unlabelled_untainted_gpu_node_is_reported_under_no_pool():
    nodes = topology_nodes()
    stray = copy.deepcopy(gpu_node(nodes))
    stray["metadata"]["name"] = "stray"
    del stray["metadata"]["labels"][POOL_LABEL]
    stray["spec"]["taints"] = []
    findings = report([*nodes, stray], [], records_for(nodes))
    assert [(f.rule, f.pool, f.node) for f in findings] == [(MISSING_POOL_TAINT, "", "stray")]


def test_non_gpu_pod_on_gpu_node_and_the_allowlist():
    nodes = topology_nodes()
    node = gpu_node(nodes)["metadata"]["name"]
    cpu_node = next(n for n in nodes if not node_accelerator(n))["metadata"]["name"]
    daemonset = [{"kind": "DaemonSet", "name": "kube-proxy"}]
    replicaset = [{"kind": "ReplicaSet", "name": "coredns-x"}]
    pods = [
        pod("web", node),  # the violation
        pod("coredns", node, namespace="kube-system", ownerReferences=replicaset),  # not a daemon
        pod("kube-proxy", node, namespace="kube-system", ownerReferences=daemonset),
        pod("operator", node, namespace="gpu-operator"),
        pod("exporter", node, namespace="monitoring", labels={"app.kubernetes.io/name": "dcgm-exporter"}),
        pod("model", node, gpus=1),
        pod("cpu-work", cpu_node),
        {**pod("done", node), "status": {"phase": "Succeeded"}},
    ]
    mig = pod("slice", node)
    mig["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/mig-1g.10gb": "1"}}
    # Naming the GPU resource with a request of 0 reserves no GPU: the dashboard counts it as a
    # non-GPU pod too.
    zero = pod("zero", node)
    zero["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "0"}}
    findings = report(nodes, [*pods, mig, zero], records_for(nodes))
    assert [(f.rule, f.pod) for f in findings] == [
        (NON_GPU_POD, "kube-system/coredns"),
        (NON_GPU_POD, "team-a/web"),
        (NON_GPU_POD, "team-a/zero"),
    ]
    assert all(f.node == node for f in findings)


def test_pool_whose_selector_matches_no_node():
    nodes = topology_nodes()
    ghost = Record("ghost", {POOL_LABEL: "ghost"})
    findings = report(nodes, [], [*records_for(nodes), ghost])
    assert [(f.rule, f.pool) for f in findings] == [(SELECTOR_MATCHES_NOTHING, "ghost")]
    assert f"{POOL_LABEL}=ghost" in findings[0].message


def test_pool_mixing_accelerators_by_label_and_by_record_selector():
    nodes = topology_nodes()
    gpu = [n for n in nodes if node_accelerator(n)]
    first = gpu[0]
    other = next(n for n in gpu if node_accelerator(n) != node_accelerator(first))
    intruder = copy.deepcopy(other)
    intruder["metadata"]["name"] = "intruder"
    pool = first["metadata"]["labels"][POOL_LABEL]
    intruder["metadata"]["labels"][POOL_LABEL] = pool
    for taint in intruder["spec"]["taints"]:
        if taint["key"] == POOL_LABEL:
            taint["value"] = pool
    findings = report([*nodes, intruder], [], records_for(nodes))
    assert [(f.rule, f.pool) for f in findings] == [(MIXED_ACCELERATORS, pool)]
    assert str(node_accelerator(other)) + " (1 node)" in findings[0].message
    # Without records the pool label groups the nodes just the same.
    assert [(f.rule, f.pool) for f in report([*nodes, intruder], [], [])] == [(MIXED_ACCELERATORS, pool)]


def test_only_pools_limits_the_report():
    nodes = topology_nodes()
    node = gpu_node(nodes)
    node["spec"]["taints"] = []
    pool = node["metadata"]["labels"][POOL_LABEL]
    records = [*records_for(nodes), Record("ghost", {POOL_LABEL: "ghost"})]
    assert {f.pool for f in report(nodes, [], records)} == {pool, "ghost"}
    assert {f.pool for f in report(nodes, [], records, only_pools=["ghost"])} == {"ghost"}
    others = {r.name for r in records} - {pool, "ghost"}
    assert report(nodes, [], records, only_pools=others) == []
