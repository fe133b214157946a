"""The collector's node-group watches against the testbed: Karpenter's NodePools become the inventory
the pre-flight reads, and an API the cluster does not serve is no node group rather than a stale cluster."""

import pytest

from pools.kube.watch import ApiSource, ResourceCache
from pools.models import AutoscalerState, ClusterInventory, CollectorState
from tests.collector import live_collector
from tests.testbed import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_an_api_the_cluster_does_not_serve_is_empty_not_stale(testbed):
    source = ApiSource(testbed.admin, "nosuch.example.com/v1", "things")
    cache = ResourceCache(source, watch_timeout=2)
    cache.start()
    try:
        status = wait_until("the first list", lambda: (s := cache.status()).synced and s)
        assert not status.stale and status.items == 0 and status.last_error == ""
        assert source.served is False
        # The empty watch ends after its timeout and lists again, still without an error.
        wait_until("a second list", lambda: cache.status().lists >= 2, timeout=20)
        assert not cache.status().stale
    finally:
        cache.stop()


def test_the_inventory_holds_the_nodes_and_the_testbeds_nodepools(testbed):
    cluster = testbed.cluster()
    with live_collector(cluster) as collector:
        assert collector.nodegroups.nodepools.source.served is True
        inventory = ClusterInventory.objects.get(cluster=cluster)
        groups = {g["name"]: g for g in inventory.document["node_groups"]}
        for spec in testbed.topology["elasticPools"]:
            group = groups[spec["name"]]
            assert group["kind"] == "karpenter"
            assert group["limits"] == {"nvidia.com/gpu": spec["limits"]["gpus"]}
            assert group["resources"] == {spec["instanceType"]: {"nvidia.com/gpu": spec["gpus"]}}
        names = {n for entry in inventory.document["nodes"] for n in entry["names"]}
        assert {"interactive-a100-zone-a-0", "batch-h100-zone-b-0"} <= names
        # Taints are in the inventory: the pre-flight needs them.
        entry = next(e for e in inventory.document["nodes"] if "interactive-a100-zone-a-0" in e["names"])
        assert {t["key"] for t in entry["taints"]} >= {
            "accelerator.platform.example.com/gpu",
            "accelerator.platform.example.com/pool",
        }
        # No health endpoint configured and nothing waiting: autoscaling is not confirmed, not "down".
        assert inventory.autoscaler_state == AutoscalerState.UNKNOWN
        assert cluster.utilisation.state == CollectorState.LIVE
