"""Node groups as pure functions: the testbed's rendered Karpenter NodePools (the same renderer the
testbed applies) and cluster-autoscaler declarations in, node groups, proposed elastic pools and
pre-flight answers out. No cluster needed; tests/provisioning/test_elastic.py does it for real."""

import copy
from typing import Any

import pytest

from pools.kube.discovery import discover
from pools.kube.nodegroups import (
    CLUSTER_AUTOSCALER,
    KARPENTER,
    PoolAsk,
    bringup_percentile,
    claim_state,
    discover_node_groups,
    group_problem,
    groups_for,
    inventory_document,
    missing_gpu_taint,
    node_summary,
    nodegroup_from_autoscaler,
    nodegroup_from_nodepool,
    preflight_refusal,
    selector_mismatch,
)
from pools.kube.objects import GPU_TAINT, POOL_LABEL, pool_taint
from pools.models import PoolClass
from tests.testbed import load_testbed_module

tb = load_testbed_module()
CA = "k8s.io/cluster-autoscaler/node-template/"


@pytest.fixture
def topology() -> dict[str, Any]:
    return tb.load_topology()


def elastic(topology: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in topology["elasticPools"] if p["name"] == name)


def nodepools(topology: dict[str, Any]) -> list[dict[str, Any]]:
    return tb.render_nodepools(topology, bringup_seconds=5)


def ask(pool: str, resource: str = "nvidia.com/gpu", **kw: Any) -> PoolAsk:
    return PoolAsk(
        title=f"local/{pool}",
        cluster="local",
        selector=kw.pop("selector", {POOL_LABEL: pool}),
        taint=kw.pop("taint", pool_taint(pool)),
        resource=resource,
    )


def test_a_rendered_nodepool_is_a_node_group_with_its_template_limit_and_shape(topology):
    spec = elastic(topology, "interactive-h100")
    group = nodegroup_from_nodepool(tb.render_nodepool(topology, spec, 5))
    assert group.kind == KARPENTER and group.name == spec["name"]
    assert group.labels[POOL_LABEL] == spec["name"]
    assert group.instance_types == [spec["instanceType"]]
    assert group.zones == sorted(spec["zones"])
    assert group.limits == {"nvidia.com/gpu": spec["limits"]["gpus"]}
    # Nothing configured, no node yet: the template's GPU Feature Discovery count tells the shape.
    assert group.resources == {spec["instanceType"]: {"nvidia.com/gpu": spec["gpus"]}}
    assert group.units_per_node("nvidia.com/gpu") == spec["gpus"]
    assert group.capacity("nvidia.com/gpu") == spec["limits"]["gpus"]
    assert {(t["key"], t["value"]) for t in group.taints} == {
        (GPU_TAINT["key"], "true"),
        (POOL_LABEL, spec["name"]),
    }
    assert not missing_gpu_taint(group)


def test_the_instance_catalogue_and_observed_nodes_say_what_a_type_offers(topology):
    nodepool = tb.render_nodepool(topology, elastic(topology, "batch-a100"), 5)
    del nodepool["spec"]["template"]["metadata"]["labels"]["nvidia.com/gpu.count"]
    kind = elastic(topology, "batch-a100")["instanceType"]
    unknown = nodegroup_from_nodepool(nodepool, {})
    assert unknown.resources == {} and unknown.unknown_instance_types() == [kind]
    problem = group_problem(unknown, taint=pool_taint("batch-a100"), resource="nvidia.com/gpu")
    assert problem is not None and "does not know what its instance types" in problem and kind in problem
    known = nodegroup_from_nodepool(nodepool, {kind: {"nvidia.com/gpu": 8}})
    assert known.units_per_node("nvidia.com/gpu") == 8
    assert group_problem(known, taint=pool_taint("batch-a100"), resource="nvidia.com/gpu") is None
    # An A100 group does not offer MIG slices.
    mig = group_problem(known, taint=pool_taint("batch-a100"), resource="nvidia.com/mig-1g.10gb")
    assert mig == f"its instance types {kind} offer nvidia.com/gpu, not nvidia.com/mig-1g.10gb"


def test_selector_matching_reads_template_labels_and_requirements(topology):
    group = nodegroup_from_nodepool(tb.render_nodepool(topology, elastic(topology, "interactive-h100"), 5))
    assert selector_mismatch(group, {POOL_LABEL: "interactive-h100"}) is None
    assert selector_mismatch(group, {POOL_LABEL: "nowhere"}) == f"{POOL_LABEL}=interactive-h100"
    # Requirements: the zone is one of its values; an instance type it does not allow is not.
    assert selector_mismatch(group, {"topology.kubernetes.io/zone": "zone-b"}) is None
    assert selector_mismatch(group, {"topology.kubernetes.io/zone": "zone-c"}) == (
        "topology.kubernetes.io/zone In [zone-a, zone-b]"
    )
    assert selector_mismatch(group, {"karpenter.sh/nodepool": "interactive-h100"}) is None
    assert selector_mismatch(group, {"team": "vision"}) == "no team label"


def test_templates_without_the_pool_taint_or_with_foreign_taints_are_problems(topology):
    nodepool = tb.render_nodepool(topology, elastic(topology, "interactive-h100"), 5)
    taints = nodepool["spec"]["template"]["spec"]["taints"]
    bare = copy.deepcopy(nodepool)
    bare["spec"]["template"]["spec"]["taints"] = [t for t in taints if t["key"] != POOL_LABEL]
    problem = group_problem(
        nodegroup_from_nodepool(bare), taint=pool_taint("interactive-h100"), resource="nvidia.com/gpu"
    )
    assert problem == (
        f"its template lacks the pool taint {POOL_LABEL}=interactive-h100:NoSchedule, so any workload "
        "could land on its nodes"
    )
    foreign = copy.deepcopy(nodepool)
    foreign["spec"]["template"]["spec"]["taints"].append(
        {"key": "dedicated", "value": "x", "effect": "NoExecute"}
    )
    problem = group_problem(
        nodegroup_from_nodepool(foreign), taint=pool_taint("interactive-h100"), resource="nvidia.com/gpu"
    )
    assert problem == "its nodes carry dedicated=x:NoExecute, which granted workloads do not tolerate"
    no_gpu_taint = copy.deepcopy(nodepool)
    no_gpu_taint["spec"]["template"]["spec"]["taints"] = [t for t in taints if t["key"] == POOL_LABEL]
    assert missing_gpu_taint(nodegroup_from_nodepool(no_gpu_taint))


def test_a_nodepool_karpenter_calls_not_ready_is_a_problem(topology):
    nodepool = tb.render_nodepool(topology, elastic(topology, "interactive-h100"), 5)
    nodepool["status"] = {
        "conditions": [{"type": "Ready", "status": "False", "message": "NodeClass not found"}]
    }
    problem = group_problem(
        nodegroup_from_nodepool(nodepool), taint=pool_taint("interactive-h100"), resource="nvidia.com/gpu"
    )
    assert problem == "it is not Ready (NodeClass not found)"


def test_a_cluster_autoscaler_group_declared_by_its_node_template_tags():
    group = nodegroup_from_autoscaler(
        "gpu-l4",
        {
            "minSize": 0,
            "maxSize": 3,
            "instanceType": "g6.12xlarge",
            "zones": ["zone-a"],
            "tags": {
                f"{CA}label/{POOL_LABEL}": "embedding-ca",
                f"{CA}label/accelerator.platform.example.com/pool-class": "embedding-reranking",
                f"{CA}label/nvidia.com/gpu.product": "NVIDIA-L4",
                f"{CA}label/accelerator.platform.example.com/type": "nvidia-l4",
                f"{CA}label/accelerator.platform.example.com/memory": "24",
                f"{CA}taint/{POOL_LABEL}": "embedding-ca:NoSchedule",
                f"{CA}taint/{GPU_TAINT['key']}": "true:NoSchedule",
                f"{CA}resources/nvidia.com/gpu": "4",
            },
        },
    )
    assert group.kind == CLUSTER_AUTOSCALER
    assert (group.min_nodes, group.max_nodes) == (0, 3)
    assert group.labels[POOL_LABEL] == "embedding-ca"
    assert {"key": POOL_LABEL, "value": "embedding-ca", "effect": "NoSchedule"} in group.taints
    assert group.units_per_node("nvidia.com/gpu") == 4
    # Without a limit, a cluster-autoscaler group holds at most max nodes x units per node.
    assert group.capacity("nvidia.com/gpu") == 12
    assert group_problem(group, taint=pool_taint("embedding-ca"), resource="nvidia.com/gpu") is None
    inventory = discover_node_groups([group], pool_classes=PoolClass.values)
    (pool,) = inventory.pools
    assert (pool.name, pool.pool_class, pool.capacity, pool.node_groups) == (
        "embedding-ca",
        "embedding-reranking",
        12,
        ["gpu-l4"],
    )
    assert (pool.accelerator.product, pool.accelerator.memory_gib) == ("NVIDIA-L4", 24)


def test_discovery_proposes_elastic_pools_with_no_node_and_their_limit_as_capacity(topology):
    groups = [nodegroup_from_nodepool(p) for p in nodepools(topology)]
    static = discover(tb.render_nodes(topology), pool_classes=PoolClass.values)
    inventory = discover_node_groups(groups, pool_classes=PoolClass.values, inventory=static)
    for spec in topology["elasticPools"]:
        pool = inventory.pool(spec["name"])
        assert pool is not None, inventory.skipped
        assert pool.capacity == spec["limits"]["gpus"]
        assert pool.node_groups == [spec["name"]] and pool.nodes == []
        assert pool.pool_class == spec["class"]
        assert pool.accelerator.product == topology["accelerators"][spec["accelerator"]]["product"]
        assert pool.taint == pool_taint(spec["name"])
        assert pool.zones == sorted(spec["zones"])
    # The static pools are still there, untouched.
    for spec in topology["pools"]:
        if "accelerator" in spec:
            assert inventory.pool(spec["name"]).node_groups == []


def ready(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered nodes as kwok reports them: Ready."""
    for node in nodes:
        node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    return nodes


def inventory_with(topology, nodes=(), pools=None, claims=()):
    return inventory_document(
        nodes=ready(list(nodes)), nodepools=nodepools(topology) if pools is None else pools, nodeclaims=claims
    )


def test_preflight_passes_an_elastic_pool_with_zero_nodes(topology):
    document = inventory_with(topology, nodes=tb.render_nodes(topology))
    assert preflight_refusal(ask("interactive-h100"), document) is None
    assert preflight_refusal(ask("batch-a100"), document) is None
    # Static pools pass on their Ready, tainted nodes as before.
    assert preflight_refusal(ask("interactive-a100"), document) is None


def test_preflight_names_the_node_groups_when_the_selector_matches_none(topology):
    document = inventory_with(topology, nodes=tb.render_nodes(topology))
    refusal = preflight_refusal(ask("nowhere"), document)
    assert refusal is not None
    assert f"no node of cluster local matches its selector {POOL_LABEL}=nowhere" in refusal
    assert "no node group can make one" in refusal
    for spec in topology["elasticPools"]:
        assert f"NodePool {spec['name']} makes nodes with {POOL_LABEL}={spec['name']}" in refusal
        assert f"accelerator.platform.example.com/pool-class={spec['class']}" in refusal


def test_preflight_refuses_a_matching_group_that_cannot_serve_the_pool(topology):
    pools = nodepools(topology)
    target = next(p for p in pools if p["metadata"]["name"] == "interactive-h100")
    target["spec"]["template"]["spec"]["taints"] = [GPU_TAINT]
    refusal = preflight_refusal(ask("interactive-h100"), inventory_with(topology, pools=pools))
    assert refusal == (
        "Pool local/interactive-h100: no Ready node of cluster local serves it, and the node groups that "
        f"match its selector {POOL_LABEL}=interactive-h100 cannot either (NodePool interactive-h100: its "
        f"template lacks the pool taint {POOL_LABEL}=interactive-h100:NoSchedule, so any workload could "
        "land on its nodes)."
    )


def test_preflight_without_any_node_group_keeps_the_static_message(topology):
    document = inventory_with(topology, nodes=tb.render_nodes(topology), pools=[])
    assert preflight_refusal(ask("nowhere"), document) == (
        f"Pool local/nowhere: no node of cluster local matches its selector {POOL_LABEL}=nowhere, so "
        "granted workloads would stay Pending. Fix the pool's node selector or add nodes first."
    )


def test_preflight_refuses_untainted_ready_nodes_even_with_a_node_group(topology):
    nodes = tb.render_nodes(topology)
    karpenter_node = copy.deepcopy(
        next(n for n in nodes if n["metadata"]["labels"].get(POOL_LABEL) == "batch-h100")
    )
    karpenter_node["metadata"]["name"] = "kwok-interactive-h100-x"
    karpenter_node["metadata"]["labels"][POOL_LABEL] = "interactive-h100"
    karpenter_node["spec"]["taints"] = [GPU_TAINT]
    refusal = preflight_refusal(
        ask("interactive-h100"), inventory_with(topology, nodes=[*nodes, karpenter_node])
    )
    assert refusal is not None and "Ready nodes kwok-interactive-h100-x lack the pool taint" in refusal


def test_node_summary_collapses_nodes_of_one_shape(topology):
    nodes = tb.render_nodes(topology, extra_nodes=40)
    summary = node_summary(nodes)
    assert sum(len(e["names"]) for e in summary) == len(nodes)
    assert len(summary) < len(nodes) / 3
    bench = [e for e in summary if e["labels"].get(POOL_LABEL) == "bench-h100"]
    assert len(bench) == 2 and sum(len(e["names"]) for e in bench) == 40  # one entry per zone


def claim(name: str, pool: str, created: str, initialized: str | None) -> dict[str, Any]:
    conditions = [{"type": "Launched", "status": "True", "lastTransitionTime": created}]
    if initialized:
        conditions.append({"type": "Initialized", "status": "True", "lastTransitionTime": initialized})
    return {
        "metadata": {
            "name": name,
            "labels": {"karpenter.sh/nodepool": pool, "node.kubernetes.io/instance-type": "p5.48xlarge"},
            "creationTimestamp": created,
        },
        "status": {"conditions": conditions, "allocatable": {"nvidia.com/gpu": "8"}},
    }


def test_claims_give_time_to_node_and_what_is_provisioning(topology):
    done = claim_state(claim("a", "interactive-h100", "2026-01-01T10:00:00Z", "2026-01-01T10:00:47Z"))
    assert done.bringup_seconds == 47 and not done.provisioning
    waiting = claim_state(claim("b", "interactive-h100", "2026-01-01T10:01:00Z", None))
    assert waiting.provisioning and waiting.bringup_seconds is None
    document = inventory_with(
        topology,
        claims=[
            claim("a", "interactive-h100", "2026-01-01T10:00:00Z", "2026-01-01T10:00:47Z"),
            claim("b", "interactive-h100", "2026-01-01T10:01:00Z", None),
        ],
    )
    entry = next(g for g in document["node_groups"] if g["name"] == "interactive-h100")
    assert entry["provisioning"] == 1
    assert bringup_percentile([5, 6, 7, 50]) == 50 and bringup_percentile([]) == 0


def test_groups_for_picks_the_groups_a_pool_selector_matches(topology):
    groups = [nodegroup_from_nodepool(p) for p in nodepools(topology)]
    assert [g.name for g in groups_for(groups, {POOL_LABEL: "batch-a100"})] == ["batch-a100"]
    assert groups_for(groups, {}) == []


def test_conformance_flags_node_groups_without_the_gpu_taint_and_knows_elastic_selectors(topology):
    from pools.kube.conformance import (
        GROUP_MISSING_GPU_TAINT,
        SELECTOR_MATCHES_NOTHING,
        Allowlist,
        conformance_report,
    )

    pools = nodepools(topology)
    target = next(p for p in pools if p["metadata"]["name"] == "interactive-h100")
    target["spec"]["template"]["spec"]["taints"] = [
        t for t in target["spec"]["template"]["spec"]["taints"] if t["key"] == POOL_LABEL
    ]
    groups = [nodegroup_from_nodepool(p) for p in pools]

    class Record:
        def __init__(self, name: str) -> None:
            self.name, self.node_selector, self.taint = name, {POOL_LABEL: name}, pool_taint(name)

    findings = conformance_report(
        nodes=[],
        pods=[],
        pools=[Record("interactive-h100"), Record("nowhere")],
        allowlist=Allowlist(),
        node_groups=groups,
    )
    rules = {(f.rule, f.pool) for f in findings}
    assert (GROUP_MISSING_GPU_TAINT, "interactive-h100") in rules
    assert (GROUP_MISSING_GPU_TAINT, "batch-a100") not in rules
    # An elastic pool with no node is not "matches no node": its NodePool can make one.
    assert (SELECTOR_MATCHES_NOTHING, "interactive-h100") not in rules
    assert (SELECTOR_MATCHES_NOTHING, "nowhere") in rules
    message = next(f.message for f in findings if f.rule == GROUP_MISSING_GPU_TAINT)
    assert message.startswith("NodePool interactive-h100 makes GPU nodes without the taint")
