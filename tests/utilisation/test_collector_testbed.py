"""The collector against the real apiserver and scheduler, on private fake nodes whose figures are
worked out by hand: 3 nodes of 4 GPUs."""

from datetime import datetime

import pytest

from pools.kube import ops
from pools.models import ClusterUtilisation, CollectorState, PoolClass, PoolUtilisation
from pools.utilisation.collector import ClusterCollector
from tests import factories
from tests.testbed import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def figures(pool):
    live = PoolUtilisation.objects.filter(pool=pool).first()
    if live is None:
        return None
    return {
        "allocatable": live.gpus_allocatable,
        "requested": live.gpus_requested,
        "free": live.gpus_free,
        "stranded": live.gpus_stranded,
        "largest": live.largest_free_block,
        "empty_nodes": live.nodes_fully_free,
        "pending": live.pods_pending,
    }


@pytest.fixture
def collector():
    started = []

    def start(cluster):
        c = ClusterCollector(cluster, interval=2, backoff_max=2)
        c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_pool_figures_follow_scheduling_on_the_testbed(
    world, testbed, private_pool, k8s_namespace, collector
):
    cluster = testbed.cluster()
    a, b, c = private_pool.add_nodes(3, gpus=4)
    pool = factories.pool(
        private_pool.name, PoolClass.EXPERIMENTATION, world.a100, capacity=12, cluster=cluster
    )
    factories.active_grant(world.vision, pool, 8, k8s_namespace)
    collector(cluster)
    wait_until("the collector's first figures", lambda: figures(pool))
    assert ClusterUtilisation.objects.get(cluster=cluster).state == CollectorState.LIVE
    assert figures(pool) == {
        "allocatable": 12,
        "requested": 0,
        "free": 12,
        "stranded": 0,
        "largest": 4,
        "empty_nodes": 3,
        "pending": 0,
    }

    for name, gpus, node in (("a-2", 2, a), ("a-1", 1, a), ("b-4", 4, b), ("wants-8", 8, None)):
        ops.create(
            cluster,
            {**private_pool.pod(name, gpus, node), "metadata": {"name": name, "namespace": k8s_namespace}},
        )
    # a: 3 of 4 used, 1 stranded; b full; c empty. Nobody can place 8 GPUs on a 4-GPU node.
    expected = {
        "allocatable": 12,
        "requested": 7,
        "free": 5,
        "stranded": 1,
        "largest": 4,
        "empty_nodes": 1,
        "pending": 1,
    }
    wait_until(f"figures {expected}", lambda: figures(pool) == expected)

    live = PoolUtilisation.objects.get(pool=pool)
    [waiting] = live.detail["pending"]
    assert (waiting["name"], waiting["gpus"]) == ("wants-8", 8)
    created = ops.get(cluster, "v1", "Pod", "wants-8", k8s_namespace)["metadata"]["creationTimestamp"]
    created_at = datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert waiting["wait_seconds"] == pytest.approx((live.computed_at - created_at).total_seconds(), abs=0.01)
    [usage] = live.detail["namespaces"]
    assert (usage["namespace"], usage["team"], usage["gpus"], usage["granted"], usage["pending_gpus"]) == (
        k8s_namespace,
        "vision",
        7,
        8,
        8,
    )
    nodes = {n["name"]: (n["requested"], n["free"]) for n in live.detail["nodes"]}
    assert nodes == {a: (3, 1), b: (4, 0), c: (0, 4)}

    ops.delete(cluster, "v1", "Pod", "b-4", k8s_namespace)
    expected = {
        "allocatable": 12,
        "requested": 3,
        "free": 9,
        "stranded": 1,
        "largest": 4,
        "empty_nodes": 2,
        "pending": 1,
    }
    wait_until(f"figures {expected}", lambda: figures(pool) == expected)

    # Cordoning a node takes its free GPUs out of the figures.
    ops.call(cluster, lambda conn: conn.core.patch_node(c, {"spec": {"unschedulable": True}}))
    wait_until("the cordon", lambda: (figures(pool) or {}).get("free") == 5)
    assert PoolUtilisation.objects.get(pool=pool).nodes_cordoned == 1
