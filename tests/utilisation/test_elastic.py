"""Elastic pools without a cluster: the figures of placeholders and waiting pods, the warm-pool advice,
the placeholder builders, the simulated model load, and the pool page and /metrics from a published
inventory. tests/provisioning/test_elastic.py does the same against the testbed with Karpenter."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from pools import manifests
from pools.kube.nodegroups import inventory_document
from pools.kube.objects import GPU_TAINT, POOL_LABEL, Label, pool_taint
from pools.models import (
    AutoscalerState,
    ClusterInventory,
    CollectorState,
    NodeBringUp,
    PoolClass,
    WarmHeadroom,
)
from pools.utilisation.elastic import poisson_quantile, warm_pool_advice
from pools.utilisation.figures import PoolSpec, compute
from quotas import manifests as quota_manifests
from quotas import rules
from tests import factories
from tests.testbed import load_testbed_module
from tests.utilisation.conftest import publish_state, spec_of

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GPU = "nvidia.com/gpu"
POOL = PoolSpec(
    1, "elastic", {POOL_LABEL: "elastic"}, GPU, "interactive-inference", headroom=8, interactive=True
)


def node(name: str, gpus: int = 8) -> dict:
    return {
        "metadata": {"name": name, "labels": {POOL_LABEL: "elastic"}},
        "spec": {},
        "status": {"allocatable": {GPU: str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(name: str, gpus: int, *, node_name=None, ns="team", labels=None, gated=False, age=0) -> dict:
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"phase": "Running" if node_name else "Pending"}
    if not node_name:
        reason = "SchedulingGated" if gated else "Unschedulable"
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": reason}]
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}, "creationTimestamp": created},
        "spec": {
            "nodeName": node_name,
            "nodeSelector": {POOL_LABEL: "elastic"},
            "containers": [{"resources": {"limits": {GPU: str(gpus)}}}],
        },
        "status": status,
    }


WARM = {Label.WARM_HEADROOM: "elastic"}


def test_placeholders_hold_warm_gpus_but_are_no_ones_use_and_no_queue():
    nodes = [node("a"), node("b")]
    pods = [
        pod("warm-1", 8, node_name="a", ns="gpu-portal-warm-headroom", labels=WARM),
        pod("warm-2", 8, ns="gpu-portal-warm-headroom", labels=WARM, age=300),
        pod("serve", 2, node_name="b", age=1),
        pod("wants-node", 8, age=120),
        pod("wants-quota", 1, gated=True, age=30),
    ]
    figures = compute(nodes, pods, [POOL], {}, NOW, created_since=NOW - timedelta(seconds=2)).pools[1]
    assert figures.placeholder_gpus == 8
    assert figures.placeholders_pending == 1
    # The placeholder holds its GPUs on the node, like any pod; it is not a namespace's use.
    assert figures.gpus_requested == 10 and figures.gpus_free == 6
    assert set(figures.namespaces) == {"team"}
    # Pending: the placeholder waiting for a node is the autoscaler's work, not queue wait.
    assert figures.pods_pending == 2
    assert (figures.pods_waiting_node, figures.pods_waiting_quota) == (1, 1)
    assert figures.queue_wait_max_seconds == 120
    # Free GPUs plus placeholder GPUs cover the headroom: an interactive pod preempts them.
    assert not figures.headroom_short
    # New since the last publish: only the pod created a second ago (placeholders never count).
    assert figures.new_pods == {"team/serve": 2}


def test_poisson_quantile():
    assert poisson_quantile(0) == 0
    assert poisson_quantile(1.0) == 4  # P(N <= 3) = 0.981, P(N <= 4) = 0.996
    assert poisson_quantile(0.05) == 1


def test_advice_none_when_a_node_comes_up_within_the_target():
    advice = warm_pool_advice(
        target_seconds=60,
        bringups=[40, 45, 50],
        loads=[20],
        arrivals_per_hour=30,
        gpus_per_hour=60,
        unit_cost=Decimal("6.90"),
        configured=8,
    )
    assert advice.recommended == 0 and advice.hourly_cost == 0
    assert advice.configured_cost == Decimal("55.20")
    assert "inside the 60s target" in advice.reason


def test_advice_covers_the_pods_arriving_during_one_bring_up():
    # 120 s to a node, over the 60 s target; 30 pods/h of 2 GPUs: 1 pod expected per bring-up, and 4
    # cover it with 99% probability -> 8 GPUs.
    advice = warm_pool_advice(
        target_seconds=60,
        bringups=[100, 110, 120],
        loads=[30, 90],
        arrivals_per_hour=30,
        gpus_per_hour=60,
        unit_cost=Decimal("6.90"),
        configured=0,
    )
    assert advice.bringup_p95 == 120
    assert advice.expected_arrivals == pytest.approx(1.0)
    assert (advice.covered_arrivals, advice.recommended) == (4, 8)
    assert advice.hourly_cost == Decimal("55.20")
    # Loading alone (90 s) exceeds the target: warm GPUs cannot meet it.
    assert advice.load_exceeds_target
    # Nothing arrived yet: still one pod of warm capacity rather than a whole bring-up of waiting.
    quiet = warm_pool_advice(
        target_seconds=60,
        bringups=[120],
        loads=[],
        arrivals_per_hour=0,
        gpus_per_hour=0,
        unit_cost=Decimal(1),
        configured=0,
    )
    assert quiet.recommended == 1
    unknown = warm_pool_advice(
        target_seconds=60,
        bringups=[],
        loads=[],
        arrivals_per_hour=5,
        gpus_per_hour=5,
        unit_cost=Decimal(1),
        configured=0,
    )
    assert unknown.recommended is None and "not known" in unknown.reason


def spec(gpus: int, per_node: int) -> manifests.WarmSpec:
    return manifests.WarmSpec(
        pool="elastic",
        namespace="gpu-portal-warm-headroom",
        image="registry.example.com/llm/pause:3.10",
        priority_class="gpu-portal-warm-headroom",
        node_selector={POOL_LABEL: "elastic"},
        taint=pool_taint("elastic"),
        gpu_taint=dict(GPU_TAINT),
        resource=GPU,
        gpus=gpus,
        gpus_per_node=per_node,
    )


def test_placeholders_are_sized_in_the_node_shape():
    assert manifests.warm_chunks(0, 8) == {}
    assert manifests.warm_chunks(8, 8) == {8: 1}
    assert manifests.warm_chunks(12, 8) == {8: 1, 4: 1}
    assert manifests.warm_chunks(24, 8) == {8: 3}
    assert manifests.warm_chunks(4, 0) == {4: 1}
    deployments = manifests.warm_placeholders(spec(12, 8))
    assert [(d["metadata"]["name"], d["spec"]["replicas"]) for d in deployments] == [
        ("warm-elastic-8g", 1),
        ("warm-elastic-4g", 1),
    ]
    pod = deployments[0]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "gpu-portal-warm-headroom"
    assert pod["nodeSelector"] == {POOL_LABEL: "elastic"}
    assert {(t["key"], t["value"], t["effect"]) for t in pod["tolerations"]} == {
        (GPU_TAINT["key"], "true", "NoSchedule"),
        (POOL_LABEL, "elastic", "NoSchedule"),
    }
    container = pod["containers"][0]
    assert container["resources"]["requests"][GPU] == container["resources"]["limits"][GPU] == "8"
    assert deployments[0]["spec"]["strategy"] == {"type": "Recreate"}
    assert deployments[0]["metadata"]["labels"][Label.WARM_HEADROOM] == "elastic"
    priority = manifests.warm_priority_class("gpu-portal-warm-headroom")
    assert (priority["value"], priority["preemptionPolicy"]) == (-1, "Never")
    # Below every workload class.
    assert priority["value"] < min(p.value for p in manifests.PRIORITIES.values())
    assert (
        manifests.warm_namespace("gpu-portal-warm-headroom")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "restricted"
    )


def test_simulated_model_load_comes_from_parameters_and_precision_only_where_asked():
    assert rules.simulated_load_seconds(Decimal("7"), "fp16", gib_per_second=2.0, base_seconds=5) == 12
    assert rules.simulated_load_seconds(Decimal("70"), "fp16", gib_per_second=2.0, base_seconds=5) == 71
    assert rules.simulated_load_seconds(None, "", gib_per_second=2.0, base_seconds=5) == 5
    contract = load_contract()
    plain = quota_manifests.ServingSpec(
        deployment_id=1, name="chat", model_name="m", image="i", replicas=1, gpus_per_replica=1
    )
    annotations = quota_manifests.serving_deployment(contract, plain)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert "gpu-portal.example.com/simulated-load-seconds" not in annotations
    simulated = quota_manifests.ServingSpec(
        deployment_id=1,
        name="chat",
        model_name="m",
        image="i",
        replicas=1,
        gpus_per_replica=1,
        simulated_load_seconds=12,
    )
    annotations = quota_manifests.serving_deployment(contract, simulated)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["gpu-portal.example.com/simulated-load-seconds"] == "12"
    # The very annotation the testbed's Stages read.
    assert load_testbed_module().LOAD_ANNOTATION == "gpu-portal.example.com/simulated-load-seconds"


def load_contract() -> quota_manifests.GrantContract:
    return quota_manifests.GrantContract(
        grant_id=1,
        namespace="ns",
        team="t",
        group="g",
        pool_class="interactive-inference",
        pool="elastic",
        pool_label_key=POOL_LABEL,
        node_selector={POOL_LABEL: "elastic"},
        accelerator="h100-80gb",
        accelerator_type="nvidia-h100",
        product="NVIDIA-H100-80GB-HBM3",
        resource=GPU,
        taint_key=POOL_LABEL,
        taint_value="elastic",
        taint_effect="NoSchedule",
        gpu_taint_key=GPU_TAINT["key"],
        priority_class_name="gpu-interactive-inference",
        zones=("zone-a",),
        gpus=1,
        max_gpus_per_pod=1,
        pods=21,
        cpu="8",
        memory="64Gi",
        default_request={},
        default_limit={},
    )


# --- the pool page and /metrics from a published inventory ----------------------------------------


@pytest.mark.django_db
def test_the_pool_page_shows_autoscaling_warm_headroom_and_the_advice(world):
    tb = load_testbed_module()
    topology = tb.load_topology()
    spec_h100 = next(p for p in topology["elasticPools"] if p["name"] == "interactive-h100")
    pool = factories.pool(
        "interactive-h100",
        PoolClass.INTERACTIVE,
        world.h100,
        capacity=32,
        headroom=8,
        node_groups=["interactive-h100"],
        cluster=world.interactive.cluster,
    )
    now = timezone.now()
    figures = compute([], [], [spec_of(pool)], {}, now)
    figures.pools[pool.pk].nodes_provisioning = 1
    figures.pools[pool.pk].node_bringup_last_seconds = 47
    figures.pools[pool.pk].node_bringup_p95_seconds = 52
    publish_state(pool.cluster_id, CollectorState.LIVE, figures)
    ClusterInventory.objects.create(
        cluster=pool.cluster,
        document=inventory_document(nodes=[], nodepools=[tb.render_nodepool(topology, spec_h100, 45)]),
        changed_at=now,
        autoscaler_state=AutoscalerState.UNAVAILABLE,
        autoscaler_message="The autoscaler's health endpoint: http://k/readyz did not answer.",
        autoscaler_since=now,
    )
    for i, seconds in enumerate((45, 50, 120)):
        NodeBringUp.objects.create(
            cluster=pool.cluster,
            node_group="interactive-h100",
            name=f"claim-{i}",
            created_at=now - timedelta(minutes=10 - i),
            ready_at=now - timedelta(minutes=9 - i),
            seconds=seconds,
        )
    WarmHeadroom.objects.create(
        pool=pool,
        gpus_wanted=8,
        gpus_held=0,
        pods_pending=1,
        conditions=[
            {
                "type": "Ready",
                "status": "False",
                "reason": "Provisioning",
                "message": "0 of 8 held",
                "lastTransitionTime": "",
            }
        ],
    )
    client = Client()
    client.force_login(world.alice)
    html = client.get(reverse("utilisation:pool", args=[pool.pk])).content.decode()
    assert 'data-autoscaler="unavailable"' in html and "Autoscaling unavailable" in html
    assert "Approvals still go by the last known node groups" in html
    assert 'data-node-group="interactive-h100"' in html
    assert spec_h100["instanceType"] in html
    assert "0 of 8 warm nvidia.com/gpu held on the cluster by placeholder pods; 1 placeholder waiting" in html
    assert 'data-condition="Ready" data-status="False"' in html
    assert "1 for a node" not in html  # no pod waits: the figures say 0
    assert "last 47s, p95 52s" in html
    # p95 of the bring-ups is 120 s, over the 60 s target: the advice asks for headroom and states why.
    assert "Sizing advice" in html and "Formula:" in html
    assert 'data-advice="1"' in html  # nothing has arrived yet: one pod of warm capacity
    # The dashboard card of an elastic pool shows its autoscaling too.
    dashboard = client.get(reverse("utilisation:dashboard")).content.decode()
    assert "1 node provisioning · 0 warm held · time to node 47s (p95 52s)" in dashboard

    metrics = {
        family.name: family
        for family in text_string_to_metric_families(client.get("/metrics").content.decode())
    }
    labels = {"cluster": pool.cluster.name, "pool": pool.name}
    for name, value in (
        ("nodes_provisioning", 1.0),
        ("node_bringup_p95_seconds", 52.0),
        ("placeholder_gpus", 0.0),
    ):
        family = metrics[f"gpu_portal_pool_{name}"]
        (sample,) = [s for s in family.samples if {k: s.labels[k] for k in labels} == labels]
        assert sample.value == value


def test_new_pods_are_those_stamped_since_the_last_publish_however_the_stamp_is_spelled():
    nodes = [node("a"), node("b")]

    def stamped(name: str, created: str) -> dict:
        p = pod(name, 1, node_name="a")
        p["metadata"]["creationTimestamp"] = created
        return p

    pods = [
        stamped("before", "2026-03-01T11:59:57Z"),
        stamped("second-before", "2026-03-01T11:59:58Z"),  # the second of created_since counts
        stamped("after", "2026-03-01T12:00:00Z"),
        stamped("offset-before", "2026-03-01T13:59:57+02:00"),
        stamped("offset-after", "2026-03-01T13:59:59+02:00"),
        stamped("fraction-after", "2026-03-01T11:59:59.500000Z"),
        stamped("unreadable", "yesterday"),
        pod("unstamped", 1, node_name="b") | {"metadata": {"name": "unstamped", "namespace": "team"}},
    ]
    since = datetime(2026, 3, 1, 11, 59, 59, 250000, tzinfo=UTC)
    figures = compute(nodes, pods, [POOL], {}, NOW, created_since=since).pools[1]
    assert set(figures.new_pods) == {
        "team/second-before", "team/after", "team/offset-after", "team/fraction-after"
    }  # fmt: skip
