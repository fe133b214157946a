"""Writes of live utilisation figures and their history.

These rows are observations of the clusters, not decisions anybody took, so unlike the portal's
other writes they carry no audit event.

History tiers (a week of one pool costs 1,440 + 2,016 + 168 = 3,624 pool rows; the steady state,
90 days, 1,440 + 2,016 + 2,160 = 5,616):
- raw samples at the collector's interval (15 s by default), kept 6 hours;
- 5-minute averages, kept 7 days;
- 1-hour averages, kept 90 days.
`utilisation_history_compact` (Celery beat, every 5 minutes) rolls complete buckets up into the
next tier, then deletes what is past its retention.

Fencing: a collector replica passes its `lease` (pools/utilisation/leases.py) and its writes happen
only while it holds the cluster's lease, checked in the same transaction; history periods never
overlap, whichever replica wrote the one before (the lease row keeps the last sample's time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Max, Min

from pools.models import (
    ClusterUtilisation,
    CollectorLease,
    CollectorState,
    PoolSnapshot,
    PoolUtilisation,
    SnapshotResolution,
    TeamUsageSnapshot,
)
from pools.utilisation.figures import DRAWN_NODES, HISTORY_FIGURES, ClusterFigures, PoolFigures, Rollup
from pools.utilisation.leases import LeaseToken, collector_lease_fence

R = SnapshotResolution
RETENTION: dict[int, timedelta] = {
    R.RAW: timedelta(hours=6),
    R.FIVE_MINUTES: timedelta(days=7),
    R.HOUR: timedelta(days=90),
}
# (target, source): each tier is rolled up from the next finer one.
ROLLUPS = ((R.FIVE_MINUTES, R.RAW), (R.HOUR, R.FIVE_MINUTES))
# A sample is written a moment after it is taken; a bucket is rolled up only once this much time
# has passed after its end, so no late sample is left out.
ROLLUP_GRACE = timedelta(seconds=30)
COMPACT_LOCK_ID = 0x67707570  # an arbitrary, fixed advisory lock key for the compaction


def floor_time(moment: datetime, seconds: int) -> datetime:
    stamp = moment.timestamp()
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def _pool_detail(figures: PoolFigures) -> dict[str, Any]:
    # Its fields are plain values: vars() is asdict() without the recursive copy, which cost more
    # than the rest of the write for a pool of 5,000 nodes.
    nodes = [{**vars(n), "free": n.free} for n in figures.nodes]
    return {
        "nodes": nodes,
        # Sorted by name (compute): the grid's nodes, read by the pool page without the others.
        "drawn_nodes": nodes[:DRAWN_NODES],
        "node_count": len(nodes),
        "pending": [asdict(p) for p in figures.pending],
        "namespaces": [asdict(u) for u in sorted(figures.namespaces.values(), key=lambda u: u.namespace)],
        "non_gpu_pods": figures.non_gpu_pod_names,
    }


@transaction.atomic
def utilisation_publish(
    *,
    cluster_id: int,
    state: str,
    now: datetime,
    observed_at: datetime | None,
    stale_since: datetime | None = None,
    last_error: str = "",
    lists: int = 0,
    figures: ClusterFigures | None = None,
    lease: LeaseToken | None = None,
) -> None:
    """Record the collector's state for a cluster and, when given, the current figures of its
    pools. Without figures (syncing, or stale) each pool keeps its last known figures. With
    `lease`, only while it holds the cluster (LeaseLost otherwise, and nothing is written)."""
    if lease is not None:
        if lease.cluster_id != cluster_id:
            raise ValueError(f"lease of cluster {lease.cluster_id} used for cluster {cluster_id}")
        collector_lease_fence(lease=lease)
    defaults: dict[str, Any] = {
        "state": state,
        "heartbeat_at": now,
        "observed_at": observed_at,
        "stale_since": stale_since if state == CollectorState.STALE else None,
        "last_error": last_error,
        "lists": lists,
    }
    if figures is not None:
        defaults |= {
            "unpooled_gpu_nodes": figures.unpooled_gpu_nodes,
            "unmatched_pending": figures.unmatched_pending,
        }
    ClusterUtilisation.objects.update_or_create(cluster_id=cluster_id, defaults=defaults)
    if figures is None:
        return
    for pool_id, pool_figures in figures.pools.items():
        fields = {**pool_figures.totals(), "computed_at": now, "detail": _pool_detail(pool_figures)}
        # UPDATE first, not update_or_create, which reads the row back (locked, its detail decoded:
        # every node of the pool) only to overwrite all of it; the row exists after the first write.
        if not PoolUtilisation.objects.filter(pool_id=pool_id).update(**fields):
            PoolUtilisation.objects.create(pool_id=pool_id, **fields)
    # A pool that was disabled or moved away keeps no figures that look current.
    PoolUtilisation.objects.filter(pool__cluster_id=cluster_id).exclude(pool_id__in=figures.pools).delete()


@transaction.atomic
def utilisation_snapshot_record(
    *, figures: ClusterFigures, at: datetime, seconds: float, lease: LeaseToken | None = None
) -> int:
    """One raw history sample of every pool in `figures`, standing for `seconds` of time up to
    `at`; returns the pool rows written. With `lease`, only while it holds the cluster (LeaseLost
    otherwise), and never reaching back before the cluster's previous sample: after a takeover the
    new holder's first sample stands only for the time since the old holder's last one, and a
    sample not later than that one is not written at all, so no period is counted twice."""
    if lease is not None:
        held = collector_lease_fence(lease=lease)
        if held.last_sample_at is not None:
            since_last = (at - held.last_sample_at).total_seconds()
            if since_last <= 0:
                return 0
            seconds = min(seconds, since_last)
        CollectorLease.objects.filter(cluster_id=lease.cluster_id).update(last_sample_at=at)
    pool_rows, team_rows = [], []
    for pool_id, pool_figures in figures.pools.items():
        totals = pool_figures.totals()
        pool_rows.append(
            PoolSnapshot(
                pool_id=pool_id,
                resolution=R.RAW,
                at=at,
                seconds=seconds,
                **{figure.name: totals[figure.name] for figure in HISTORY_FIGURES},
            )
        )
        by_team: dict[int | None, int] = defaultdict(int)
        for usage in pool_figures.namespaces.values():
            by_team[usage.team_id] += usage.gpus
        team_rows += [
            TeamUsageSnapshot(
                pool_id=pool_id,
                team_id=team_id,
                resolution=R.RAW,
                at=at,
                seconds=seconds,
                gpu_seconds=gpus * seconds,
            )
            for team_id, gpus in by_team.items()
            if gpus
        ]
    PoolSnapshot.objects.bulk_create(pool_rows)
    TeamUsageSnapshot.objects.bulk_create(team_rows)
    return len(pool_rows)


def _rollup_pools(source_rows: Iterable[PoolSnapshot], target: int) -> list[PoolSnapshot]:
    groups: dict[tuple[int, datetime], list[PoolSnapshot]] = defaultdict(list)
    for row in source_rows:
        groups[(row.pool_id, floor_time(row.at, target))].append(row)
    result = []
    for (pool_id, bucket), rows in groups.items():
        seconds = sum(r.seconds for r in rows) or 1.0
        values = {
            figure.name: max(getattr(r, figure.name) for r in rows)
            if figure.rollup == Rollup.MAXIMUM
            else sum(getattr(r, figure.name) * r.seconds for r in rows) / seconds
            for figure in HISTORY_FIGURES
        }
        result.append(PoolSnapshot(pool_id=pool_id, resolution=target, at=bucket, seconds=seconds, **values))
    return result


def _rollup_teams(source_rows: Iterable[TeamUsageSnapshot], target: int) -> list[TeamUsageSnapshot]:
    groups: dict[tuple[int, int | None, datetime], list[TeamUsageSnapshot]] = defaultdict(list)
    for row in source_rows:
        groups[(row.pool_id, row.team_id, floor_time(row.at, target))].append(row)
    return [
        TeamUsageSnapshot(
            pool_id=pool_id,
            team_id=team_id,
            resolution=target,
            at=bucket,
            seconds=sum(r.seconds for r in rows),
            gpu_seconds=sum(r.gpu_seconds for r in rows),
        )
        for (pool_id, team_id, bucket), rows in groups.items()
    ]


def _window(target: int, source: int, end: datetime) -> tuple[datetime, datetime] | None:
    """The buckets of `target` not rolled up yet: after the last one written, up to `end`."""
    last = PoolSnapshot.objects.filter(resolution=target).aggregate(at=Max("at"))["at"]
    if last is not None:
        start = last + timedelta(seconds=target)
    else:
        first = PoolSnapshot.objects.filter(resolution=source).aggregate(at=Min("at"))["at"]
        if first is None:
            return None
        start = floor_time(first, target)
    return (start, end) if start < end else None


@transaction.atomic
def utilisation_history_compact(*, now: datetime) -> dict[str, int]:
    """Roll complete buckets up into the coarser tiers, then apply each tier's retention.
    Idempotent: a bucket is written once, after its end, and re-running finds nothing new."""
    if connection.vendor == "postgresql":
        # Two overlapping runs would both see the same buckets as new; the second waits here and
        # then finds them written. (SQLite transactions here already take the write lock at BEGIN.)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [COMPACT_LOCK_ID])
    counts: dict[str, int] = {}
    for target, source in ROLLUPS:
        window = _window(target, source, floor_time(now - ROLLUP_GRACE, target))
        if window is None:
            counts[f"rolled_up_{target}"] = 0
            continue
        start, end = window
        pools = PoolSnapshot.objects.filter(resolution=source, at__gte=start, at__lt=end)
        teams = TeamUsageSnapshot.objects.filter(resolution=source, at__gte=start, at__lt=end)
        pool_rows = _rollup_pools(pools.iterator(), target)
        team_rows = _rollup_teams(teams.iterator(), target)
        PoolSnapshot.objects.bulk_create(pool_rows)
        TeamUsageSnapshot.objects.bulk_create(team_rows)
        counts[f"rolled_up_{target}"] = len(pool_rows)
    deleted = 0
    for resolution, keep in RETENTION.items():
        cutoff = now - keep
        deleted += PoolSnapshot.objects.filter(resolution=resolution, at__lt=cutoff).delete()[0]
        deleted += TeamUsageSnapshot.objects.filter(resolution=resolution, at__lt=cutoff).delete()[0]
    counts["deleted"] = deleted
    return counts
