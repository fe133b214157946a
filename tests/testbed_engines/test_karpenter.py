"""Karpenter (its kwok provider) on the testbed: elastic pools get nodes of their instance type when
a pod needs them, only after the simulated bring-up, and not at all for a pod no NodePool fits."""

import pytest

from tests.testbed import load_testbed_module, unique_name, wait_until
from tests.testbed_engines.conftest import (
    KARPENTER,
    PROVISION_TIMEOUT,
    condition,
    elastic_spec,
    gpu_pod,
    seconds_between,
)

pytestmark = pytest.mark.cluster

PREFIX = "accelerator.platform.example.com/"


def nodeclaims(custom, pool: str) -> list[dict]:
    label = load_testbed_module().NODEPOOL_LABEL
    return custom.list_cluster_custom_object(*KARPENTER, "nodeclaims", label_selector=f"{label}={pool}")[
        "items"
    ]


def test_the_topology_elastic_pools_are_nodepools_with_their_limits(testbed, custom):
    tb = load_testbed_module()
    for spec in testbed.topology["elasticPools"]:
        live = custom.get_cluster_custom_object(*KARPENTER, "nodepools", spec["name"])
        wanted = tb.render_nodepool(testbed.topology, spec, testbed.node_bringup_seconds)
        assert (
            live["spec"]["limits"]
            == wanted["spec"]["limits"]
            == {"nvidia.com/gpu": str(spec["limits"]["gpus"])}
        )
        assert live["spec"]["template"]["metadata"] == wanted["spec"]["template"]["metadata"]
        assert live["spec"]["template"]["spec"]["taints"] == wanted["spec"]["template"]["spec"]["taints"]
        assert live["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
        # Karpenter validates the NodePool and its KWOKNodeClass before it may launch anything.
        wait_until(
            f"NodePool {spec['name']} Ready",
            lambda spec=spec: (
                (
                    condition(
                        custom.get_cluster_custom_object(*KARPENTER, "nodepools", spec["name"]), "Ready"
                    )
                    or {}
                ).get("status")
                == "True"
            ),
            timeout=60,
        )


def test_a_pending_pod_gets_a_node_of_its_pool_ready_only_after_bring_up(
    testbed, core, custom, namespace, elastic_pool
):
    spec = elastic_spec(testbed)
    elastic_pool(spec)
    ns = namespace()
    core.create_namespaced_pod(ns, gpu_pod("server", spec["name"], gpus=2))

    claim = wait_until(
        "a NodeClaim for the pending pod", lambda: nodeclaims(custom, spec["name"]), PROVISION_TIMEOUT
    )[0]
    label = load_testbed_module().NODEPOOL_LABEL
    node = wait_until(
        "the NodeClaim's node",
        lambda: core.list_node(label_selector=f"{label}={spec['name']}").items,
        PROVISION_TIMEOUT,
    )[0]
    # Seen before its bring-up ends (the usual case), the node says why it is not Ready yet.
    ready = condition(node, "Ready")
    if ready is None or ready.status != "True":
        assert ready is None or ready.reason == "SimulatedBringUp", ready

    pod = wait_until(
        "the pod to run",
        lambda: (p := core.read_namespaced_pod("server", ns)).status.phase == "Running" and p,
        PROVISION_TIMEOUT + testbed.node_bringup_seconds,
    )
    node = core.read_node(pod.spec.node_name)
    labels = node.metadata.labels
    assert labels[label] == spec["name"]
    assert labels["node.kubernetes.io/instance-type"] == spec["instanceType"]
    assert labels["karpenter.sh/capacity-type"] == spec["lifecycle"]
    assert labels["topology.kubernetes.io/zone"] == "zone-a"
    assert labels[f"{PREFIX}pool"] == spec["name"]
    assert labels[f"{PREFIX}pool-class"] == spec["class"]
    assert (
        labels["nvidia.com/gpu.product"] == testbed.topology["accelerators"][spec["accelerator"]]["product"]
    )
    assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
    assert {(t.key, t.value, t.effect) for t in node.spec.taints or []} >= {
        (f"{PREFIX}gpu", "true", "NoSchedule"),
        (f"{PREFIX}pool", spec["name"], "NoSchedule"),
    }
    assert node.status.allocatable["nvidia.com/gpu"] == str(spec["gpus"])
    # The stage makes the node Ready at creationTimestamp + N (both in whole seconds).
    bring_up = seconds_between(
        node.metadata.creation_timestamp, condition(node, "Ready").last_transition_time
    )
    assert bring_up >= testbed.node_bringup_seconds, bring_up
    # Karpenter counts the node as initialized (Ready, GPUs registered) once the bring-up is over.
    wait_until(
        "the NodeClaim to be Initialized",
        lambda: (
            (
                condition(
                    custom.get_cluster_custom_object(*KARPENTER, "nodeclaims", claim["metadata"]["name"]),
                    "Initialized",
                )
                or {}
            ).get("status")
            == "True"
        ),
        timeout=60,
    )


def test_a_pod_no_nodepool_fits_stays_pending_with_karpenters_reason(testbed, core, namespace):
    ns = namespace()
    pool = unique_name("no-such-pool")
    core.create_namespaced_pod(ns, gpu_pod("lost", pool, gpus=1))

    def karpenter_event():
        events = core.list_namespaced_event(ns, field_selector="involvedObject.name=lost").items
        return [e for e in events if e.source.component == "karpenter" and e.reason == "FailedScheduling"]

    event = wait_until("Karpenter's FailedScheduling event on the pod", karpenter_event, PROVISION_TIMEOUT)[0]
    assert event.type == "Warning"
    assert event.message.startswith("Failed to schedule pod"), event.message
    # It names every NodePool it tried and why each does not fit.
    for spec in testbed.topology["elasticPools"]:
        assert spec["name"] in event.message
    assert core.read_namespaced_pod("lost", ns).status.phase == "Pending"


def test_stopping_and_starting_karpenter(testbed, core, custom, namespace, elastic_pool):
    spec = elastic_spec(testbed)
    elastic_pool(spec)
    ns = namespace()
    testbed.stop_karpenter()
    try:
        assert testbed.engines_running()["karpenter"] is False
        core.create_namespaced_pod(ns, gpu_pod("waiting", spec["name"], gpus=1))

        # Longer than Karpenter's batching window (1 s idle): with it running a claim would exist.
        def unschedulable() -> bool:
            scheduled = condition(core.read_namespaced_pod("waiting", ns), "PodScheduled")
            return scheduled is not None and scheduled.status == "False"

        wait_until("the scheduler to find no node for the pod", unschedulable)
        # No Karpenter, no claim: nothing else may make one.
        assert nodeclaims(custom, spec["name"]) == []
    finally:
        testbed.start_karpenter()
    assert testbed.engines_running()["karpenter"] is True
    wait_until(
        "the pod to run once Karpenter is back",
        lambda: core.read_namespaced_pod("waiting", ns).status.phase == "Running",
        PROVISION_TIMEOUT + testbed.node_bringup_seconds,
    )
    # Its NodePools are untouched by the restart.
    assert custom.get_cluster_custom_object(*KARPENTER, "nodepools", spec["name"])["spec"]["limits"]


def test_the_nodepool_limit_caps_the_pool(testbed, core, custom, namespace, elastic_pool):
    gpus = int(testbed.topology["elasticPools"][0]["gpus"])
    spec = elastic_spec(testbed, limits={"gpus": gpus})  # room for one node
    elastic_pool(spec)
    ns = namespace()
    core.create_namespaced_pod(ns, gpu_pod("first", spec["name"], gpus=gpus))
    core.create_namespaced_pod(ns, gpu_pod("second", spec["name"], gpus=gpus))
    wait_until(
        "one of the two pods to run",
        lambda: sorted(p.status.phase for p in core.list_namespaced_pod(ns).items) == ["Pending", "Running"],
        PROVISION_TIMEOUT + testbed.node_bringup_seconds,
    )
    assert len(nodeclaims(custom, spec["name"])) == 1


def test_static_nodes_are_not_karpenters(testbed, core):
    tb = load_testbed_module()
    nodes = core.list_node(label_selector=f"{tb.MANAGED_BY_LABEL}={tb.FIELD_MANAGER}").items
    assert nodes
    for node in nodes:
        assert tb.NODEPOOL_LABEL not in node.metadata.labels
        assert not (node.spec.provider_id or "").startswith("kwok://")
        assert tb.BRING_UP_ANNOTATION not in (node.metadata.annotations or {})
