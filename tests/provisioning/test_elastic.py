"""Elastic pools against the real testbed with Karpenter (its kwok provider) running: approval of a pool
with zero nodes, a selector no node group satisfies, warm headroom held by placeholders and taken by an
interactive pod, model load against its budget, and Karpenter stopped and started again.

Each test makes its own Karpenter NodePool (rendered by the testbed's own renderer under a unique
name), so nothing depends on what other tests do to the topology's elastic pools; afterwards its
placeholders and the NodePool are deleted and the test waits until Karpenter has removed its nodes.
"""

import copy
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from pools.kube import ops
from pools.kube.objects import (
    INSTANCE_TYPE_LABEL,
    NODEPOOL_LABEL,
    POOL_LABEL,
    Label,
    condition_of,
    parse_time,
)
from pools.models import (
    AutoscalerState,
    Cluster,
    ClusterInventory,
    NodeBringUp,
    NodePool,
    PoolClass,
    PoolUtilisation,
    WarmHeadroom,
)
from quotas import services
from quotas.models import ServingDeployment
from tests import factories
from tests.provisioning.conftest import Org, Workers
from tests.provisioning.support import Worker, conditions, settled
from tests.provisioning.test_provisioning import gpu_pod
from tests.testbed import TEST_LABEL, unique_name, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

KARPENTER = "karpenter.sh/v1"
# Generous: the machine is shared with other builds and test runs.
PROVISION_TIMEOUT = 150.0
WARM_NAMESPACE = settings.PORTAL_WARM_HEADROOM["NAMESPACE"]


def seconds(start: str | datetime | None, end: str | datetime | None) -> float:
    def parse(value: str | datetime | None) -> datetime:
        parsed = value if isinstance(value, datetime) else parse_time(value)
        assert parsed is not None, value
        return parsed

    return (parse(end) - parse(start)).total_seconds()


# --- private elastic pools ------------------------------------------------------------------------


class ElasticPools:
    def __init__(self, org: Org) -> None:
        self.org = org
        self.names: list[str] = []

    def make(self, *, headroom: int = 0, limit: int = 32, **pool_fields: Any) -> NodePool:
        """A Karpenter NodePool like the topology's interactive-h100 (zone-a only) under a unique name,
        and the portal's pool for it, linked as inventory sync links them."""
        testbed = self.org.testbed
        spec = copy.deepcopy(
            next(p for p in testbed.topology["elasticPools"] if p["name"] == "interactive-h100")
        )
        spec.update(name=unique_name("ep"), zones=["zone-a"], limits={"gpus": limit}, consolidateAfter="30s")
        nodepool = testbed.render_nodepool(spec)
        nodepool["metadata"]["labels"][TEST_LABEL] = "true"
        # Not the testbed's own: `up` deletes NodePools it manages and no longer describes.
        nodepool["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "gpu-portal-tests"
        ops.apply(self.org.k8s, nodepool)
        self.names.append(spec["name"])
        self.spec = spec
        wait_until(
            f"Karpenter to call NodePool {spec['name']} Ready",
            lambda: (
                (
                    condition_of(ops.get(self.org.k8s, KARPENTER, "NodePool", spec["name"]) or {}, "Ready")
                    or {}
                ).get("status")
                == "True"
            ),
            timeout=60,
        )
        wait_until(
            f"the collector to see NodePool {spec['name']}",
            lambda: inventory_groups(self.org.cluster).get(spec["name"], False),
        )
        return factories.pool(
            spec["name"],
            PoolClass.INTERACTIVE,
            self.org.h100,
            capacity=limit,
            headroom=headroom,
            cluster=self.org.cluster,
            node_groups=[spec["name"]],
            **pool_fields,
        )

    def cleanup(self) -> None:
        k8s = self.org.k8s
        NodePool.objects.filter(name__in=self.names).update(headroom_gpus=0, enabled=False)
        for name in self.names:
            for deployment in ops.list_objects(
                k8s,
                "apps/v1",
                "Deployment",
                namespace=WARM_NAMESPACE,
                label_selector=f"{Label.WARM_HEADROOM}={name}",
            ):
                ops.delete(k8s, "apps/v1", "Deployment", deployment["metadata"]["name"], WARM_NAMESPACE)
            ops.delete(k8s, KARPENTER, "NodePool", name)
        for name in self.names:
            wait_until(
                f"Karpenter to remove the nodes of NodePool {name}",
                lambda name=name: (
                    not ops.list_objects(k8s, "v1", "Node", label_selector=f"{NODEPOOL_LABEL}={name}")
                ),
                timeout=PROVISION_TIMEOUT,
            )


def inventory_groups(cluster: Cluster) -> dict[str, bool | None]:
    """Node group name -> whether it may launch nodes (Karpenter did not call it not Ready), as the
    collector's inventory has it."""
    inventory = ClusterInventory.objects.filter(cluster=cluster).first()
    groups = (inventory.document.get("node_groups") or []) if inventory else []
    return {g["name"]: g.get("ready") is not False for g in groups}


@pytest.fixture
def elastic(org: Org) -> Iterator[ElasticPools]:
    pools = ElasticPools(org)
    yield pools
    pools.cleanup()


def pool_nodes(org: Org, pool: NodePool) -> list[dict[str, Any]]:
    return ops.list_objects(org.k8s, "v1", "Node", label_selector=f"{NODEPOOL_LABEL}={pool.name}")


def running(org: Org, namespace: str, name: str) -> dict[str, Any] | None:
    pod = ops.get(org.k8s, "v1", "Pod", name, namespace)
    return pod if pod and (pod.get("status") or {}).get("phase") == "Running" else None


def contract_pod(namespace: str, pool: NodePool, gpus: int) -> dict[str, Any]:
    return gpu_pod(namespace, gpus=gpus, pool=pool.name, tolerate=(pool.name,))


def placeholders(org: Org, pool: NodePool) -> list[dict[str, Any]]:
    return ops.list_objects(
        org.k8s, "v1", "Pod", namespace=WARM_NAMESPACE, label_selector=f"{Label.WARM_HEADROOM}={pool.name}"
    )


# --- approval and provisioning on a pool with no node ----------------------------------------------


def test_a_pool_with_zero_nodes_is_approved_and_karpenter_makes_the_node_a_pod_needs(
    org: Org, elastic: ElasticPools, worker, wait_for
) -> None:
    pool = elastic.make()
    assert pool_nodes(org, pool) == []
    grant = org.approve(gpus=2, accelerator=org.h100)
    assert grant.pool == pool
    grant = wait_for("the grant to become active", lambda: settled(grant))

    pod = contract_pod(grant.namespace, pool, gpus=2)
    ops.create(org.k8s, pod)
    live = wait_for(
        "the pod to run on a node Karpenter brought up",
        lambda: running(org, grant.namespace, pod["metadata"]["name"]),
        PROVISION_TIMEOUT + org.testbed.node_bringup_seconds,
    )
    node = org.read("Node", live["spec"]["nodeName"])
    labels = node["metadata"]["labels"]
    assert labels[NODEPOOL_LABEL] == pool.name
    assert labels[POOL_LABEL] == pool.name
    assert labels[INSTANCE_TYPE_LABEL] == elastic.spec["instanceType"]
    # The node became Ready only after the simulated bring-up, and the collector recorded it.
    bringup = wait_for(
        "the node's bring-up to be recorded",
        lambda: NodeBringUp.objects.filter(cluster=org.cluster, node_group=pool.name).first(),
    )
    assert bringup.seconds >= org.testbed.node_bringup_seconds
    assert bringup.instance_type == elastic.spec["instanceType"]
    live_figures = wait_for(
        "the pool's figures to show the node and its bring-up",
        lambda: PoolUtilisation.objects.filter(
            pool=pool, nodes_ready=1, node_bringup_last_seconds__gt=0
        ).first(),
    )
    assert live_figures.gpus_requested == 2
    assert live_figures.node_bringup_last_seconds == bringup.seconds


def test_a_selector_no_node_group_satisfies_is_refused_with_the_node_groups_named(
    org: Org, elastic: ElasticPools
) -> None:
    pool = elastic.make()
    NodePool.objects.filter(pk=pool.pk).update(node_selector={POOL_LABEL: f"{pool.name}-typo"})
    req = factories.request(org.member, org.team, org.h100, gpus=2)
    with pytest.raises(ValidationError) as refused:
        services.capacity_request_approve(capacity_request=req, actor=org.admin)
    message = refused.value.message
    assert refused.value.code == "preflight"
    assert f"matches its selector {POOL_LABEL}={pool.name}-typo" in message
    assert "no node group can make one" in message
    # Every node group is named with the label value that rules it out: the private one too.
    for name in [pool.name, *(p["name"] for p in org.testbed.topology["elasticPools"])]:
        assert f"NodePool {name} makes nodes with {POOL_LABEL}={name}" in message


# --- warm headroom -------------------------------------------------------------------------------


def warm(pool: NodePool, held: int) -> WarmHeadroom | None:
    row = WarmHeadroom.objects.filter(pool=pool, gpus_held=held, gpus_wanted=held).first()
    return row if row and conditions(row).get("Ready") == ("True", "WarmHeld") else None


def test_warm_headroom_is_held_by_placeholders_and_an_interactive_pod_takes_it_at_once(
    org: Org, elastic: ElasticPools, worker, wait_for
) -> None:
    per_node = int(elastic_shape(org))
    pool = elastic.make(headroom=per_node)
    grant = org.approve(gpus=per_node, accelerator=org.h100)
    grant = wait_for("the grant to become active", lambda: settled(grant))

    # H GPUs of placeholders run: the autoscaler brought up a node for them.
    row = wait_for(
        f"{per_node} warm GPUs held",
        lambda: warm(pool, per_node),
        PROVISION_TIMEOUT + org.testbed.node_bringup_seconds,
    )
    assert row.placeholders == [{"name": f"warm-{pool.name}-{per_node}g", "gpus": per_node, "replicas": 1}]
    (placeholder,) = placeholders(org, pool)
    warm_node = placeholder["spec"]["nodeName"]
    assert placeholder["spec"]["priorityClassName"] == settings.PORTAL_WARM_HEADROOM["PRIORITY_CLASS"]
    wait_for(
        "the figures to count the placeholder's GPUs",
        lambda: PoolUtilisation.objects.filter(pool=pool, placeholder_gpus=per_node, pods_pending=0).first(),
    )

    # An interactive pod of the grant takes the warm node at once, by preempting the placeholder.
    pod = contract_pod(grant.namespace, pool, gpus=per_node)
    ops.create(org.k8s, pod)
    live = wait_for(
        "the interactive pod to run", lambda: running(org, grant.namespace, pod["metadata"]["name"])
    )
    assert live["spec"]["nodeName"] == warm_node
    scheduled_at = condition_of(live, "PodScheduled")["lastTransitionTime"]

    # The placeholders return on a replacement node once it is Ready.
    wait_for(
        "the placeholders to hold the warm GPUs again on a new node",
        lambda: (
            warm(pool, per_node)
            and [p["spec"].get("nodeName") for p in placeholders(org, pool)] not in ([warm_node], [None], [])
        ),
        PROVISION_TIMEOUT + org.testbed.node_bringup_seconds,
    )
    (replacement,) = placeholders(org, pool)
    new_node = org.read("Node", replacement["spec"]["nodeName"])
    assert new_node["metadata"]["labels"][NODEPOOL_LABEL] == pool.name
    ready_at = condition_of(new_node, "Ready")["lastTransitionTime"]
    # The interactive pod ran while the replacement was still being brought up.
    assert seconds(scheduled_at, ready_at) > 0, (scheduled_at, ready_at)
    assert seconds(new_node["metadata"]["creationTimestamp"], ready_at) >= org.testbed.node_bringup_seconds
    # The collector records the bring-up once Karpenter marks the NodeClaim Initialized, which follows
    # the node's Ready by a moment; the record is eventual, so it is awaited rather than asserted at once.
    wait_for(
        "the collector to record the replacement's bring-up",
        lambda: NodeBringUp.objects.filter(cluster=org.cluster, node_group=pool.name).first(),
    )


def elastic_shape(org: Org) -> int:
    return next(p for p in org.testbed.topology["elasticPools"] if p["name"] == "interactive-h100")["gpus"]


def test_warm_headroom_drift_is_healed_and_audited(org: Org, elastic: ElasticPools, worker, wait_for) -> None:
    per_node = elastic_shape(org)
    pool = elastic.make(headroom=per_node)
    wait_for(
        f"{per_node} warm GPUs held",
        lambda: warm(pool, per_node),
        PROVISION_TIMEOUT + org.testbed.node_bringup_seconds,
    )
    name = f"warm-{pool.name}-{per_node}g"
    # Someone scales the placeholders away by hand; the sweep puts them back and says so.
    ops.call(
        org.k8s,
        lambda conn: conn.dynamic.resources.get(api_version="apps/v1", kind="Deployment").patch(
            name=name,
            namespace=WARM_NAMESPACE,
            body={"spec": {"replicas": 0}},
            content_type="application/merge-patch+json",
        ),
    )
    row = WarmHeadroom.objects.get(pool=pool)
    wait_for("the drift to be corrected", lambda: "warm_headroom.drift_corrected" in org.audit_actions(row))
    assert (ops.get(org.k8s, "apps/v1", "Deployment", name, WARM_NAMESPACE) or {})["spec"]["replicas"] == 1
    wait_for("the warm GPUs to be held again", lambda: warm(pool, per_node), PROVISION_TIMEOUT)

    # Headroom set to zero: the placeholders go.
    NodePool.objects.filter(pk=pool.pk).update(headroom_gpus=0)
    wait_for(
        "the placeholders to be removed",
        lambda: (
            not ops.list_objects(
                org.k8s,
                "apps/v1",
                "Deployment",
                namespace=WARM_NAMESPACE,
                label_selector=f"{Label.WARM_HEADROOM}={pool.name}",
            )
        ),
    )
    wait_for(
        "the warm headroom to say there is none",
        lambda: conditions(WarmHeadroom.objects.get(pool=pool))["Applied"] == ("True", "NoHeadroom"),
    )
    assert "warm_headroom.resized" in org.audit_actions(WarmHeadroom.objects.get(pool=pool))


# --- model load against its budget -----------------------------------------------------------------


@pytest.fixture
def loading_worker(workers: Workers) -> Iterator[Worker]:
    """A worker whose grants' model servers load for real on the testbed (the simulated load the
    kwok Stages read) with a 20 s load budget; the package's default worker is stopped meanwhile."""
    workers.default.stop()
    worker = workers.make(
        settings.CELERY_BROKER_URL,
        "loading",
        PORTAL_SIMULATED_MODEL_LOAD="true",
        PORTAL_MODEL_LOAD_BUDGET_SECONDS="20",
    )
    worker.start()
    yield worker
    worker.stop()


def serving(
    org: Org, wait_for: Callable[..., Any], *, parameters: str, gpus: int, name: str
) -> ServingDeployment:
    req = factories.request(
        org.member,
        org.team,
        org.a100,
        gpus=gpus,
        model_parameters_billion=Decimal(parameters),
        model_precision="fp16",
        gpus_per_replica=gpus,
    )
    grant = factories.approved_grant(req, org.admin)
    org.grants.append(grant)
    wait_for("the grant to become active", lambda: settled(grant))
    return services.serving_deployment_create(
        grant=grant,
        actor=org.member,
        name=name,
        model_name=f"model-{parameters}b",
        image="registry.example.com/llm/vllm:v0.6.3",
        replicas=1,
        gpus_per_replica=gpus,
    )


def test_model_load_within_its_budget_is_measured_and_one_over_it_fails_saying_both(
    org: Org, loading_worker: Worker, wait_for
) -> None:
    # 7B in fp16: 13 GiB of weights at 2 GiB/s plus 5 s of start = 12 s, within the 20 s budget.
    quick = serving(org, wait_for, parameters="7", gpus=1, name="quick")
    quick = wait_for(
        "the quick model to load",
        lambda: ServingDeployment.objects.filter(pk=quick.pk, ready_at__isnull=False).first(),
    )
    assert conditions(quick)["Ready"] == ("True", "AllReplicasReady")
    assert quick.load_seconds is not None and quick.load_seconds >= 12, quick.load_seconds

    # 70B in fp16: 130 GiB, 66 s + 5 s = 71 s, over the 20 s budget: the startup probe restarts it.
    slow = serving(org, wait_for, parameters="70", gpus=2, name="slow")

    def failed() -> ServingDeployment | None:
        fresh = ServingDeployment.objects.get(pk=slow.pk)
        return fresh if conditions(fresh).get("Ready") == ("False", "LoadBudgetExceeded") else None

    slow = wait_for("the slow model to exceed its budget", failed, 120)
    message = next(c["message"] for c in slow.conditions if c["type"] == "Ready")
    assert "20s" in message and "71s" in message, message
    assert slow.ready_at is None and slow.load_seconds is None


# --- Karpenter stopped ---------------------------------------------------------------------------


def autoscaler(cluster: Cluster, state: str) -> ClusterInventory | None:
    return ClusterInventory.objects.filter(cluster=cluster, autoscaler_state=state).first()


def test_karpenter_stopped_shows_autoscaling_unavailable_approvals_still_work_and_nothing_is_lost(
    org: Org, elastic: ElasticPools, worker, wait_for
) -> None:
    health = org.testbed.engine_ports["karpenterHealth"]
    Cluster.objects.filter(pk=org.cluster.pk).update(
        autoscaler_health_url=f"http://127.0.0.1:{health}/readyz"
    )
    pool = elastic.make()
    wait_for("autoscaling to be available", lambda: autoscaler(org.cluster, AutoscalerState.AVAILABLE))
    page = Client()
    page.force_login(org.admin)
    url = reverse("utilisation:pool", args=[pool.pk])
    assert "Autoscaling available" in page.get(url).content.decode()

    org.testbed.stop_karpenter()
    try:
        wait_for(
            "autoscaling to be unavailable", lambda: autoscaler(org.cluster, AutoscalerState.UNAVAILABLE)
        )
        body = page.get(url).content.decode()
        assert "Autoscaling unavailable" in body
        assert "Approvals still go by the last known node groups" in body

        # Approvals work from the last known node groups, and the grant is provisioned.
        grant = org.approve(gpus=1, accelerator=org.h100)
        assert grant.pool == pool
        grant = wait_for("the grant to become active", lambda: settled(grant))
        pod = contract_pod(grant.namespace, pool, gpus=1)
        ops.create(org.k8s, pod)
        wait_for(
            "the pod to wait for a node",
            lambda: PoolUtilisation.objects.filter(pool=pool, pods_waiting_node=1).first(),
        )
        assert pool_nodes(org, pool) == []
    finally:
        org.testbed.start_karpenter()

    wait_for("autoscaling to be available again", lambda: autoscaler(org.cluster, AutoscalerState.AVAILABLE))
    # Nothing was lost: the waiting pod gets its node, the grant is still active.
    wait_for(
        "the waiting pod to run",
        lambda: running(org, grant.namespace, pod["metadata"]["name"]),
        PROVISION_TIMEOUT + org.testbed.node_bringup_seconds,
    )
    assert settled(grant) is not None
    assert "Autoscaling available" in page.get(url).content.decode()
