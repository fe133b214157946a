"""List+watch caches of cluster objects, the way client-go's reflector keeps them.

A ResourceCache lists a resource once, then watches from the list's resourceVersion with
bookmarks, applying each event to an in-memory map. It lists by streaming (a watch request that
begins with the current objects) where the source and the cluster offer it, and in pages otherwise. When the
apiserver answers 410 Gone (the resourceVersion fell out of its watch window, or a paginated list's
continue token expired) the cache lists again. When the cluster stops answering, the cache marks
itself stale, keeps its last known objects, and reconnects with exponential backoff and jitter; the
first successful call clears the mark. Readers take thread-safe snapshots at any time.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import orjson
from kubernetes import client as k8s
from kubernetes.watch.watch import iter_resp_lines

from pools.kube.client import CONNECT_TIMEOUT, READ_TIMEOUT, ClusterAccess, connect
from pools.kube.errors import Expired, KubeError, NotFound, PermanentKubeError, TemporaryKubeError
from pools.kube.ops import translated_errors

logger = logging.getLogger(__name__)

Json = dict[str, Any]
HTTP_GONE = 410


class WatchStream(Protocol):
    def __iter__(self) -> Iterator[Json]: ...

    def close(self) -> None: ...


class Source(Protocol):
    """Where a cache lists and watches from; the real one is KubeSource, tests bring fakes."""

    name: str

    def list(self, *, limit: int, continue_token: str | None) -> Json:
        """One page of the list: {"items": [...], "metadata": {"resourceVersion", "continue"}}."""
        ...

    def watch(self, *, resource_version: str, timeout_seconds: int) -> WatchStream: ...


class StreamingSource(Source, Protocol):
    """A source that can also list by streaming (KubeSource); a cache prefers it and falls back to
    pages when the cluster refuses it."""

    def stream(self, *, timeout_seconds: int) -> WatchStream: ...


# The bookmark that ends a streaming list's initial events (KEP 3157).
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# The server-side limit of a streaming list's request: long enough for the largest list on a busy
# apiserver (its timeout ends the request, initial events or not).
STREAM_TIMEOUT = 600
# What an apiserver answers a streaming list it does not serve (WatchList off: 422, or older: 400).
STREAM_REFUSED = frozenset({400, 422})


# ----------------------------------------------------------------------------------------------
# The real source: raw JSON through the cluster's cached connection. Raw JSON keeps the objects in
# the apiserver's own (camelCase) shape and skips the client's slow model deserialisation.


def _decode(text: str | bytes, cluster: ClusterAccess) -> Json:
    # orjson: a list of 50,000 pods is over 100 MiB of JSON, which it decodes in well under the
    # standard library's time (and it shares the repeated keys between objects).
    try:
        return orjson.loads(text)
    except ValueError:  # orjson.JSONDecodeError is one
        # A proxy's error page or a cut-off body: worth retrying, never worth a dead watch thread.
        raise TemporaryKubeError(
            f"Cluster {cluster.name} sent a response that is not JSON.", reason="MalformedResponse"
        ) from None


class _KubeWatchStream:
    def __init__(self, cluster: ClusterAccess, response: Any) -> None:
        self._cluster = cluster
        self._response = response

    def __iter__(self) -> Iterator[Json]:
        with translated_errors(self._cluster):
            for line in iter_resp_lines(self._response):
                if line.strip():
                    yield _decode(line, self._cluster)

    def close(self) -> None:
        # shutdown() unblocks a read in progress in another thread; close() alone would not. It
        # refuses once the stream has ended and the connection went back to the pool. A connection
        # cut mid-stream is closed, never returned to the pool.
        with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
            self._response.shutdown()
        self._response.close()


# What a KubeSource can list and watch: the API class and its list-everything method, per kind.
_LISTERS: dict[str, tuple[type, str]] = {
    "nodes": (k8s.CoreV1Api, "list_node"),
    "namespaces": (k8s.CoreV1Api, "list_namespace"),
    "pods": (k8s.CoreV1Api, "list_pod_for_all_namespaces"),
    "events": (k8s.CoreV1Api, "list_event_for_all_namespaces"),
    "deployments": (k8s.AppsV1Api, "list_deployment_for_all_namespaces"),
    "replicasets": (k8s.AppsV1Api, "list_replica_set_for_all_namespaces"),
    "statefulsets": (k8s.AppsV1Api, "list_stateful_set_for_all_namespaces"),
    "jobs": (k8s.BatchV1Api, "list_job_for_all_namespaces"),
}


class KubeSource:
    """Objects of one kind (of all namespaces) of one cluster, optionally narrowed by selectors."""

    KINDS = tuple(_LISTERS)

    def __init__(
        self,
        cluster: ClusterAccess,
        kind: str,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"KubeSource lists {', '.join(self.KINDS)}, not {kind!r}")
        self.cluster = cluster
        self.kind = kind
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.name = f"{cluster.name}/{kind}"

    def _call(self, **kwargs: Any) -> Any:
        api, method = _LISTERS[self.kind]
        fn = getattr(api(connect(self.cluster).api), method)
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        return fn(_preload_content=False, **kwargs)

    def list(self, *, limit: int, continue_token: str | None) -> Json:
        with translated_errors(self.cluster):
            kwargs: Json = {"limit": limit, "_request_timeout": (CONNECT_TIMEOUT, READ_TIMEOUT)}
            if continue_token:
                kwargs["_continue"] = continue_token
            response = self._call(**kwargs)
            try:
                return _decode(response.data, self.cluster)
            finally:
                response.release_conn()

    def watch(self, *, resource_version: str, timeout_seconds: int) -> WatchStream:
        with translated_errors(self.cluster):
            response = self._call(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                # The server ends the stream after timeout_seconds; a read that blocks well past
                # it means the apiserver hangs.
                _request_timeout=(CONNECT_TIMEOUT, timeout_seconds + 15),
            )
        return _KubeWatchStream(self.cluster, response)

    def stream(self, *, timeout_seconds: int) -> WatchStream:
        """A watch that begins with the current objects (a streaming list, sendInitialEvents): their
        ADDED events end with a bookmark marked INITIAL_EVENTS_END. The apiserver serves it from its
        watch cache object by object: no pages to encode one after the other, and no continue token
        or resourceVersion that expires while a large list is read. Objects flow without pause until
        the bookmark, so each read waits at most as long as a list page's."""
        with translated_errors(self.cluster):
            response = self._call(
                watch=True,
                send_initial_events=True,
                # With no resourceVersion: a consistent read, as a list without one.
                resource_version_match="NotOlderThan",
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
        return _KubeWatchStream(self.cluster, response)


class _AbsentStream:
    """The watch of a resource the cluster does not serve: nothing happens until the watch would
    have timed out, then the cache lists again (and so notices a CRD installed meanwhile)."""

    def __init__(self, timeout_seconds: int) -> None:
        self._timeout = timeout_seconds
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Json]:
        self._closed.wait(self._timeout)
        raise Expired("the resource is not served; listing again", reason="NotServed", status=HTTP_GONE)
        yield {}  # pragma: no cover - makes this a generator

    def close(self) -> None:
        self._closed.set()


class ApiSource:
    """Any resource by its API path, cluster-wide: custom resources such as Karpenter's NodePools and
    NodeClaims, which KubeSource's typed listers do not cover. A cluster that does not serve the
    resource (no such CRD: 404) has none of it: the cache holds nothing, is not stale, and `served`
    is False until a later list finds the resource."""

    def __init__(
        self,
        cluster: ClusterAccess,
        api_version: str,
        plural: str,
        *,
        label_selector: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.label_selector = label_selector
        # Until the first list says otherwise.
        self.served = False
        self.path = (
            f"/api/{api_version}/{plural}" if "/" not in api_version else f"/apis/{api_version}/{plural}"
        )
        self.name = f"{cluster.name}/{plural}"

    def _call(self, query: dict[str, Any], timeout: tuple[float, float]) -> Any:
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        return connect(self.cluster).api.call_api(
            self.path,
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=timeout,
        )

    def list(self, *, limit: int, continue_token: str | None) -> Json:
        try:
            with translated_errors(self.cluster):
                query: dict[str, Any] = {"limit": limit}
                if continue_token:
                    query["continue"] = continue_token
                response = self._call(query, (CONNECT_TIMEOUT, READ_TIMEOUT))
                try:
                    page = _decode(response.data, self.cluster)
                finally:
                    response.release_conn()
        except NotFound:
            self.served = False
            return {"items": [], "metadata": {"resourceVersion": ""}}
        self.served = True
        return page

    def watch(self, *, resource_version: str, timeout_seconds: int) -> WatchStream:
        if not self.served:
            return _AbsentStream(timeout_seconds)
        with translated_errors(self.cluster):
            query = {
                "watch": "true",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_seconds,
            }
            response = self._call(query, (CONNECT_TIMEOUT, timeout_seconds + 15))
        return _KubeWatchStream(self.cluster, response)


# ----------------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with equal jitter: each delay is between half and all of base * 2^n."""

    base: float = 0.5
    maximum: float = 30.0
    attempt: int = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.base * 2**self.attempt)
        self.attempt += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class CacheStatus:
    synced: bool  # a full list has completed at least once
    stale: bool  # the last attempt to reach the cluster failed
    stale_since: datetime | None
    last_contact: datetime | None  # last successful list, watch start or watch event
    last_error: str
    lists: int  # full lists done: the first one, then one per 410 or reconnect that needed it
    resource_version: str
    items: int


def _key(obj: Json) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", "")


def _now() -> datetime:
    return datetime.now(UTC)


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection while a list is decoded and trimmed.

    A list of 50,000 pods is millions of fresh containers; every few hundred of them set off a
    collection, and the older generations hold every object the caches keep, so the list spent
    most of its time in collections that find nothing (decoded JSON has no reference cycles; the
    references counted free it). Paused per page it still paid a collection after each page: the
    pause covers the whole list, requests included, which only postpones other threads'
    collections by as long (seconds). Process-wide and counted, so caches listing at the same time
    in other threads end it only when the last one is done.

    When it ends, everything alive is frozen (gc.freeze): moved out of the collector's generations,
    so no later collection traverses it. Otherwise the first collections after a list traverse its
    objects all again (at 50,000 pods a full one took 0.9 s, set off right in the first computation
    of the figures) and every full one after. Frozen objects are still freed when their last
    reference goes (a pod the watch replaces); what freezing costs is the cyclic garbage other
    threads left during the pause, never collected: little, and lists are rare."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        _gc_pauses += 1
        if _gc_pauses == 1:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.freeze()
                gc.enable()


class _Listing:
    """A complete list being read: each object trimmed once, or, unchanged since the cache last held
    it (same resourceVersion), the copy the cache already has."""

    def __init__(self, cache: ResourceCache) -> None:
        with cache._lock:
            self._known, self._known_versions = cache._items, cache._versions
        self._transform = cache._transform
        self.items: dict[str, Json] = {}
        self.versions: dict[str, str] = {}
        self.reused = 0
        self.started = time.monotonic()

    def add(self, obj: Json) -> None:
        key = _key(obj)
        version = (obj.get("metadata") or {}).get("resourceVersion") or ""
        if version and self._known_versions.get(key) == version and key in self._known:
            self.items[key] = self._known[key]
            self.reused += 1
        else:
            self.items[key] = self._transform(obj)
        self.versions[key] = version


class ResourceCache:
    """The objects of one Source, kept current by a list+watch loop on its own thread. `transform`
    (what is kept of each object) must depend on the object alone: a list again keeps the transformed
    copy of every object whose resourceVersion has not changed."""

    def __init__(
        self,
        source: Source,
        *,
        transform: Callable[[Json], Json] | None = None,
        on_change: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        watch_timeout: int = 60,
        page_size: int = 500,
    ) -> None:
        self.source = source
        self._transform = transform or (lambda obj: obj)
        self._on_change = on_change or (lambda: None)
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._lock = threading.Lock()
        self._items: dict[str, Json] = {}
        # Each cached object's own resourceVersion: a list again keeps the trimmed copy of an object
        # that has not changed since, instead of a second copy of every object beside the first.
        self._versions: dict[str, str] = {}
        self._resource_version = ""
        self._synced = False
        self._stale = False
        self._stale_since: datetime | None = None
        self._last_contact: datetime | None = None
        self._last_error = ""
        self._lists = 0
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        # Until the cluster refuses a streaming list: from then on this cache lists in pages.
        self._streams = callable(getattr(source, "stream", None))

    # -- readers ---------------------------------------------------------------------------

    def snapshot(self) -> list[Json]:
        """The current objects. Cached objects are replaced, never mutated, so a shallow copy is
        a consistent view."""
        with self._lock:
            return list(self._items.values())

    def status(self) -> CacheStatus:
        with self._lock:
            return CacheStatus(
                synced=self._synced,
                stale=self._stale,
                stale_since=self._stale_since,
                last_contact=self._last_contact,
                last_error=self._last_error,
                lists=self._lists,
                resource_version=self._resource_version,
                items=len(self._items),
            )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"watch {self.source.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list and self._streams:
                    need_list = not self._stream_list()
                    continue
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
            except KubeError as exc:
                if self._stop.is_set():
                    break
                if need_list and self._streams and exc.status in STREAM_REFUSED:
                    logger.info("%s: no streaming list (%s); listing in pages", self.source.name, exc.message)
                    self._streams = False
                    continue
                if exc.status == HTTP_GONE:
                    # In the stream (an ERROR event) or as the HTTP status of a watch or list page.
                    logger.info("%s: %s; listing again", self.source.name, exc.message)
                    need_list = True
                    continue
                self._mark_stale(exc)
                delay = self._backoff.next()
                logger.warning(
                    "%s: %s (%s); retrying in %.1fs", self.source.name, exc.message, exc.reason, delay
                )
                self._stop.wait(delay)
            except Exception:
                if self._stop.is_set():
                    break  # stop() closed the stream under a read in progress
                # A bug must not leave a dead thread behind a cache that still looks current.
                logger.exception("%s: unexpected failure; listing again", self.source.name)
                self._mark_stale(
                    KubeError("The collector failed unexpectedly (see its log).", reason="InternalError")
                )
                need_list = True
                self._stop.wait(self._backoff.next())

    # -- the loop --------------------------------------------------------------------------

    def _list(self) -> None:
        listing = _Listing(self)
        pages = 0
        meta: Json = {}
        continue_token: str | None = None
        with _collection_paused():
            while True:
                page = self.source.list(limit=self._page_size, continue_token=continue_token)
                pages += 1
                for obj in page.get("items") or []:
                    listing.add(obj)
                meta = page.get("metadata") or {}
                continue_token = meta.get("continue") or None
                if not continue_token:
                    break
        self._install(listing, meta.get("resourceVersion", ""), f"in {pages} page(s)")

    def _stream_list(self) -> bool:
        """List by streaming; the watch then starts from the bookmark that ends the initial events
        (a watch of its own, renewed and timed out as every watch is). False when the stream ended
        before the initial events did (a server that does not mark their end): the cache then lists
        in pages."""
        stream = cast(StreamingSource, self.source).stream(timeout_seconds=STREAM_TIMEOUT)
        self._stream = stream
        if self._stop.is_set():
            stream.close()
            return True
        try:
            events = iter(stream)
            listing = _Listing(self)
            with _collection_paused():
                for event in events:
                    if self._stop.is_set():
                        return True
                    kind, obj = event.get("type"), event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    if kind == "ADDED":
                        listing.add(obj)
                    elif (
                        kind == "BOOKMARK"
                        and (meta.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true"
                    ):
                        self._install(listing, meta.get("resourceVersion", ""), "by streaming")
                        break
                    elif kind == "ERROR":
                        self._apply(event)  # raises, as in a watch
                    # Nothing else comes before the end but bookmarks, which change nothing.
                else:
                    logger.info(
                        "%s: the stream ended before its initial events did; listing in pages",
                        self.source.name,
                    )
                    self._streams = False
                    return False
        finally:
            self._stream = None
            stream.close()
        return True

    def _install(self, listing: _Listing, resource_version: str, how: str) -> None:
        """Replace the cached objects with a complete list's."""
        with self._lock:
            self._items, self._versions = listing.items, listing.versions
            self._resource_version = resource_version
            self._synced = True
            self._lists += 1
            # In the same critical section: a reader never sees the new list as stale.
            was_stale = self._set_fresh()
        # What a cluster's size costs at start (and after each 410): the collector's first view waits on it.
        logger.info(
            "%s: listed %d objects %s, %.1fs (%d unchanged since the last list)",
            self.source.name,
            len(listing.items),
            how,
            time.monotonic() - listing.started,
            listing.reused,
        )
        self._announce_fresh(was_stale)

    def _watch(self) -> None:
        with self._lock:
            resource_version = self._resource_version
        started = time.monotonic()
        stream = self.source.watch(resource_version=resource_version, timeout_seconds=self._watch_timeout)
        self._stream = stream
        if self._stop.is_set():  # stop() ran before the stream was there to close
            stream.close()
            return
        self._mark_fresh()
        events = 0
        try:
            for event in stream:
                if self._stop.is_set():
                    return
                self._apply(event)
                events += 1
        finally:
            self._stream = None
            stream.close()
        if events == 0 and time.monotonic() - started < 1.0:
            # A stream that ends at once and empty would otherwise make this a busy loop.
            raise TemporaryKubeError("the watch ended immediately", reason="WatchClosed")

    def _apply(self, event: Json) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            message = obj.get("message") or "watch error"
            if code == HTTP_GONE:
                raise Expired(message, reason=obj.get("reason") or "Expired", status=HTTP_GONE)
            error = TemporaryKubeError if not code or code >= 500 or code == 429 else PermanentKubeError
            raise error(message, reason=obj.get("reason") or "WatchError", status=code)
        version = (obj.get("metadata") or {}).get("resourceVersion", "")
        with self._lock:
            if kind in ("ADDED", "MODIFIED"):
                key = _key(obj)
                self._items[key] = self._transform(obj)
                self._versions[key] = version
            elif kind == "DELETED":
                self._items.pop(_key(obj), None)
                self._versions.pop(_key(obj), None)
            if version:
                self._resource_version = version
            self._last_contact = _now()
        if kind != "BOOKMARK":
            self._on_change()

    def _mark_fresh(self) -> None:
        with self._lock:
            was_stale = self._set_fresh()
        self._announce_fresh(was_stale)

    def _set_fresh(self) -> bool:
        """Under self._lock: the cluster answered. Whether it was stale until now."""
        was_stale = self._stale
        self._stale, self._stale_since, self._last_error = False, None, ""
        self._last_contact = _now()
        return was_stale

    def _announce_fresh(self, was_stale: bool) -> None:
        self._backoff.reset()
        if was_stale:
            logger.info("%s: reachable again", self.source.name)
        self._on_change()

    def _mark_stale(self, exc: KubeError) -> None:
        with self._lock:
            was_stale = self._stale
            self._stale = True
            self._stale_since = self._stale_since or _now()
            self._last_error = f"{exc.reason}: {exc.message}"
        if not was_stale:
            self._on_change()
