"""The long-lived loop that keeps each cluster's utilisation figures current.

One ClusterCollector per cluster holds list+watch caches of its nodes and pods (pools.kube.watch).
Whenever they change (at most every DEBOUNCE seconds) and at least every HEARTBEAT seconds, it
recomputes the figures (pools.utilisation) and writes them; every `interval` seconds it also
records a history sample. A Supervisor runs the collectors of all enabled clusters and follows
clusters being added, removed or given new credentials; `manage.py collect_utilisation` runs it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from pools.kube.conformance import Allowlist
from pools.kube.objects import Label
from pools.kube.watch import Backoff, KubeSource, ResourceCache
from pools.models import Cluster, CollectorState
from pools.utilisation.figures import ClusterFigures, compute
from pools.utilisation.queue_watch import QueueWatch
from pools.utilisation.selectors import collector_grant_specs, collector_pool_specs
from pools.utilisation.services import utilisation_publish, utilisation_snapshot_record

logger = logging.getLogger(__name__)

Json = dict[str, Any]

# Coalesce a burst of watch events (a Deployment scaling, a node pool joining) into one write.
DEBOUNCE = 0.5
# Recompute this often even without events: queue waits grow, and the heartbeat proves we run.
HEARTBEAT = 5.0
# Pods that have finished hold nothing; the apiserver filters them out of list and watch.
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
# Namespaces the portal provisioned: their labels name the grant and the team.
PORTAL_NAMESPACES = f"{Label.GRANT}"


def trim_node(node: Json) -> Json:
    """Only what the figures read: thousands of nodes stay cheap to keep."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},
        "spec": {"unschedulable": bool(spec.get("unschedulable"))},
        "status": {
            "allocatable": status.get("allocatable") or {},
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        },
    }


def trim_namespace(namespace: Json) -> Json:
    meta = namespace.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}}}


def trim_pod(pod: Json) -> Json:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}

    def resources(containers: list[Json] | None) -> list[Json]:
        return [
            {"resources": c.get("resources") or {}, "restartPolicy": c.get("restartPolicy")}
            for c in containers or []
        ]

    node_affinity = (spec.get("affinity") or {}).get("nodeAffinity")
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "creationTimestamp": meta.get("creationTimestamp"),
            # The GPU-node allowlist (pools.kube.conformance) reads labels and owner kinds.
            "labels": meta.get("labels") or {},
            "ownerReferences": [{"kind": ref.get("kind")} for ref in meta.get("ownerReferences") or []],
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "nodeSelector": spec.get("nodeSelector") or {},
            "affinity": {"nodeAffinity": node_affinity} if node_affinity else {},
            "containers": resources(spec.get("containers")),
            "initContainers": resources(spec.get("initContainers")),
            "overhead": spec.get("overhead") or {},
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"],
        },
    }


class ClusterCollector:
    def __init__(
        self,
        cluster: Cluster,
        *,
        interval: float = 15.0,
        heartbeat: float = HEARTBEAT,
        backoff_max: float = 30.0,
        watch_timeout: int = 60,
    ) -> None:
        self.cluster = cluster
        self.interval = interval
        self.heartbeat = heartbeat
        self.changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sample: float | None = None
        caches = {"backoff_max": backoff_max, "watch_timeout": watch_timeout}
        self.nodes = self._cache(KubeSource(cluster, "nodes"), trim_node, **caches)
        self.pods = self._cache(KubeSource(cluster, "pods", field_selector=ACTIVE_PODS), trim_pod, **caches)
        self.namespaces = self._cache(
            KubeSource(cluster, "namespaces", label_selector=PORTAL_NAMESPACES), trim_namespace, **caches
        )
        self.caches = (self.nodes, self.pods, self.namespaces)
        # Kueue's Workloads and ClusterQueues: their own watches, thread and tables.
        self.queues = QueueWatch(cluster, interval=interval, heartbeat=heartbeat, **caches)
        self.allowlist = Allowlist.from_setting(settings.PORTAL_GPU_NODE_ALLOWLIST)

    def _cache(
        self, source: KubeSource, transform: Callable[[Json], Json], *, backoff_max: float, watch_timeout: int
    ) -> ResourceCache:
        return ResourceCache(
            source,
            transform=transform,
            on_change=self.changed.set,
            backoff=Backoff(maximum=backoff_max),
            watch_timeout=watch_timeout,
        )

    def start(self) -> None:
        for cache in self.caches:
            cache.start()
        self.queues.start()
        self._thread = threading.Thread(target=self.run, name=f"collector {self.cluster.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.changed.set()
        for cache in self.caches:
            cache.stop()
        self.queues.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.changed.wait(self._wait_time())
                self.changed.clear()
                if self._stop.is_set():
                    break
                try:
                    self.publish()
                except Exception:
                    # Neither the database restarting nor one odd object may end the collector: the
                    # next round retries, and a collector that stays broken shows as silent.
                    logger.exception("collector %s: computing or writing figures failed", self.cluster.name)
                self._stop.wait(DEBOUNCE)
        finally:
            connection.close()

    def _wait_time(self) -> float:
        if self._last_sample is None:
            return self.heartbeat
        until_sample = self.interval - (time.monotonic() - self._last_sample)
        return max(0.0, min(self.heartbeat, until_sample))

    def publish(self) -> None:
        """Compute and write the figures once, with a history sample when one is due."""
        close_old_connections()
        now = timezone.now()
        statuses = [cache.status() for cache in self.caches]
        if any(s.stale for s in statuses):
            state = CollectorState.STALE
        elif all(s.synced for s in statuses):
            state = CollectorState.LIVE
        else:
            state = CollectorState.SYNCING
        figures = None
        if state == CollectorState.LIVE:
            namespace_labels = {
                ns["metadata"]["name"]: ns["metadata"]["labels"] for ns in self.namespaces.snapshot()
            }
            figures = compute(
                self.nodes.snapshot(),
                self.pods.snapshot(),
                collector_pool_specs(cluster_id=self.cluster.pk),
                collector_grant_specs(cluster_id=self.cluster.pk, namespace_labels=namespace_labels),
                now,
                allowed_on_gpu_nodes=self.allowlist.allows,
            )
        contacts = [s.last_contact for s in statuses if s.last_contact]
        stale_since = [s.stale_since for s in statuses if s.stale_since]
        utilisation_publish(
            cluster_id=self.cluster.pk,
            state=state,
            now=now,
            # While every watch is healthy the data is current; otherwise it is as of the last answer.
            observed_at=now if state == CollectorState.LIVE else max(contacts, default=None),
            stale_since=min(stale_since) if stale_since else None,
            last_error="; ".join(sorted({s.last_error for s in statuses if s.last_error})),
            lists=sum(s.lists for s in statuses),
            figures=figures,
        )
        if figures is not None:
            self._sample(figures, now)

    def _sample(self, figures: ClusterFigures, now: datetime) -> None:
        tick = time.monotonic()
        if self._last_sample is None:
            seconds = self.interval
        else:
            elapsed = tick - self._last_sample
            if elapsed < self.interval:
                return
            # After a gap (stale cluster, stopped collector) the sample stands for one interval
            # only: usage nobody observed is not billed.
            seconds = min(elapsed, 2 * self.interval)
        utilisation_snapshot_record(figures=figures, at=now, seconds=seconds)
        self._last_sample = tick


def _credentials_key(cluster: Cluster) -> str:
    material = "\0".join(
        part or ""
        for part in (
            cluster.kubeconfig,
            cluster.api_url,
            cluster.token,
            cluster.ca_data,
            str(cluster.in_cluster),
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


class Supervisor:
    """Runs one collector per enabled cluster (or per named cluster) and follows changes."""

    def __init__(
        self, *, names: list[str] | None = None, interval: float = 15.0, **collector_options: Any
    ) -> None:
        self.names = names
        self.interval = interval
        self.collector_options = collector_options
        self.collectors: dict[int, tuple[str, ClusterCollector]] = {}

    def clusters(self) -> list[Cluster]:
        qs = Cluster.objects.filter(enabled=True)
        if self.names:
            qs = qs.filter(name__in=self.names)
        return list(qs)

    def sync(self) -> None:
        close_old_connections()
        wanted = {c.pk: c for c in self.clusters()}
        for pk in list(self.collectors):
            key, collector = self.collectors[pk]
            if pk not in wanted or _credentials_key(wanted[pk]) != key:
                logger.info("collector %s: stopping", collector.cluster.name)
                collector.stop()
                del self.collectors[pk]
        for pk, cluster in wanted.items():
            if pk not in self.collectors:
                logger.info("collector %s: starting (snapshot every %ss)", cluster.name, self.interval)
                collector = ClusterCollector(cluster, interval=self.interval, **self.collector_options)
                collector.start()
                self.collectors[pk] = (_credentials_key(cluster), collector)

    def run(self, stop: threading.Event, resync: float = 30.0) -> None:
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except DatabaseError:
                    logger.exception("collector: reading the clusters failed")
                stop.wait(resync)
        finally:
            for _, collector in self.collectors.values():
                collector.stop()
            self.collectors.clear()
            connection.close()
