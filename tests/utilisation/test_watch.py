"""The list+watch cache against a scripted source: relist on 410, reconnect with backoff, stale marking."""

import gc
import queue
import threading
import time

import pytest

from pools.kube.errors import Expired, Invalid, Unreachable
from pools.kube.watch import Backoff, ResourceCache

END = object()


def obj(name, rv, **extra):
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}, **extra}


class Stream:
    """A watch stream fed by the test; blocks like a real one until fed or closed."""

    def __init__(self):
        self.events = queue.Queue()
        self.closed = threading.Event()

    def __iter__(self):
        while not self.closed.is_set():
            try:
                item = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
        raise Unreachable("closed", reason="Unreachable")

    def close(self):
        self.closed.set()


class FakeSource:
    name = "fake/pods"

    def __init__(self, pages):
        self.pages = pages  # list of pages served by successive list calls (the last one repeats)
        self.list_calls = []
        self.watch_calls = []
        self.streams = queue.Queue()  # what successive watch calls get: a Stream or an exception

    def list(self, *, limit, continue_token):
        self.list_calls.append(continue_token)
        page = self.pages[0] if len(self.pages) == 1 else self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    def watch(self, *, resource_version, timeout_seconds):
        self.watch_calls.append(resource_version)
        item = self.streams.get(timeout=5)
        if isinstance(item, Exception):
            raise item
        return item


def page(rv, *names, cont=None):
    return {"items": [obj(n, rv) for n in names], "metadata": {"resourceVersion": str(rv), "continue": cont}}


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def run_cache():
    caches = []

    def start(source, **options):
        options.setdefault("backoff", Backoff(base=0.01, maximum=0.05))
        cache = ResourceCache(source, **options)
        cache.start()
        caches.append(cache)
        return cache

    yield start
    for cache in caches:
        cache.stop()


def names(cache):
    return sorted(o["metadata"]["name"] for o in cache.snapshot())


def test_lists_then_applies_watch_events(run_cache):
    source = FakeSource([page(10, "a", "b")])
    stream = Stream()
    source.streams.put(stream)
    changes = []
    cache = run_cache(source, on_change=lambda: changes.append(1))
    wait_for(lambda: cache.status().synced)
    assert names(cache) == ["a", "b"]
    stream.events.put({"type": "ADDED", "object": obj("c", 11)})
    stream.events.put({"type": "MODIFIED", "object": obj("a", 12, spec={"x": 1})})
    stream.events.put({"type": "DELETED", "object": obj("b", 13)})
    stream.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}})
    wait_for(lambda: cache.status().resource_version == "20")
    assert names(cache) == ["a", "c"]
    assert next(o for o in cache.snapshot() if o["metadata"]["name"] == "a")["spec"] == {"x": 1}
    assert source.watch_calls == ["10"]
    assert cache.status().lists == 1
    assert changes  # readers were woken


def test_a_410_in_the_stream_makes_it_list_again_and_stay_correct(run_cache):
    # Between the two lists "a" was deleted and "d" created while the watch could not follow.
    source = FakeSource([page(10, "a", "b"), page(50, "b", "d")])
    first, second = Stream(), Stream()
    source.streams.put(first)
    source.streams.put(second)
    cache = run_cache(source)
    wait_for(lambda: cache.status().synced)
    first.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})
    wait_for(lambda: cache.status().lists == 2)
    wait_for(lambda: len(source.watch_calls) == 2)
    assert names(cache) == ["b", "d"]
    assert source.watch_calls == ["10", "50"]
    assert not cache.status().stale  # a 410 is routine, not an outage


def test_a_410_answer_to_the_watch_request_makes_it_list_again(run_cache):
    source = FakeSource([page(10, "a"), page(30, "z")])
    source.streams.put(Expired("too old resource version: 10 (30)", reason="Expired", status=410))
    source.streams.put(Stream())
    cache = run_cache(source)
    wait_for(lambda: cache.status().lists == 2)
    assert names(cache) == ["z"]
    wait_for(lambda: source.watch_calls == ["10", "30"])


def test_an_expired_continue_token_restarts_the_list(run_cache):
    source = FakeSource(
        [
            page(10, "a", cont="t1"),
            Expired("continue token expired", reason="Expired", status=410),
            page(12, "a", cont="t2"),
            page(12, "b"),
        ]
    )
    source.streams.put(Stream())
    cache = run_cache(source)
    wait_for(lambda: cache.status().synced)
    assert source.list_calls == [None, "t1", None, "t2"]
    assert names(cache) == ["a", "b"]
    assert cache.status().resource_version == "12"


def test_an_unreachable_cluster_marks_the_cache_stale_and_it_recovers_by_itself(run_cache):
    source = FakeSource([page(10, "a")])
    first = Stream()
    source.streams.put(first)
    cache = run_cache(source)
    wait_for(lambda: cache.status().synced)
    # The connection breaks, and the next two attempts fail.
    source.streams.put(
        Unreachable("Cluster fake is unreachable: the connection was refused.", reason="Unreachable")
    )
    source.streams.put(
        Unreachable("Cluster fake is unreachable: the connection was refused.", reason="Unreachable")
    )
    first.events.put(
        Unreachable("Cluster fake is unreachable: the connection broke off.", reason="Unreachable")
    )
    wait_for(lambda: cache.status().stale)
    status = cache.status()
    assert "unreachable" in status.last_error
    assert status.stale_since is not None
    assert names(cache) == ["a"]  # the last known objects stay
    recovered = Stream()
    source.streams.put(recovered)
    wait_for(lambda: not cache.status().stale)
    # It resumed the watch where it was instead of listing again.
    assert source.watch_calls == ["10", "10", "10", "10"]
    assert cache.status().lists == 1
    recovered.events.put({"type": "ADDED", "object": obj("b", 11)})
    wait_for(lambda: names(cache) == ["a", "b"])


def test_other_errors_in_the_stream_are_typed(run_cache):
    source = FakeSource([page(10, "a")])
    first = Stream()
    source.streams.put(first)
    cache = run_cache(source)
    wait_for(lambda: cache.status().synced)
    source.streams.put(Stream())
    first.events.put(
        {
            "type": "ERROR",
            "object": {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd"},
        }
    )
    wait_for(lambda: len(source.watch_calls) == 2)
    assert cache.status().lists == 1
    wait_for(lambda: not cache.status().stale)


def test_transform_trims_cached_objects(run_cache):
    source = FakeSource([page(10, "a")])
    source.streams.put(Stream())
    cache = run_cache(source, transform=lambda o: {"metadata": {"name": o["metadata"]["name"]}})
    wait_for(lambda: cache.status().synced)
    assert cache.snapshot() == [{"metadata": {"name": "a"}}]


def test_stop_interrupts_a_blocked_watch():
    source = FakeSource([page(10, "a")])
    source.streams.put(Stream())
    cache = ResourceCache(source)
    cache.start()
    wait_for(lambda: cache.status().synced)
    cache.stop(timeout=2)
    assert not cache._thread.is_alive()


def test_backoff_grows_exponentially_with_jitter_up_to_its_ceiling():
    backoff = Backoff(base=1.0, maximum=8.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 1.0


def test_an_unexpected_failure_marks_it_stale_and_it_starts_over(run_cache):
    source = FakeSource([RuntimeError("bug"), page(10, "a")])
    source.streams.put(Stream())
    cache = run_cache(source)
    wait_for(lambda: cache.status().synced)
    assert names(cache) == ["a"]
    assert not cache.status().stale
    assert source.list_calls == [None, None]


class GcWatchingSource(FakeSource):
    """Records whether automatic garbage collection was on while each page was served."""

    def __init__(self, pages):
        super().__init__(pages)
        self.gc_enabled = []

    def list(self, *, limit, continue_token):
        self.gc_enabled.append(gc.isenabled())
        return super().list(limit=limit, continue_token=continue_token)


def test_a_list_pauses_automatic_garbage_collection_and_restores_it():
    source = GcWatchingSource([page(10, "a", cont="t1"), page(10, "b")])
    assert gc.isenabled()
    ResourceCache(source)._list()
    assert source.gc_enabled == [False, False]
    assert gc.isenabled()


def test_what_a_list_leaves_is_frozen_out_of_the_collectors_generations():
    source = GcWatchingSource([page(10, *(f"p{i}" for i in range(300)))])
    frozen = gc.get_freeze_count()
    cache = ResourceCache(source)
    cache._list()
    # Each cached object is at least its dict: all of them are out of reach of later collections.
    assert gc.get_freeze_count() - frozen >= len(cache.snapshot())
    assert gc.isenabled()


def test_a_failed_list_restores_garbage_collection_and_leaves_it_off_if_it_was():
    source = GcWatchingSource([page(10, "a", cont="t1"), Unreachable("down", reason="Unreachable")])
    with pytest.raises(Unreachable):
        ResourceCache(source)._list()
    assert gc.isenabled()
    gc.disable()
    try:
        ResourceCache(GcWatchingSource([page(10, "a")]))._list()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_list_again_keeps_what_a_watch_event_brought_when_the_object_did_not_change_since(run_cache):
    calls = []

    def transform(o):
        calls.append(o["metadata"]["name"])
        return {"metadata": o["metadata"]}

    source = FakeSource(
        [
            {"items": [obj("a", 5)], "metadata": {"resourceVersion": "10"}},
            {"items": [obj("a", 11)], "metadata": {"resourceVersion": "12"}},
        ]
    )
    first = Stream()
    source.streams.put(first)
    cache = run_cache(source, transform=transform)
    wait_for(lambda: cache.status().synced)
    first.events.put({"type": "MODIFIED", "object": obj("a", 11)})
    wait_for(lambda: calls == ["a", "a"])
    watched = cache.snapshot()[0]
    source.streams.put(Stream())
    first.events.put(Expired("too old resource version", reason="Expired", status=410))
    wait_for(lambda: cache.status().lists == 2)
    assert cache.snapshot()[0] is watched
    assert calls == ["a", "a"]


def test_an_object_listed_again_at_its_cached_resource_version_is_not_copied_again(run_cache):
    calls = []

    def transform(o):
        calls.append(o["metadata"]["name"])
        return {"metadata": o["metadata"]}

    unchanged = obj("a", 5)
    source = FakeSource(
        [
            {"items": [unchanged, obj("b", 6)], "metadata": {"resourceVersion": "10"}},
            {"items": [unchanged, obj("b", 7)], "metadata": {"resourceVersion": "12"}},
        ]
    )
    first = Stream()
    source.streams.put(first)
    cache = run_cache(source, transform=transform)
    wait_for(lambda: cache.status().synced)
    before = {o["metadata"]["name"]: o for o in cache.snapshot()}
    source.streams.put(Stream())
    first.events.put(Expired("too old resource version", reason="Expired", status=410))
    wait_for(lambda: cache.status().lists == 2)
    after = {o["metadata"]["name"]: o for o in cache.snapshot()}
    assert after["a"] is before["a"]
    assert after["b"]["metadata"]["resourceVersion"] == "7"
    assert calls == ["a", "b", "b"]


class StreamingSource(FakeSource):
    """A source that also lists by streaming: successive stream calls get what the test queued."""

    name = "fake/streamed"

    def __init__(self, pages=None):
        super().__init__(pages or [page(99, "paged")])
        self.stream_calls = 0
        self.initial = queue.Queue()

    def stream(self, *, timeout_seconds):
        self.stream_calls += 1
        item = self.initial.get(timeout=5)
        if isinstance(item, Exception):
            raise item
        return item


def initial_events(stream, rv, *names):
    for n in names:
        stream.events.put({"type": "ADDED", "object": obj(n, rv)})
    end = {"resourceVersion": str(rv), "annotations": {"k8s.io/initial-events-end": "true"}}
    stream.events.put({"type": "BOOKMARK", "object": {"metadata": end}})


def test_a_streaming_list_is_watched_from_its_end_bookmark_and_a_410_streams_again(run_cache):
    source = StreamingSource()
    first, second = Stream(), Stream()
    source.initial.put(first)
    source.initial.put(second)
    watch = Stream()
    source.streams.put(watch)
    source.streams.put(Stream())
    cache = run_cache(source)
    first.events.put({"type": "ADDED", "object": obj("a", 5)})
    first.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "6"}}})
    time.sleep(0.3)  # time to take the bookmark for the end, which it is not
    assert not cache.status().synced
    initial_events(first, 10, "b")
    wait_for(lambda: cache.status().synced)
    assert names(cache) == ["a", "b"] and cache.status().resource_version == "10"
    # The stream is done with; the watch is a watch of its own, from the end bookmark.
    wait_for(lambda: source.watch_calls == ["10"])
    assert first.closed.is_set()
    watch.events.put({"type": "DELETED", "object": obj("a", 11)})
    wait_for(lambda: names(cache) == ["b"])
    watch.events.put({"type": "ERROR", "object": {"code": 410, "message": "too old"}})
    initial_events(second, 20, "b", "c")
    wait_for(lambda: names(cache) == ["b", "c"])
    assert cache.status().lists == 2 and source.stream_calls == 2
    wait_for(lambda: source.watch_calls == ["10", "20"])
    assert source.list_calls == []


def test_a_cluster_that_refuses_streaming_lists_is_listed_in_pages(run_cache):
    source = StreamingSource([page(10, "a")])
    source.initial.put(Invalid("sendInitialEvents is forbidden", reason="Invalid", status=422))
    source.streams.put(Stream())
    cache = run_cache(source)
    wait_for(lambda: cache.status().synced)
    assert names(cache) == ["a"] and not cache.status().stale
    assert source.stream_calls == 1 and source.list_calls == [None] and source.watch_calls == ["10"]


def test_a_stream_that_ends_before_its_initial_events_do_gives_way_to_pages(run_cache):
    source = StreamingSource([page(10, "a")])
    stream = Stream()
    source.initial.put(stream)
    source.streams.put(Stream())
    cache = run_cache(source)
    stream.events.put({"type": "ADDED", "object": obj("x", 5)})
    stream.events.put(END)
    wait_for(lambda: cache.status().synced)
    assert names(cache) == ["a"]
    assert source.list_calls == [None] and source.watch_calls == ["10"]
