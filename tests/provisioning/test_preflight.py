"""Pre-flight at approval against the real testbed: the pool's selector must match Ready nodes that
carry the pool's taint, or a node group that makes them (the seed's failure mode "selectors that match
no node group"). It reads the collector's live inventory: a live cluster costs no request, and one the
collector cannot reach is refused at once with the collector's reason."""

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from pools import services as pool_services
from pools.kube import ops
from pools.kube.objects import POOL_LABEL
from pools.models import (
    Accelerator,
    Cluster,
    ClusterInventory,
    ClusterUtilisation,
    CollectorState,
    NodePool,
    PoolClass,
)
from pools.services import pool_preflight_refusal
from portal.models import AuditEvent
from quotas import services
from quotas.models import Grant
from quotas.states import RequestState
from tests import factories
from tests.collector import live_collector
from tests.provisioning.conftest import Org
from tests.provisioning.support import free_port
from tests.testbed import wait_until

pytestmark = pytest.mark.cluster


def l4_pool(org: Org, name: str, taint_value: str | None = None) -> NodePool:
    l4 = Accelerator.objects.create(
        slug="l4-24gb",
        name="NVIDIA L4",
        product="NVIDIA-L4",
        type_label="nvidia-l4",
        memory_gib=24,
        hourly_cost=1,
    )
    pool = factories.pool(name, PoolClass.EMBEDDING, l4, capacity=8, cluster=org.cluster)
    if taint_value is not None:
        pool.taint_value = taint_value
        pool.save()
    return pool


def test_pool_on_ready_tainted_nodes_passes(org: Org) -> None:
    assert pool_preflight_refusal(pool=org.interactive) is None
    assert pool_preflight_refusal(pool=org.batch) is None


def test_selector_matching_no_node_refuses_the_approval(org: Org) -> None:
    name = f"prv-nowhere-{secrets.token_hex(3)}"
    l4_pool(org, name)
    req = factories.request(
        org.member, org.team, Accelerator.objects.get(slug="l4-24gb"), gpus=2, pool_class=PoolClass.EMBEDDING
    )
    with pytest.raises(ValidationError) as exc:
        services.capacity_request_approve(capacity_request=req, actor=org.admin)
    assert exc.value.code == "preflight"
    assert (
        f"no node of cluster {org.cluster.name} matches its selector {POOL_LABEL}={name}" in exc.value.message
    )
    # The testbed's Karpenter NodePools are named with the labels that rule them out.
    assert "no node group can make one" in exc.value.message
    for spec in org.testbed.topology["elasticPools"]:
        assert f"NodePool {spec['name']} makes nodes with {POOL_LABEL}={spec['name']}" in exc.value.message
    req.refresh_from_db()
    assert req.state == RequestState.PENDING_PLATFORM
    assert not Grant.objects.filter(request=req).exists()


def test_nodes_without_the_pool_taint_refuse(org: Org) -> None:
    # The real embedding nodes, but a pool record expecting another taint value.
    pool = l4_pool(org, "embedding-l4", taint_value="embedding-l4-dedicated")
    refusal = pool_preflight_refusal(pool=pool)
    assert refusal is not None
    assert "embedding-l4-zone-a-0, embedding-l4-zone-b-0 lack the pool taint" in refusal
    assert f"{POOL_LABEL}=embedding-l4-dedicated:NoSchedule" in refusal


@pytest.fixture
def cordoned_node(org: Org) -> Iterator[str]:
    """The only node of its pool, cordoned (kwok keeps every node of the testbed Ready)."""
    pool = f"prv-cordoned-{secrets.token_hex(3)}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": pool, "labels": {POOL_LABEL: pool, "gpu-portal.example.com/test": "true"}},
        "spec": {
            "unschedulable": True,
            "taints": [{"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}],
        },
    }
    ops.apply(org.k8s, node)
    wait_until("the collector to see the cordoned node", lambda: in_inventory(org.cluster, pool))
    yield pool
    ops.delete(org.k8s, "v1", "Node", pool)


def in_inventory(cluster: Cluster, node: str) -> bool:
    document = ClusterInventory.objects.get(cluster=cluster).document
    return any(node in entry["names"] for entry in document["nodes"])


def test_pool_without_schedulable_nodes_refuses(org: Org, cordoned_node: str) -> None:
    pool = l4_pool(org, cordoned_node)
    refusal = pool_preflight_refusal(pool=pool)
    assert refusal is not None
    assert refusal.startswith(
        f"Pool {pool}: none of the 1 nodes matching {POOL_LABEL}={cordoned_node} is Ready and schedulable, "
        "and no node group can make one"
    )


def test_a_live_cluster_costs_the_pre_flight_no_request(org: Org, monkeypatch) -> None:
    def no_cluster(*args, **kwargs):
        raise AssertionError("the pre-flight asked the cluster")

    with monkeypatch.context() as patched:
        for name in ("list_objects", "get", "call", "server_version"):
            patched.setattr(pool_services.ops, name, no_cluster)
        assert pool_preflight_refusal(pool=org.interactive) is None
        grant = org.approve(gpus=1)
    assert grant.pool == org.interactive


def test_a_cluster_no_collector_reports_on_is_refused(org: Org) -> None:
    unseen = Cluster.objects.create(name="unseen", api_url="https://127.0.0.1:6443")
    refusal = pool_preflight_refusal(
        pool=factories.pool("interactive-a100", PoolClass.INTERACTIVE, org.a100, cluster=unseen)
    )
    assert refusal is not None
    assert refusal.startswith("Cannot check pool unseen/interactive-a100 on cluster unseen: the collector")
    assert "has not reported on this cluster yet" in refusal


def stale(cluster: Cluster) -> ClusterUtilisation | None:
    status = ClusterUtilisation.objects.filter(cluster=cluster).first()
    return status if status is not None and status.state == CollectorState.STALE else None


def test_clusters_the_collector_cannot_reach_are_refused_with_its_reason(org: Org) -> None:
    bare = Cluster.objects.create(name="bare", api_url="https://127.0.0.1:6443")
    silent = Cluster.objects.create(name="silent", api_url=f"http://127.0.0.1:{free_port()}", token="t")
    for cluster, why in ((bare, "no credentials"), (silent, "unreachable")):
        pool = factories.pool("interactive-a100", PoolClass.INTERACTIVE, org.a100, cluster=cluster)
        with live_collector(cluster, wait=False):
            wait_until(f"the collector to mark {cluster.name} stale", lambda cluster=cluster: stale(cluster))
            refusal = pool_preflight_refusal(pool=pool)
        assert refusal is not None
        assert refusal.startswith(
            f"Cannot check pool {cluster.name}/interactive-a100 on cluster {cluster.name}: the cluster has "
            "not answered the collector since"
        )
        assert why in refusal


def test_a_collector_that_stopped_reporting_is_refused(org: Org) -> None:
    cluster = org.testbed.cluster()
    pool = factories.pool("interactive-a100", PoolClass.INTERACTIVE, org.a100, cluster=cluster)
    with live_collector(cluster):
        assert pool_preflight_refusal(pool=pool) is None
    # The collector is gone; its last report grows old.
    ClusterUtilisation.objects.filter(cluster=cluster).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    refusal = pool_preflight_refusal(pool=pool)
    assert refusal is not None
    assert refusal.startswith(
        f"Cannot check pool {pool} on cluster {cluster.name}: the collector last reported 5 min ago"
    )
    assert refusal.endswith("Is the collector running?")


def test_auto_approval_falls_back_to_a_human_when_the_pre_flight_fails(org: Org, settings) -> None:
    settings.PORTAL_AUTO_APPROVAL = {PoolClass.EMBEDDING.value: {"max_gpus": 4, "max_days": 7}}
    l4_pool(org, f"prv-nowhere-{secrets.token_hex(3)}")
    now = timezone.now()
    req = factories.request(
        org.member,
        org.team,
        Accelerator.objects.get(slug="l4-24gb"),
        gpus=1,
        pool_class=PoolClass.EMBEDDING,
        starts_at=now,
        ends_at=now + timedelta(days=2),
    )
    assert req.state == RequestState.PENDING_PLATFORM
    note = AuditEvent.objects.get(action="capacity_request.submitted", object_id=str(req.pk)).message
    assert note.startswith("Not auto-approved: Pool ")
    assert "matches its selector" in note
