"""The testbed's kwok Stages for model load: a pod annotated with a simulated load time runs at once
but becomes Ready only after it; a load slower than the startup probe allows never finishes, and
the container is restarted as a kubelet would."""

import pytest

from tests.testbed import TEST_LABEL, load_testbed_module, wait_until
from tests.testbed_engines.conftest import condition, seconds_between

pytestmark = pytest.mark.cluster

PREFIX = "accelerator.platform.example.com/"


def cpu_pod(testbed, name: str, load_seconds: float | None = None, startup_probe: dict | None = None) -> dict:
    """A small pod on the topology's untainted CPU pool (1m of CPU: other tests' room is untouched)."""
    cpu_pool = next(p["name"] for p in testbed.topology["pools"] if "accelerator" not in p)
    container = {
        "name": "server",
        "image": "registry.invalid/server:1",
        "resources": {"limits": {"cpu": "1m", "memory": "1Mi"}},
    }
    if startup_probe:
        container["startupProbe"] = {"httpGet": {"path": "/health", "port": 8000}, **startup_probe}
    annotations = (
        {load_testbed_module().LOAD_ANNOTATION: f"{load_seconds:g}"} if load_seconds is not None else {}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}, "annotations": annotations},
        "spec": {
            "nodeSelector": {f"{PREFIX}pool": cpu_pool},
            "containers": [container],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
        },
    }


def test_the_load_annotation_delays_readiness_within_the_startup_budget(testbed, core, namespace):
    ns = namespace()
    load = 6
    # Budget 10 + 6 x 5 = 40 s: the load fits.
    probe = {"initialDelaySeconds": 10, "periodSeconds": 5, "failureThreshold": 6}
    core.create_namespaced_pod(ns, cpu_pod(testbed, "loading", load, probe))
    core.create_namespaced_pod(ns, cpu_pod(testbed, "plain"))

    def ready(name: str):
        pod = core.read_namespaced_pod(name, ns)
        cond = condition(pod, "Ready")
        return cond is not None and cond.status == "True" and pod

    plain = wait_until("the pod without the annotation to be Ready", lambda: ready("plain"))
    assert plain.status.phase == "Running"

    pod = core.read_namespaced_pod("loading", ns)
    if pod.status.phase == "Running" and condition(pod, "Ready").status != "True":
        # Seen while loading (the usual case): running, not ready, and saying why.
        assert condition(pod, "Ready").reason == "SimulatedModelLoad"
        assert pod.status.container_statuses[0].started is False
    pod = wait_until("the loading pod to be Ready", lambda: ready("loading"), timeout=60 + load)
    status = pod.status.container_statuses[0]
    assert status.ready and status.started and status.restart_count == 0
    loaded = seconds_between(status.state.running.started_at, condition(pod, "Ready").last_transition_time)
    # The stage makes the pod Ready at the container's startedAt + L (both in whole seconds).
    assert loaded >= load, loaded


def test_a_load_slower_than_the_startup_budget_never_becomes_ready(testbed, core, namespace):
    ns = namespace()
    # Budget 0 + 2 x 1 = 2 s, load 600 s: the startup probe gives up first, again and again.
    probe = {"periodSeconds": 1, "failureThreshold": 2}
    core.create_namespaced_pod(ns, cpu_pod(testbed, "too-slow", 600, probe))

    pod = wait_until(
        "the container to be restarted twice",
        lambda: (
            (p := core.read_namespaced_pod("too-slow", ns)).status.container_statuses
            and p.status.container_statuses[0].restart_count >= 2
            and p
        ),
        timeout=60,
    )
    assert condition(pod, "Ready").status == "False"
    assert pod.status.phase == "Running"
    terminated = pod.status.container_statuses[0].last_state.terminated
    assert terminated.exit_code == 137
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=too-slow").items
    assert any(e.reason == "Unhealthy" and e.message.startswith("Startup probe failed") for e in events), [
        (e.reason, e.message) for e in events
    ]


def test_static_nodes_stay_instant_and_karpenter_nodes_wait(testbed):
    """Which nodes the bring-up applies to is decided by the annotation, which only NodePool
    templates carry."""
    tb = load_testbed_module()
    assert all(
        tb.BRING_UP_ANNOTATION not in n["metadata"]["annotations"] for n in tb.render_nodes(testbed.topology)
    )
    for nodepool in tb.render_nodepools(testbed.topology, 7):
        assert nodepool["spec"]["template"]["metadata"]["annotations"][tb.BRING_UP_ANNOTATION] == "7"
