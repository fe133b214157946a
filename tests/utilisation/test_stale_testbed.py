"""Killing the apiserver marks the data stale on the page; it recovers by itself, relisting after
the 410 Gone that its too-old resourceVersion earns. Runs on a cluster of its own (not the shared
testbed, which other tests use meanwhile), created for this module and deleted after it."""

import base64
import json
import urllib.request

import pytest
from django.test import Client
from django.urls import reverse

from pools.kube import ops
from pools.models import Cluster, ClusterUtilisation, PoolClass, PoolUtilisation
from pools.utilisation.collector import ClusterCollector
from tests import factories
from tests.testbed import load_testbed_module, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

NAME = "gpu-portal-util"
POOL = "interactive-a100"  # 4 nodes of 8 A100s in the topology


@pytest.fixture(scope="module")
def own_cluster():
    tb = load_testbed_module()
    kubeconfig = tb.up(NAME)
    try:
        yield tb, kubeconfig.read_text()
    finally:
        tb.down(NAME)


def etcd_compact(tb) -> None:
    """Write a key outside the apiserver's prefix (so the revision moves past every resourceVersion
    the collector holds, even one a shutdown bookmark brought up to date), then compact etcd to it:
    every resourceVersion the collector knows is gone for good."""
    config = tb._kwok_config(NAME)
    etcd = next(c for c in config["components"] if c["name"] == "etcd")
    port = next(p["port"] for p in etcd["ports"] if p["name"] == "http")

    def call(path, body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    key, value = (base64.b64encode(text).decode() for text in (b"/utilisation-test/bump", b"1"))
    revision = call("/v3/kv/put", {"key": key, "value": value})["header"]["revision"]
    call("/v3/kv/compaction", {"revision": revision, "physical": True})


def dashboard(user) -> str:
    client = Client()
    client.force_login(user)
    return client.get(reverse("utilisation:dashboard")).content.decode()


def test_apiserver_outage_is_marked_stale_and_recovers_with_a_relist(world, own_cluster):
    tb, kubeconfig = own_cluster
    cluster = Cluster.objects.create(name="util-outage", kubeconfig=kubeconfig)
    pool = factories.pool(POOL, PoolClass.INTERACTIVE, world.a100, capacity=32, cluster=cluster)
    collector = ClusterCollector(cluster, interval=2, backoff_max=2)
    collector.start()
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "serve", "namespace": "default"},
            "spec": {
                "nodeSelector": {"accelerator.platform.example.com/pool": POOL},
                "tolerations": [
                    {"key": "accelerator.platform.example.com/gpu", "value": "true", "effect": "NoSchedule"},
                    {"key": "accelerator.platform.example.com/pool", "value": POOL, "effect": "NoSchedule"},
                ],
                "containers": [{"name": "m", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
            },
        }
        ops.create(cluster, pod)

        def requested():
            live = PoolUtilisation.objects.filter(pool=pool).first()
            return live and (live.gpus_allocatable, live.gpus_requested)

        wait_until("the pod's 2 GPUs", lambda: requested() == (32, 2))
        assert 'data-freshness="live"' in dashboard(world.admin)
        lists_before = ClusterUtilisation.objects.get(cluster=cluster).lists

        tb.stop_apiserver(NAME)

        def stale_page():
            html = dashboard(world.admin)
            return html if 'data-freshness="stale"' in html else None

        html = wait_until("the page to say stale", stale_page)
        assert "The cluster has not answered since" in html
        assert "unreachable" in html  # the admin sees why
        assert 'data-requested="2"' in html  # the last known figures stay, marked

        # Every resourceVersion the collector holds is now compacted away: resuming must relist.
        etcd_compact(tb)
        tb.start_apiserver(NAME)
        wait_until(
            "the page to be live again", lambda: 'data-freshness="live"' in dashboard(world.admin), timeout=60
        )
        # Nodes, pods and namespaces each answered 410 Gone and listed again.
        assert [cache.status().lists for cache in collector.caches] == [2, 2, 2]
        assert ClusterUtilisation.objects.get(cluster=cluster).lists == lists_before + 3
        assert requested() == (32, 2)

        # And it keeps following changes.
        ops.delete(cluster, "v1", "Pod", "serve", "default")
        wait_until("the pod's GPUs to be released", lambda: requested() == (32, 0))
    finally:
        collector.stop()
