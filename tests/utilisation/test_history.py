"""Live figures and history: publishing, sampling, rolling up, retention, GPU-hours and cost."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pools.models import ClusterUtilisation, CollectorState, PoolSnapshot, PoolUtilisation, TeamUsageSnapshot
from pools.models import SnapshotResolution as R
from pools.utilisation.selectors import pool_history, team_cost_list, tier_ranges
from pools.utilisation.services import utilisation_history_compact, utilisation_snapshot_record
from tests.utilisation.conftest import publish_state

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def test_publish_writes_cluster_state_and_pool_figures(world, published):
    status = ClusterUtilisation.objects.get(cluster=world.interactive.cluster)
    assert status.state == CollectorState.LIVE
    live = PoolUtilisation.objects.get(pool=world.interactive)
    assert (live.gpus_allocatable, live.gpus_requested, live.gpus_free) == (16, 10, 6)
    assert (live.gpus_stranded, live.largest_free_block, live.pods_pending) == (6, 4, 2)
    assert live.queue_wait_max_seconds >= 120
    assert live.headroom_short  # interactive, 6 free < 8 warm
    assert [n["namespace"] for n in live.detail["namespaces"]] == [
        "nlp-interactive-r2",
        "vision-interactive-r1",
    ]
    assert [n["name"] for n in live.detail["nodes"]] == ["a100-0", "a100-1"]


def test_a_stale_publish_keeps_the_last_known_figures(world, published):
    since = NOW
    publish_state(
        world.interactive.cluster_id, CollectorState.STALE, stale_since=since, last_error="Unreachable: x"
    )
    status = ClusterUtilisation.objects.get(cluster=world.interactive.cluster)
    assert (status.state, status.stale_since, status.last_error) == ("stale", since, "Unreachable: x")
    assert PoolUtilisation.objects.get(pool=world.interactive).gpus_requested == 10
    publish_state(world.interactive.cluster_id, CollectorState.LIVE, stale_since=since)
    assert ClusterUtilisation.objects.get(cluster=world.interactive.cluster).stale_since is None


def test_figures_of_a_pool_no_longer_collected_are_dropped(world, published):
    # A later round without world.interactive among the pools (disabled meanwhile).
    published.pools.clear()
    publish_state(world.interactive.cluster_id, CollectorState.LIVE, figures=published)
    assert not PoolUtilisation.objects.filter(pool=world.interactive).exists()


def test_a_sample_records_the_pool_and_gpu_seconds_per_team(world, published):
    utilisation_snapshot_record(figures=published, at=NOW, seconds=15)
    sample = PoolSnapshot.objects.get(pool=world.interactive)
    assert (sample.resolution, sample.gpus_requested, sample.gpus_free, sample.seconds) == (R.RAW, 10, 6, 15)
    per_team = dict(TeamUsageSnapshot.objects.values_list("team__slug", "gpu_seconds"))
    assert per_team == {"vision": 6 * 15, "nlp": 4 * 15}


def raw_history(pool, start, end, every=15):
    """Samples every `every` seconds: 4 GPUs requested before 09:00, 8 after; team vision holds 2."""
    rows, teams = [], []
    at = start
    while at < end:
        requested = 4 if at < NOW - timedelta(hours=3) else 8
        rows.append(
            PoolSnapshot(
                pool=pool,
                resolution=R.RAW,
                at=at,
                seconds=every,
                gpus_allocatable=16,
                gpus_requested=requested,
                gpus_free=16 - requested,
                queue_wait_max_seconds=at.minute,
            )
        )
        teams.append(
            TeamUsageSnapshot(
                pool=pool, team=None, resolution=R.RAW, at=at, seconds=every, gpu_seconds=2 * every
            )
        )
        at += timedelta(seconds=every)
    PoolSnapshot.objects.bulk_create(rows)
    TeamUsageSnapshot.objects.bulk_create(teams)
    return rows


def test_compaction_rolls_up_complete_buckets_and_applies_retention(world):
    pool = world.interactive
    raw = raw_history(pool, NOW - timedelta(hours=7), NOW)
    TeamUsageSnapshot.objects.update(team=world.vision)
    counts = utilisation_history_compact(now=NOW)

    five = PoolSnapshot.objects.filter(resolution=R.FIVE_MINUTES).order_by("at")
    # Every complete 5-minute bucket of the 7 hours but the last, which is not 30 s old yet.
    assert five.count() == 7 * 12 - 1 == counts["rolled_up_300"]
    first = five.first()
    assert (first.at, first.seconds, first.gpus_requested, first.gpus_free) == (
        NOW - timedelta(hours=7),
        300,
        4,
        12,
    )
    assert first.queue_wait_max_seconds == 4  # the largest minute of 05:00-05:05
    # Hourly buckets from the 5-minute ones: 05:00 to 10:00; the 11:00 hour is not complete.
    hours = list(PoolSnapshot.objects.filter(resolution=R.HOUR).order_by("at"))
    assert [h.at.hour for h in hours] == [5, 6, 7, 8, 9, 10]
    assert [h.gpus_requested for h in hours] == [4, 4, 4, 4, 8, 8]
    assert hours[0].seconds == 3600
    # Raw samples older than 6 hours are gone; the rest stay.
    assert PoolSnapshot.objects.filter(resolution=R.RAW).count() == 6 * 240
    assert not PoolSnapshot.objects.filter(resolution=R.RAW, at__lt=NOW - timedelta(hours=6)).exists()
    # GPU-seconds survive rolling up exactly.
    rolled = sum(r.gpus_requested * r.seconds for r in five)
    assert rolled == sum(r.gpus_requested * r.seconds for r in raw if r.at < NOW - timedelta(minutes=5))
    team_five = TeamUsageSnapshot.objects.filter(resolution=R.FIVE_MINUTES)
    assert sum(t.gpu_seconds for t in team_five) == 2 * (7 * 3600 - 300)
    assert set(team_five.values_list("team", flat=True)) == {world.vision.pk}

    # Running again at the same moment finds nothing new.
    again = utilisation_history_compact(now=NOW)
    assert (again["rolled_up_300"], again["rolled_up_3600"], again["deleted"]) == (0, 0, 0)
    assert PoolSnapshot.objects.filter(resolution=R.FIVE_MINUTES).count() == 83


def test_retention_bounds_every_tier(world):
    pool = world.interactive
    old = NOW - timedelta(days=100)
    PoolSnapshot.objects.bulk_create(
        [
            PoolSnapshot(pool=pool, resolution=R.HOUR, at=old, seconds=3600),
            PoolSnapshot(pool=pool, resolution=R.HOUR, at=NOW - timedelta(days=89), seconds=3600),
            PoolSnapshot(pool=pool, resolution=R.FIVE_MINUTES, at=NOW - timedelta(days=8), seconds=300),
            PoolSnapshot(pool=pool, resolution=R.FIVE_MINUTES, at=NOW - timedelta(days=6), seconds=300),
        ]
    )
    utilisation_history_compact(now=NOW)
    kept = sorted(
        (r.resolution, (NOW - r.at).days) for r in PoolSnapshot.objects.filter(at__lt=NOW - timedelta(days=5))
    )
    # The 100-day-old hour and the 8-day-old 5-minute bucket are gone; the latter lives on in the
    # hour it was rolled up into, as does the 6-day-old one.
    assert kept == [(R.FIVE_MINUTES, 6), (R.HOUR, 6), (R.HOUR, 8), (R.HOUR, 89)]


def test_history_and_cost_read_the_finest_tier_that_has_the_data(world):
    pool = world.interactive
    raw_history(pool, NOW - timedelta(hours=7), NOW)
    TeamUsageSnapshot.objects.update(team=world.vision)
    utilisation_history_compact(now=NOW)

    start = NOW - timedelta(hours=7)
    assert tier_ranges(start, NOW) == [
        (R.RAW, NOW - timedelta(hours=6), NOW),
        (R.FIVE_MINUTES, start, NOW - timedelta(hours=6)),
    ]
    rows = pool_history(pool_id=pool.pk, start=start, end=NOW)
    assert [r.resolution for r in rows[:12]] == [R.FIVE_MINUTES] * 12
    assert {r.resolution for r in rows[12:]} == {R.RAW}
    assert sum(r.seconds for r in rows) == 7 * 3600  # no hour counted twice, none missing

    # Team vision held 2 GPUs for 7 hours at 2.50 an hour.
    [vision] = team_cost_list(user=world.admin, start=start, end=NOW)
    assert vision.team == "vision"
    assert vision.gpu_hours == pytest.approx(14)
    assert vision.cost == Decimal("35.00")
    # Members see their own team only.
    assert [t.team for t in team_cost_list(user=world.alice, start=start, end=NOW)] == ["vision"]
    assert team_cost_list(user=world.carol, start=start, end=NOW) == []
