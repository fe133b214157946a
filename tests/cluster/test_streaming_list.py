"""A cache lists by streaming against the real apiserver (a watch request that begins with the
current objects, KEP 3157), then watches from the bookmark that ends them."""

import pytest

from pools.kube import ops
from pools.kube.watch import KubeSource, ResourceCache
from tests.cluster.conftest import pod
from tests.testbed import unique_name, wait_until

pytestmark = pytest.mark.cluster


class CountingSource(KubeSource):
    """The real source, counting how it was asked: pages, watches or streams."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {"list": 0, "watch": 0, "stream": 0}

    def list(self, **kwargs):
        self.calls["list"] += 1
        return super().list(**kwargs)

    def watch(self, **kwargs):
        self.calls["watch"] += 1
        return super().watch(**kwargs)

    def stream(self, **kwargs):
        self.calls["stream"] += 1
        return super().stream(**kwargs)


def names(cache: ResourceCache) -> list[str]:
    return sorted(o["metadata"]["name"] for o in cache.snapshot())


def test_pods_are_listed_by_streaming_then_watched_from_its_end(testbed, k8s_namespace):
    cluster = testbed.admin
    app = unique_name("stream")

    def create(name: str) -> None:
        body = pod(name)
        body["metadata"] |= {"namespace": k8s_namespace, "labels": {"app": app}}
        ops.apply(cluster, body)

    for name in ("a", "b", "c"):
        create(name)
    source = CountingSource(cluster, "pods", label_selector=f"app={app}")
    cache = ResourceCache(source, transform=lambda p: {"metadata": p["metadata"]})
    cache.start()
    try:
        wait_until("the streaming list", lambda: cache.status().synced)
        assert names(cache) == ["a", "b", "c"]
        status = cache.status()
        assert status.lists == 1 and int(status.resource_version) > 0 and not status.stale
        create("d")
        ops.delete(cluster, "v1", "Pod", "a", k8s_namespace)
        wait_until("the stream's events", lambda: names(cache) == ["b", "c", "d"])
        assert source.calls["list"] == 0 and source.calls["stream"] == 1 and source.calls["watch"] >= 1
    finally:
        cache.stop()
