"""The collector's queue watch: Kueue's Workloads and the portal's ClusterQueues of one cluster.

One QueueWatch per ClusterCollector (registered in pools.utilisation.collector), on its own thread
and with its own list+watch caches (pools.kube.watch), so a cluster without Kueue, or with Kueue
stopped, leaves the utilisation figures exactly as they were. It watches only while the cluster
serves Kueue's API (Cluster.kueue_version, found by registration and inventory sync). Whenever the
caches change (at most every watching.DEBOUNCE seconds) and at least every HEARTBEAT seconds it computes the
queue figures (pools.utilisation.queues) and writes them (pools.utilisation.queue_services): the live
row of every queue, each new admission, and every `interval` seconds a history sample. Every
PROBE_SECONDS it creates a dry-run Job in a queued grant's namespace to learn whether Kueue's
fail-closed webhook answers, which is what decides whether users' Jobs are accepted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import close_old_connections
from django.utils import timezone

from pools.kube import ops
from pools.kube.errors import KubeError
from pools.kube.objects import (
    KUEUE_API_VERSION,
    QUEUE_NAME_LABEL,
    kueue_webhook_failure,
    managed_labels,
    managed_selector,
)
from pools.kube.watch import ApiSource, ResourceCache
from pools.models import Cluster, QueueSnapshot, SnapshotResolution, WorkloadAdmission
from pools.utilisation import queue_selectors as selectors
from pools.utilisation import queue_services as services
from pools.utilisation.leases import LeaseToken, collector_lease_fenced
from pools.utilisation.queues import QueueFigures, QueueGrant, compute_queues
from pools.utilisation.watching import publish_loop, watch_cache
from quotas.manifests import LOCAL_QUEUE_NAME, probe_job

logger = logging.getLogger(__name__)

Json = dict[str, Any]

HEARTBEAT = 5.0
PROBE_SECONDS = 10.0
# Workload conditions the figures read; the others (PodsReady, admission checks...) are dropped.
WORKLOAD_CONDITIONS = frozenset({"QuotaReserved", "Admitted", "Evicted", "Preempted", "Requeued", "Finished"})


def trim_workload(workload: Json) -> Json:
    """Only what the queue figures read: a Workload's pod templates are most of its size."""
    meta, spec, status = (workload.get(k) or {} for k in ("metadata", "spec", "status"))

    def pod_set(ps: Json) -> Json:
        template = (ps.get("template") or {}).get("spec") or {}
        containers = [{"resources": c.get("resources") or {}} for c in template.get("containers") or []]
        init = [
            {"resources": c.get("resources") or {}, "restartPolicy": c.get("restartPolicy")}
            for c in template.get("initContainers") or []
        ]
        return {
            "name": ps.get("name"),
            "count": ps.get("count"),
            "template": {"spec": {"containers": containers, "initContainers": init}},
        }

    admission = status.get("admission") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "ownerReferences": [
                {"kind": r.get("kind"), "name": r.get("name")} for r in meta.get("ownerReferences") or []
            ],
        },
        "spec": {
            "queueName": spec.get("queueName"),
            "priority": spec.get("priority"),
            "active": spec.get("active"),
            "podSets": [pod_set(ps) for ps in spec.get("podSets") or []],
        },
        "status": {
            "admission": {
                "clusterQueue": admission.get("clusterQueue"),
                "podSetAssignments": [
                    {"resourceUsage": a.get("resourceUsage") or {}}
                    for a in admission.get("podSetAssignments") or []
                ],
            }
            if admission
            else None,
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") in WORKLOAD_CONDITIONS],
        },
    }


def trim_cluster_queue(cluster_queue: Json) -> Json:
    meta, spec, status = (cluster_queue.get(k) or {} for k in ("metadata", "spec", "status"))
    return {
        "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},
        "spec": {"cohortName": spec.get("cohortName"), "resourceGroups": spec.get("resourceGroups") or []},
        "status": {
            "flavorsUsage": status.get("flavorsUsage") or [],
            "pendingWorkloads": status.get("pendingWorkloads"),
            "admittedWorkloads": status.get("admittedWorkloads"),
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Active"],
        },
    }


class QueueWatch:
    def __init__(
        self,
        cluster: Cluster,
        *,
        interval: float = 15.0,
        heartbeat: float = HEARTBEAT,
        backoff_max: float = 30.0,
        watch_timeout: int = 60,
        probe_seconds: float = PROBE_SECONDS,
        lease: LeaseToken | None = None,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
        # The collector's lease: these writes (queue history included) are fenced like its figures,
        # and a refused one tells the collector, whose supervisor then stops this cluster's watches.
        self.lease = lease
        self.on_fenced = on_fenced
        self.interval = interval
        self.heartbeat = heartbeat
        self.probe_seconds = probe_seconds
        self._cache_options = {"backoff_max": backoff_max, "watch_timeout": watch_timeout}
        self.changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.caches: tuple[ResourceCache, ...] = ()
        # uid -> admission time already recorded, for the Workloads the cache holds.
        self._recorded: dict[str, datetime] = {}
        self._last_sample: tuple[float, datetime] | None = None
        self._last_probe: float | None = None
        self._webhook: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _make_caches(self) -> tuple[ResourceCache, ResourceCache]:
        options = self._cache_options

        def cache(source: ApiSource, transform: Any) -> ResourceCache:
            return watch_cache(source, transform, on_change=self.changed.set, **options)

        return (
            cache(ApiSource(self.cluster, KUEUE_API_VERSION, "workloads"), trim_workload),
            cache(
                ApiSource(
                    self.cluster,
                    KUEUE_API_VERSION,
                    "clusterqueues",
                    label_selector=managed_selector(),
                ),
                trim_cluster_queue,
            ),
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"queues {self.cluster.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.changed.set()
        self._stop_caches()
        if self._thread is not None:
            self._thread.join(timeout)

    def _stop_caches(self) -> None:
        for cache in self.caches:
            cache.stop()
        self.caches = ()

    def run(self) -> None:
        publish_loop(
            what=f"queue watch {self.cluster.name}",
            publish=self.publish,
            changed=self.changed,
            stop=self._stop,
            wait=lambda: self.heartbeat,
            on_fenced=self.on_fenced,
            on_error=self._forget_recorded,
        )

    def _forget_recorded(self) -> None:
        # The round's writes were rolled back together: record its admissions again next round (a
        # repeat is ignored).
        self._recorded = {}

    # -- one round -------------------------------------------------------------------------

    def publish(self) -> None:
        close_old_connections()
        now = timezone.now()
        version = Cluster.objects.filter(pk=self.cluster.pk).values_list("kueue_version", flat=True).first()
        if not version:
            if self.caches:
                logger.info("queue watch %s: the cluster no longer serves Kueue's API", self.cluster.name)
                self._stop_caches()
                with collector_lease_fenced(lease=self.lease):
                    services.queue_status_clear(cluster_id=self.cluster.pk)
            return
        if not self.caches:
            logger.info("queue watch %s: watching Kueue's Workloads and ClusterQueues", self.cluster.name)
            self.caches = self._make_caches()
            for cache in self.caches:
                cache.start()
            self._recorded = {}
        self._probe_webhook(now)  # a cluster request: before the fenced transaction
        statuses = [cache.status() for cache in self.caches]
        synced = all(s.synced for s in statuses)
        errors = sorted({s.last_error for s in statuses if s.last_error})
        with collector_lease_fenced(lease=self.lease):
            if synced:
                workloads, cluster_queues = (cache.snapshot() for cache in self.caches)
                self._publish_figures(workloads, cluster_queues, now)
            services.kueue_status_record(
                cluster_id=self.cluster.pk,
                now=now,
                watching=synced and not any(s.stale for s in statuses),
                observed_at=max((s.last_contact for s in statuses if s.last_contact), default=None),
                last_error="; ".join(errors),
                **self._webhook,
            )

    def _publish_figures(self, workloads: list[Json], cluster_queues: list[Json], now: datetime) -> None:
        grants = selectors.collector_queue_grants(cluster_id=self.cluster.pk)
        recent = selectors.collector_recent_admissions(cluster_id=self.cluster.pk, now=now)
        snapshot = compute_queues(cluster_queues, workloads, grants, recent, now)
        present = {(w.get("metadata") or {}).get("uid") for w in workloads}
        self._recorded = {uid: at for uid, at in self._recorded.items() if uid in present}
        new = [a for a in snapshot.admissions if self._recorded.get(a.uid) != a.admitted_at]
        if new:
            by_queue = {g.cluster_queue: g for g in grants.values()}
            services.admissions_record(
                cluster_id=self.cluster.pk,
                admissions=new,
                pool_of_queue={name: g.pool_id for name, g in by_queue.items()},
                team_of_queue={name: g.team_id for name, g in by_queue.items()},
            )
            self._recorded.update({a.uid: a.admitted_at for a in new})
        services.queue_status_publish(
            cluster_id=self.cluster.pk,
            queues=snapshot.queues,
            now=now,
            team_of_grant={g.grant_id: g.team_id for g in grants.values() if g.grant_id and g.team_id},
        )
        self._sample(snapshot.queues, grants, now)

    def _sample(self, queues: dict[str, QueueFigures], grants: dict[str, QueueGrant], now: datetime) -> None:
        tick = time.monotonic()
        if self._last_sample is None:
            seconds, since = self.interval, None
        else:
            elapsed = tick - self._last_sample[0]
            if elapsed < self.interval:
                return
            seconds, since = min(elapsed, 2 * self.interval), self._last_sample[1]
        team_of_grant = {g.grant_id: g.team_id for g in grants.values()}
        rows: dict[tuple[int, int | None], QueueSnapshot] = {}

        def row(pool_id: int, team_id: int | None) -> QueueSnapshot:
            key = (pool_id, team_id)
            if key not in rows:
                rows[key] = QueueSnapshot(
                    pool_id=pool_id,
                    team_id=team_id,
                    resolution=SnapshotResolution.RAW,
                    at=now,
                    seconds=seconds,
                )
            return rows[key]

        for q in queues.values():
            if q.pool_id is None:
                continue
            target = row(q.pool_id, team_of_grant.get(q.grant_id))
            target.pending_workloads += q.pending_workloads
            target.admitted_workloads += q.admitted_workloads
            target.nominal_gpus += q.nominal_gpus
            target.used_gpus += q.used_gpus
            target.borrowed_gpus += q.borrowed_gpus
            target.lent_gpus += q.lent_gpus
            target.pending_wait_max_seconds = max(target.pending_wait_max_seconds, q.oldest_pending_seconds)
        # Admissions during the time since the last sample, read back as recorded: exact across
        # restarts of the collector, whose first sample counts none.
        if since is not None:
            waits: dict[tuple[int, int | None], list[float]] = defaultdict(list)
            for admission in WorkloadAdmission.objects.filter(
                cluster_id=self.cluster.pk, admitted_at__gt=since, admitted_at__lte=now, pool__isnull=False
            ).only("pool_id", "team_id", "admitted_at", "queued_at"):
                waits[(admission.pool_id, admission.team_id)].append(admission.wait_seconds)
            for (pool_id, team_id), values in waits.items():
                target = row(pool_id, team_id)
                target.admissions += len(values)
                target.admission_wait_seconds += sum(values)
        services.queue_snapshot_record(rows=rows.values())
        self._last_sample = (tick, now)

    def _probe_webhook(self, now: datetime) -> None:
        tick = time.monotonic()
        if self._last_probe is not None and tick - self._last_probe < self.probe_seconds:
            return
        self._last_probe = tick
        namespace = selectors.collector_probe_namespace(cluster_id=self.cluster.pk)
        if namespace is None:
            self._webhook = {"webhook_ok": None, "webhook_message": "", "webhook_failing_since": None}
            return
        labels = managed_labels(**{QUEUE_NAME_LABEL: LOCAL_QUEUE_NAME})
        answered = {"webhook_ok": True, "webhook_message": "", "webhook_failing_since": None}
        try:
            ops.create(self.cluster, probe_job(namespace, labels), dry_run=True)
        except KubeError as exc:
            if kueue_webhook_failure(exc.message):
                since = self._webhook.get("webhook_failing_since") or now
                self._webhook = {
                    "webhook_ok": False,
                    "webhook_message": exc.message,
                    "webhook_failing_since": since,
                }
            elif exc.temporary:
                return  # the apiserver did not answer: nothing learnt about Kueue
            else:
                self._webhook = answered  # refused by a decision, so the webhook answered
        else:
            self._webhook = answered
        self._webhook["webhook_checked_at"] = now
