"""The conformance report against live objects: violations planted in the testbed are found, and
the topology's own pools are clean."""

import pytest
from django.core.exceptions import PermissionDenied

from pools import selectors, services
from pools.kube import ops
from pools.kube.conformance import (
    MISSING_POOL_TAINT,
    MIXED_ACCELERATORS,
    NON_GPU_POD,
    SELECTOR_MATCHES_NOTHING,
)
from tests import factories
from tests.cluster.conftest import pod, pool_spec, render
from tests.testbed import unique_name, wait_until

pytestmark = pytest.mark.cluster


def whole_gpu_accelerators(testbed) -> list[str]:
    """The distinct whole-GPU accelerators of the topology, in file order."""
    seen: list[str] = []
    for spec in testbed.topology["pools"]:
        if "accelerator" in spec and not spec.get("mig") and spec["accelerator"] not in seen:
            seen.append(spec["accelerator"])
    return seen


def test_planted_violations_are_found(db, testbed, k8s_namespace, fake_nodes, platform_admin):
    first, second = whole_gpu_accelerators(testbed)[:2]
    # 1. A GPU node with its own pool label and no taints at all.
    untainted = pool_spec(testbed, first)
    untainted_nodes = render(testbed, untainted)
    for node in untainted_nodes:
        node["spec"]["taints"] = []
    # 2. A correctly tainted GPU pool, which will get a CPU-only pod.
    tainted = pool_spec(testbed, first)
    # 3. One pool label over nodes of two accelerator models (different zones keep names apart).
    mixed = pool_spec(testbed, first, nodes={"zone-a": 1})
    intruder = {**pool_spec(testbed, second, nodes={"zone-b": 1}), "name": mixed["name"]}
    names = fake_nodes(
        [*untainted_nodes, *render(testbed, tainted), *render(testbed, mixed), *render(testbed, intruder)]
    )
    tainted_node = next(n for n in names if n.startswith(tainted["name"]))

    # A pod without a GPU request bound straight to a GPU node: nodeName skips the scheduler and
    # its taint check, as a DaemonSet without a node selector or a hand-placed pod would.
    stray = pod("stray", node_name=tainted_node)
    ops.apply(testbed.admin, {**stray, "metadata": {"name": "stray", "namespace": k8s_namespace}})
    wait_until(
        "the stray pod to run",
        lambda: (
            (ops.get(testbed.admin, "v1", "Pod", "stray", k8s_namespace) or {}).get("status", {}).get("phase")
            == "Running"
        ),
    )

    cluster = testbed.cluster()
    ghost = unique_name("ghost")
    factories.pool(ghost, cluster=cluster)  # selects nodes labelled with its own (unused) name
    planted = {untainted["name"], tainted["name"], mixed["name"], ghost}
    report = selectors.cluster_conformance_report(user=platform_admin, cluster=cluster, only_pools=planted)

    assert report.error == ""
    assert {(f.rule, f.pool, f.node, f.pod) for f in report.findings} == {
        (MISSING_POOL_TAINT, untainted["name"], untainted_nodes[0]["metadata"]["name"], ""),
        (NON_GPU_POD, tainted["name"], tainted_node, f"{k8s_namespace}/stray"),
        (MIXED_ACCELERATORS, mixed["name"], "", ""),
        (SELECTOR_MATCHES_NOTHING, ghost, "", ""),
    }
    assert all(f.message and f.title for f in report.findings)


def test_the_topology_pools_are_clean(db, testbed, platform_admin):
    cluster = testbed.cluster()
    services.cluster_sync_inventory(cluster=cluster, actor=platform_admin)
    topology_pools = [p["name"] for p in testbed.topology["pools"]]
    report = selectors.cluster_conformance_report(
        user=platform_admin, cluster=cluster, only_pools=topology_pools
    )
    assert report.error == ""
    assert report.findings == []


def test_only_admins_and_auditors_see_the_report(db):
    cluster = factories.cluster()
    auditor_report = selectors.cluster_conformance_report(
        user=factories.user(is_auditor=True), cluster=cluster, only_pools=[]
    )
    # factories.cluster has no credentials: the report says so instead of claiming all is well.
    assert auditor_report.error and auditor_report.findings == []
    with pytest.raises(PermissionDenied):
        selectors.cluster_conformance_report(user=factories.user(), cluster=cluster)
