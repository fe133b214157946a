"""The long-lived loop that keeps each cluster's utilisation figures current.

One ClusterCollector per cluster holds list+watch caches of its nodes and pods (pools.kube.watch).
Whenever they change (at most every watching.DEBOUNCE seconds) and at least every HEARTBEAT seconds, it
recomputes the figures (pools.utilisation) and writes them; every `interval` seconds it also
records a history sample. A Supervisor runs the collectors of the enabled clusters whose lease it
holds (pools/utilisation/leases.py: replicas share the clusters, each watched by exactly one) and
follows clusters being added, removed or given new credentials; `manage.py collect_utilisation`
runs it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from pools.kube.conformance import Allowlist
from pools.kube.objects import Label, with_gpu_requests
from pools.kube.watch import KubeSource, ResourceCache
from pools.models import Cluster, CollectorState
from pools.utilisation.figures import ClusterFigures, compute
from pools.utilisation.leases import (
    LeaseToken,
    collector_lease_acquire,
    collector_lease_release,
    collector_lease_renew,
    collector_leases_free,
    collector_replica_heartbeat,
    collector_replica_leave,
    holder_id,
    lease_seconds,
    renew_seconds,
)
from pools.utilisation.nodegroups import NodeGroupWatch
from pools.utilisation.queue_watch import QueueWatch
from pools.utilisation.selectors import collector_grant_specs, collector_pool_specs
from pools.utilisation.services import utilisation_publish, utilisation_snapshot_record
from pools.utilisation.watching import caches_health, publish_loop, watch_cache
from pools.utilisation.workloads import WorkloadWatch, with_pod_status

logger = logging.getLogger(__name__)

Json = dict[str, Any]

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
        # Taints: the approval pre-flight reads them from the collector's inventory.
        "spec": {"unschedulable": bool(spec.get("unschedulable")), "taints": spec.get("taints") or []},
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
        lease: LeaseToken | None = None,
    ) -> None:
        self.cluster = cluster
        # Every write carries it and is refused once another replica took the cluster over (None:
        # unfenced, for a collector run on its own, as tests do).
        self.lease = lease
        self.fenced = threading.Event()
        self.interval = interval
        self.heartbeat = heartbeat
        self.changed = threading.Event()
        self.workload_changes = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sample: float | None = None
        caches = {"backoff_max": backoff_max, "watch_timeout": watch_timeout}
        self.nodes = self._cache(KubeSource(cluster, "nodes"), trim_node, notify=self.changed.set, **caches)
        self.pods = self._cache(
            KubeSource(cluster, "pods", field_selector=ACTIVE_PODS),
            with_gpu_requests(with_pod_status(trim_pod)),
            **caches,
        )
        self.namespaces = self._cache(
            KubeSource(cluster, "namespaces", label_selector=PORTAL_NAMESPACES), trim_namespace, **caches
        )
        self.caches = (self.nodes, self.pods, self.namespaces)
        # Why the workloads of portal namespaces are not running: its own watches, thread and table.
        self.workloads = WorkloadWatch(
            cluster,
            pods=self.pods,
            namespaces=self.namespaces,
            changed=self.workload_changes,
            lease=lease,
            on_fenced=self.fenced.set,
            **caches,
        )
        # Node groups, bring-up times, the autoscaler's health and the pre-flight's inventory.
        self.nodegroups = NodeGroupWatch(cluster, on_change=self.changed.set, lease=lease, **caches)
        self._last_publish: datetime | None = None
        # Kueue's Workloads and ClusterQueues: their own watches, thread and tables.
        self.queues = QueueWatch(
            cluster,
            interval=interval,
            heartbeat=heartbeat,
            lease=lease,
            on_fenced=self.fenced.set,
            **caches,
        )
        self.allowlist = Allowlist.from_setting(settings.PORTAL_GPU_NODE_ALLOWLIST)

    def _cache(
        self,
        source: KubeSource,
        transform: Callable[[Json], Json],
        *,
        backoff_max: float,
        watch_timeout: int,
        notify: Callable[[], None] | None = None,
    ) -> ResourceCache:
        return watch_cache(
            source,
            transform,
            # Pods and namespaces wake the workload watches too; nodes only the figures.
            on_change=notify or self._notify,
            backoff_max=backoff_max,
            watch_timeout=watch_timeout,
        )

    def _notify(self) -> None:
        self.changed.set()
        self.workload_changes.set()

    def start(self) -> None:
        for cache in self.caches:
            cache.start()
        self.workloads.start()
        self.nodegroups.start()
        self.queues.start()
        self._thread = threading.Thread(target=self.run, name=f"collector {self.cluster.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.changed.set()
        for cache in self.caches:
            cache.stop()
        self.workloads.stop(timeout)
        self.nodegroups.stop()
        self.queues.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        publish_loop(
            what=f"collector {self.cluster.name}",
            publish=self.publish,
            changed=self.changed,
            stop=self._stop,
            wait=self._wait_time,
            on_fenced=self.fenced.set,
        )

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
        health = caches_health(statuses, now)
        state = health.state
        figures = None
        if state == CollectorState.LIVE:
            namespace_labels = {
                ns["metadata"]["name"]: ns["metadata"]["labels"] for ns in self.namespaces.snapshot()
            }
            nodes, pools = self.nodes.snapshot(), collector_pool_specs(cluster_id=self.cluster.pk)
            figures = compute(
                nodes,
                self.pods.snapshot(),
                pools,
                collector_grant_specs(cluster_id=self.cluster.pk, namespace_labels=namespace_labels),
                now,
                allowed_on_gpu_nodes=self.allowlist.allows,
                created_since=self._last_publish,
            )
            self.nodegroups.update(
                figures=figures,
                pools=pools,
                nodes=nodes,
                now=now,
                nodes_version=statuses[0].resource_version,
            )
            self._last_publish = now
        utilisation_publish(
            cluster_id=self.cluster.pk,
            state=state,
            now=now,
            observed_at=health.observed_at,
            stale_since=health.stale_since,
            last_error=health.last_error,
            lists=sum(s.lists for s in statuses),
            figures=figures,
            lease=self.lease,
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
        utilisation_snapshot_record(figures=figures, at=now, seconds=seconds, lease=self.lease)
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


@dataclass
class _Held:
    lease: LeaseToken
    # Monotonic time until which the lease is surely ours: the moment the last successful renewal
    # was sent, plus the lease duration (the database counted from a later moment).
    valid_until: float


class Supervisor:
    """One replica of the collector: runs one ClusterCollector per enabled cluster (or per named
    cluster) whose lease it holds, and follows changes.

    Every `renew` seconds (a round): say it is alive, renew its leases (stopping the collector of
    any it lost, or could not renew in time), stop collectors of clusters disabled, removed or given
    new credentials, give up leases above its fair share (clusters / live replicas, rounded up; one
    a round, so a new replica gets its share without a stampede), and acquire free or expired
    leases up to that share. A replica started with --cluster takes every named cluster it can and
    does not count as a replica for the others' shares.
    """

    def __init__(
        self,
        *,
        names: list[str] | None = None,
        interval: float = 15.0,
        holder: str | None = None,
        lease_for: float | None = None,
        renew_every: float | None = None,
        **collector_options: Any,
    ) -> None:
        self.names = names
        self.interval = interval
        self.holder = holder or holder_id()
        self.lease_seconds = lease_for or lease_seconds()
        self.renew_seconds = renew_every or renew_seconds()
        if self.renew_seconds * 2 > self.lease_seconds:
            # One missed renewal must not cost the lease.
            raise ValueError(
                f"renew every {self.renew_seconds}s is too slow for a {self.lease_seconds}s lease"
            )
        self.collector_options = collector_options
        self.collectors: dict[int, tuple[str, ClusterCollector]] = {}
        self.held: dict[int, _Held] = {}

    def clusters(self) -> list[Cluster]:
        qs = Cluster.objects.filter(enabled=True)
        if self.names:
            qs = qs.filter(name__in=self.names)
        return list(qs)

    def _drop(self, pk: int, *, release: bool, why: str) -> None:
        """Stop the cluster's collector first (so its writes end), then give the lease up if asked."""
        entry = self.collectors.pop(pk, None)
        held = self.held.pop(pk, None)
        if entry is not None:
            logger.info("collector %s: stopping (%s)", entry[1].cluster.name, why)
            entry[1].stop()
        if release and held is not None:
            try:
                collector_lease_release(lease=held.lease)
            except DatabaseError:
                logger.warning(
                    "collector: releasing the lease of cluster %s failed; it expires by itself", pk
                )

    def _renew(self) -> None:
        for pk, held in list(self.held.items()):
            entry = self.collectors.get(pk)
            if entry is not None and entry[1].fenced.is_set():
                self._drop(pk, release=False, why="its write was refused: another replica holds the lease")
                continue
            sent = time.monotonic()
            try:
                renewed = collector_lease_renew(lease=held.lease, seconds=self.lease_seconds)
            except DatabaseError:
                logger.warning("collector: renewing the lease of cluster %s failed", pk, exc_info=True)
                # Stop before the lease can expire: by the next round it might be someone else's.
                if time.monotonic() + self.renew_seconds >= held.valid_until:
                    self._drop(pk, release=False, why="its lease could not be renewed in time")
                continue
            if renewed:
                held.valid_until = sent + self.lease_seconds
            else:
                self._drop(pk, release=False, why="another replica holds the lease")

    def _replicas(self) -> int | None:
        """Live replicas, this one included (None: a --cluster replica, which takes all it can).
        Said before the leases are renewed, so a dead replica's entry expires before its leases
        do and the others' shares already count without it when they find its leases free."""
        if self.names:
            return None
        return collector_replica_heartbeat(holder=self.holder, seconds=self.lease_seconds)

    def sync(self) -> None:
        close_old_connections()
        try:
            replicas = self._replicas()
        finally:
            # Even when the database does not answer: a lease not renewed in time stops its collector.
            self._renew()
        wanted = {c.pk: c for c in self.clusters()}
        for pk in list(self.collectors):
            key, _ = self.collectors[pk]
            if pk not in wanted:
                self._drop(pk, release=True, why="disabled or removed")
            elif _credentials_key(wanted[pk]) != key:
                # Same lease, new collector: the old one is stopped before the new one starts.
                lease = self.held[pk].lease
                self.collectors.pop(pk)[1].stop()
                self._start(wanted[pk], lease)
        for pk in list(self.held):
            if pk not in wanted:
                self._drop(pk, release=True, why="disabled or removed")
        share = len(wanted) if replicas is None else math.ceil(len(wanted) / max(replicas, 1))
        if len(self.held) > share:
            pk = next(reversed(self.held))
            self._drop(pk, release=True, why=f"a fair share is {share} cluster(s)")
        candidates = [pk for pk in collector_leases_free(cluster_ids=list(wanted)) if pk not in self.held]
        # Replicas starting together should not all reach for the same lease first.
        random.shuffle(candidates)
        for pk in candidates:
            if len(self.held) >= share:
                break
            try:
                lease = collector_lease_acquire(cluster_id=pk, holder=self.holder, seconds=self.lease_seconds)
            except DatabaseError:
                logger.warning("collector: acquiring the lease of cluster %s failed", pk, exc_info=True)
                continue
            if lease is None:
                continue
            self.held[pk] = _Held(lease, time.monotonic() + self.lease_seconds)
            try:
                self._start(wanted[pk], lease)
            except Exception:
                # A lease held without a collector would keep the cluster unwatched for good.
                logger.exception("collector %s: could not start; giving its lease back", wanted[pk].name)
                self._drop(pk, release=True, why="it could not start")

    def _start(self, cluster: Cluster, lease: LeaseToken) -> None:
        logger.info(
            "collector %s: starting (lease #%s of %s; snapshot every %ss)",
            cluster.name,
            lease.epoch,
            self.holder,
            self.interval,
        )
        collector = ClusterCollector(cluster, interval=self.interval, lease=lease, **self.collector_options)
        collector.start()
        self.collectors[cluster.pk] = (_credentials_key(cluster), collector)

    def run(self, stop: threading.Event, resync: float | None = None) -> None:
        """Rounds every `resync` seconds (default: the renew interval) until `stop` is set; then
        stop every collector and release its lease, so another replica takes over at once."""
        pace = min(resync or self.renew_seconds, self.renew_seconds)
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except DatabaseError:
                    logger.exception("collector: reading the clusters or the leases failed")
                stop.wait(pace)
        finally:
            for pk in list(self.collectors) + list(self.held):
                self._drop(pk, release=True, why="shutting down")
            if not self.names:
                try:
                    collector_replica_leave(holder=self.holder)
                except DatabaseError:
                    logger.warning("collector: leaving the replica list failed; the entry expires by itself")
            connection.close()
