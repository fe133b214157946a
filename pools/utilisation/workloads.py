"""The collector's workload watches: what runs in the portal's namespaces, and why what should run
does not ("why isn't it running?").

A WorkloadWatch runs next to the figures of its ClusterCollector. It keeps list+watch caches of
Deployments, ReplicaSets, StatefulSets and Jobs, and of the events that explain missing pods
(refused creates, nodes being brought up), and reads the collector's own pod and namespace caches
(the pods keep what the diagnosis needs besides what the figures need: `with_pod_status`). On
every change (at most every watching.DEBOUNCE seconds) and every HEARTBEAT it diagnoses each portal
namespace (pools.utilisation.diagnosis) and writes the namespaces whose rows changed, so the grant
page and the API read the answer from the database: no page view ever asks the cluster.

Cluster-wide watches, filtered here: a watch cannot select namespaces by label, and one watch per
namespace would cost a connection per grant. Events are narrowed by the apiserver to the three
reasons read (one watch each); the workload caches keep a few fields per object.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import close_old_connections, transaction
from django.utils import timezone

from pools.kube.objects import FAILED_CREATE_REASON, NODE_BRING_UP_REASONS
from pools.kube.watch import KubeSource, ResourceCache
from pools.models import Cluster, CollectorState, NamespaceWorkloads, WorkloadWatchState
from pools.utilisation.diagnosis import TRIMMERS, diagnose, trim_event, trim_pod_status, troubled
from pools.utilisation.leases import LeaseToken, collector_lease_fence
from pools.utilisation.watching import caches_health, publish_loop, watch_cache

logger = logging.getLogger(__name__)

Json = dict[str, Any]

# Recompute this often without events too: refusal events age out of the diagnosis window.
HEARTBEAT = 5.0
EVENT_REASONS = (FAILED_CREATE_REASON, *NODE_BRING_UP_REASONS)


def with_pod_status(trim: Callable[[Json], Json]) -> Callable[[Json], Json]:
    """The transform of the collector's pod cache: what `trim` keeps for the figures, and what the
    diagnosis reads (controller, readiness, scheduling, container troubles) under "diagnosis"."""

    def transform(pod: Json) -> Json:
        return {**trim(pod), "diagnosis": trim_pod_status(pod)}

    return transform


def _namespace(obj: Json) -> str:
    return (obj.get("metadata") or {}).get("namespace") or ""


class WorkloadWatch:
    def __init__(
        self,
        cluster: Cluster,
        *,
        pods: ResourceCache,
        namespaces: ResourceCache,
        changed: threading.Event,
        heartbeat: float = HEARTBEAT,
        backoff_max: float = 30.0,
        watch_timeout: int = 60,
        lease: LeaseToken | None = None,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
        # The collector's lease: these writes are fenced like its figures, and a refused one tells
        # the collector (on_fenced), whose supervisor then stops everything of this cluster.
        self.lease = lease
        self.on_fenced = on_fenced
        self.pods = pods
        self.namespaces = namespaces
        self.changed = changed
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What was written last, per namespace: a namespace is written again only when it changes.
        self._published: dict[str, str] = {}
        self._present: set[str] | None = None

        def cache(source: KubeSource, transform: Callable[[Json], Json]) -> ResourceCache:
            return watch_cache(
                source, transform, on_change=changed.set, backoff_max=backoff_max, watch_timeout=watch_timeout
            )

        self.workloads = [cache(KubeSource(cluster, kind), trim) for kind, trim in TRIMMERS.items()]
        self.events = [
            cache(KubeSource(cluster, "events", field_selector=f"reason={reason}"), trim_event)
            for reason in EVENT_REASONS
        ]
        self.caches = (*self.workloads, *self.events)

    def start(self) -> None:
        for cache in self.caches:
            cache.start()
        self._thread = threading.Thread(target=self.run, name=f"workloads {self.cluster.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.changed.set()
        for cache in self.caches:
            cache.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        publish_loop(
            what=f"workload watch {self.cluster.name}",
            publish=self.publish,
            changed=self.changed,
            stop=self._stop,
            wait=lambda: self.heartbeat,
            on_fenced=self.on_fenced,
        )

    def diagnose(self, now: datetime) -> dict[str, list[Json]]:
        """Rows per portal namespace, from the caches as they are now."""
        portal = {ns["metadata"]["name"] for ns in self.namespaces.snapshot()}
        if not portal:
            # Nothing to diagnose; skips a walk over every pod of the cluster each round.
            return {}
        pods: dict[str, list[Json]] = defaultdict(list)
        workloads: dict[str, list[Json]] = defaultdict(list)
        events: dict[str, list[Json]] = defaultdict(list)
        for bucket, caches in ((pods, [self.pods]), (workloads, self.workloads), (events, self.events)):
            for cache in caches:
                for obj in cache.snapshot():
                    namespace = _namespace(obj)
                    if namespace in portal:
                        bucket[namespace].append(obj)
        return {
            namespace: diagnose(
                pods=pods[namespace], workloads=workloads[namespace], events=events[namespace], now=now
            )
            for namespace in portal
        }

    def publish(self) -> None:
        close_old_connections()
        now = timezone.now()
        health = caches_health([cache.status() for cache in (*self.caches, self.pods, self.namespaces)], now)
        state = health.state
        changed: dict[str, list[Json]] = {}
        texts: dict[str, str] = {}
        present = None
        if state == CollectorState.LIVE:
            rows = self.diagnose(now)
            texts = {namespace: json.dumps(r, sort_keys=True) for namespace, r in rows.items()}
            changed = {ns: rows[ns] for ns, text in texts.items() if self._published.get(ns) != text}
            present = set(rows)
        workloads_publish(
            cluster_id=self.cluster.pk,
            state=state,
            now=now,
            observed_at=health.observed_at,
            stale_since=health.stale_since,
            last_error=health.last_error,
            changed=changed,
            present=present if present != self._present else None,
            lease=self.lease,
        )
        if present is not None:
            self._published = texts
            self._present = present


@transaction.atomic
def workloads_publish(
    *,
    cluster_id: int,
    state: str,
    now: datetime,
    observed_at: datetime | None,
    stale_since: datetime | None = None,
    last_error: str = "",
    changed: dict[str, list[Json]] | None = None,
    present: set[str] | None = None,
    lease: LeaseToken | None = None,
) -> None:
    """Record whether the cluster's workload view is current, the namespaces whose rows changed, and
    (when `present` is given) forget namespaces that are no longer the portal's. Observations, not
    decisions: no audit event, like the utilisation figures. With `lease`, only while it holds the
    cluster (LeaseLost otherwise, and nothing is written)."""
    if lease is not None:
        collector_lease_fence(lease=lease)
    WorkloadWatchState.objects.update_or_create(
        cluster_id=cluster_id,
        defaults={
            "state": state,
            "heartbeat_at": now,
            "observed_at": observed_at,
            "stale_since": stale_since if state == CollectorState.STALE else None,
            "last_error": last_error,
        },
    )
    for namespace, rows in (changed or {}).items():
        NamespaceWorkloads.objects.update_or_create(
            cluster_id=cluster_id,
            namespace=namespace,
            defaults={"workloads": rows, "troubled": troubled(rows), "changed_at": now},
        )
    if present is not None:
        NamespaceWorkloads.objects.filter(cluster_id=cluster_id).exclude(namespace__in=present).delete()
