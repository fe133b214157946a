"""Writes of what the collector's queue watch learns from Kueue: the live row of every portal
ClusterQueue, each Workload admission, the cluster's Kueue status and the queue history.

Observations of a cluster, like the utilisation rows: no audit events. History uses the tiers and
retention of pools.utilisation.services (raw, 5-minute, hourly); `queue_history_compact` rolls it
up on the same beat schedule. Admissions are kept ADMISSION_RETENTION (the rate needs the last
half hour, the page and /metrics the last day).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Max, Min

from pools.models import KueueStatus, QueueSnapshot, QueueStatus, SnapshotResolution, WorkloadAdmission
from pools.utilisation.queues import Admission, QueueFigures, listed
from pools.utilisation.services import RETENTION, ROLLUP_GRACE, ROLLUPS, floor_time

R = SnapshotResolution
ADMISSION_RETENTION = timedelta(days=7)
COMPACT_LOCK_ID = 0x67707571  # fixed advisory lock key, one above the utilisation compaction's

GAUGES = (
    "pending_workloads",
    "admitted_workloads",
    "nominal_gpus",
    "used_gpus",
    "borrowed_gpus",
    "lent_gpus",
)
MAXIMA = ("pending_wait_max_seconds",)
SUMS = ("admissions", "admission_wait_seconds")


@transaction.atomic
def queue_status_publish(
    *,
    cluster_id: int,
    queues: Mapping[str, QueueFigures],
    now: datetime,
    team_of_grant: Mapping[int, int],
) -> None:
    """Replace the cluster's live queue rows with `queues` (queues no longer on the cluster go)."""
    for name, q in queues.items():
        QueueStatus.objects.update_or_create(
            cluster_id=cluster_id,
            name=name,
            defaults={
                "pool_id": q.pool_id,
                "grant_id": q.grant_id,
                "team_id": team_of_grant.get(q.grant_id) if q.grant_id else None,
                "namespace": q.namespace,
                "computed_at": now,
                "active": q.active,
                "active_reason": q.active_reason[:100],
                "active_message": q.active_message,
                "nominal_gpus": q.nominal_gpus,
                "borrowing_limit_gpus": q.borrowing_limit_gpus,
                "lending_limit_gpus": q.lending_limit_gpus,
                "used_gpus": q.used_gpus,
                "borrowed_gpus": q.borrowed_gpus,
                "lent_gpus": q.lent_gpus,
                "admitted_workloads": q.admitted_workloads,
                "pending_workloads": q.pending_workloads,
                "oldest_pending_seconds": q.oldest_pending_seconds,
                "recent_admissions": q.recent_admissions,
                "admission_rate_per_hour": q.admission_rate_per_hour,
                "detail": {"workloads": listed(q.workloads)},
            },
        )
    QueueStatus.objects.filter(cluster_id=cluster_id).exclude(name__in=list(queues)).delete()


def queue_status_clear(*, cluster_id: int) -> None:
    """The cluster no longer serves Kueue: nothing the portal showed of its queues is current."""
    QueueStatus.objects.filter(cluster_id=cluster_id).delete()


def admissions_record(
    *,
    cluster_id: int,
    admissions: Iterable[Admission],
    pool_of_queue: Mapping[str, int | None],
    team_of_queue: Mapping[str, int | None],
) -> None:
    """Record admissions; one row per (Workload, admission time): a repeat is ignored."""
    WorkloadAdmission.objects.bulk_create(
        [
            WorkloadAdmission(
                cluster_id=cluster_id,
                uid=a.uid,
                admitted_at=a.admitted_at,
                queued_at=a.queued_at,
                namespace=a.namespace,
                name=a.name[:253],
                cluster_queue=a.cluster_queue,
                pool_id=pool_of_queue.get(a.cluster_queue),
                team_id=team_of_queue.get(a.cluster_queue),
                gpus=a.gpus,
            )
            for a in admissions
        ],
        ignore_conflicts=True,
    )


def admissions_purge(*, now: datetime) -> int:
    return WorkloadAdmission.objects.filter(admitted_at__lt=now - ADMISSION_RETENTION).delete()[0]


def kueue_status_record(*, cluster_id: int, now: datetime, **fields: Any) -> KueueStatus:
    status, _ = KueueStatus.objects.update_or_create(
        cluster_id=cluster_id, defaults={"heartbeat_at": now, **fields}
    )
    return status


@transaction.atomic
def queue_snapshot_record(*, rows: Iterable[QueueSnapshot]) -> None:
    QueueSnapshot.objects.bulk_create(list(rows))


def _rollup(source_rows: Iterable[QueueSnapshot], target: int) -> list[QueueSnapshot]:
    groups: dict[tuple[int, int | None, datetime], list[QueueSnapshot]] = defaultdict(list)
    for row in source_rows:
        groups[(row.pool_id, row.team_id, floor_time(row.at, target))].append(row)
    result = []
    for (pool_id, team_id, bucket), rows in groups.items():
        seconds = sum(r.seconds for r in rows) or 1.0
        values = {name: sum(getattr(r, name) * r.seconds for r in rows) / seconds for name in GAUGES}
        values |= {name: max(getattr(r, name) for r in rows) for name in MAXIMA}
        values |= {name: sum(getattr(r, name) for r in rows) for name in SUMS}
        result.append(
            QueueSnapshot(
                pool_id=pool_id, team_id=team_id, resolution=target, at=bucket, seconds=seconds, **values
            )
        )
    return result


@transaction.atomic
def queue_history_compact(*, now: datetime) -> dict[str, int]:
    """Roll complete buckets into the coarser tiers, then apply retention; idempotent, as
    utilisation_history_compact (whose tiers these are)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [COMPACT_LOCK_ID])
    counts: dict[str, int] = {}
    for target, source in ROLLUPS:
        end = floor_time(now - ROLLUP_GRACE, target)
        last = QueueSnapshot.objects.filter(resolution=target).aggregate(at=Max("at"))["at"]
        if last is not None:
            start = last + timedelta(seconds=target)
        else:
            first = QueueSnapshot.objects.filter(resolution=source).aggregate(at=Min("at"))["at"]
            if first is None:
                counts[f"rolled_up_{target}"] = 0
                continue
            start = floor_time(first, target)
        rows = (
            _rollup(
                QueueSnapshot.objects.filter(resolution=source, at__gte=start, at__lt=end).iterator(), target
            )
            if start < end
            else []
        )
        QueueSnapshot.objects.bulk_create(rows)
        counts[f"rolled_up_{target}"] = len(rows)
    deleted = 0
    for resolution, keep in RETENTION.items():
        deleted += QueueSnapshot.objects.filter(resolution=resolution, at__lt=now - keep).delete()[0]
    counts["deleted"] = deleted + admissions_purge(now=now)
    return counts
