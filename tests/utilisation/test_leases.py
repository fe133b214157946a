"""Collector leases on the database, without a cluster: acquire, renew, expire, steal after expiry,
release, the fencing of figures and history, and a holder paused in the middle of a write.
Expiry is produced by moving `expires_at` into the past (only the paused writer, whose row lock
forbids that, waits for a short lease to run out)."""

import threading
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from pools.models import (
    ClusterUtilisation,
    CollectorLease,
    CollectorReplica,
    CollectorState,
    PoolSnapshot,
    PoolUtilisation,
    TeamUsageSnapshot,
)
from pools.utilisation import leases
from pools.utilisation.collector import Supervisor
from pools.utilisation.leases import (
    LeaseLost,
    collector_lease_acquire,
    collector_lease_fence,
    collector_lease_release,
    collector_lease_renew,
    collector_leases_free,
    collector_replica_heartbeat,
    collector_replica_leave,
)
from pools.utilisation.services import utilisation_publish, utilisation_snapshot_record
from tests import factories
from tests.testbed import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def expire(cluster_id: int) -> None:
    CollectorLease.objects.filter(cluster_id=cluster_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.fixture
def cluster():
    return factories.cluster("leased")


def test_acquire_is_exclusive_and_renew_extends(cluster):
    a = collector_lease_acquire(cluster_id=cluster.pk, holder="a", seconds=15)
    assert a is not None and (a.holder, a.epoch) == ("a", 1)
    assert collector_lease_acquire(cluster_id=cluster.pk, holder="b", seconds=15) is None
    before = CollectorLease.objects.get(pk=cluster.pk)
    # Two clock readings of one statement (clock_timestamp() per column): microseconds apart.
    lease = before.expires_at - before.renewed_at
    assert timedelta(seconds=14) < lease <= timedelta(seconds=15, milliseconds=1)
    assert collector_lease_renew(lease=a, seconds=15)
    after = CollectorLease.objects.get(pk=cluster.pk)
    assert after.expires_at > before.expires_at and after.epoch == 1
    assert collector_leases_free(cluster_ids=[cluster.pk]) == set()


def test_an_expired_lease_is_stolen_and_the_old_holder_is_fenced_off(cluster):
    a = collector_lease_acquire(cluster_id=cluster.pk, holder="a")
    expire(cluster.pk)
    assert collector_leases_free(cluster_ids=[cluster.pk]) == {cluster.pk}
    b = collector_lease_acquire(cluster_id=cluster.pk, holder="b")
    assert b is not None and b.epoch == a.epoch + 1
    # The old holder can neither renew nor write any more.
    assert not collector_lease_renew(lease=a)
    with pytest.raises(LeaseLost), transaction.atomic():
        collector_lease_fence(lease=a)
    with transaction.atomic():
        assert collector_lease_fence(lease=b).holder == "b"


def test_the_same_holder_acquiring_again_gets_a_new_token(cluster):
    """A replica's old collector (an earlier epoch) is fenced off from its own later lease."""
    first = collector_lease_acquire(cluster_id=cluster.pk, holder="a")
    expire(cluster.pk)
    second = collector_lease_acquire(cluster_id=cluster.pk, holder="a")
    assert second.epoch == first.epoch + 1
    with pytest.raises(LeaseLost), transaction.atomic():
        collector_lease_fence(lease=first)


def test_an_expired_lease_nobody_took_refuses_writes_until_renewed(cluster):
    a = collector_lease_acquire(cluster_id=cluster.pk, holder="a")
    expire(cluster.pk)
    with pytest.raises(LeaseLost), transaction.atomic():
        collector_lease_fence(lease=a)
    # Nobody else wrote meanwhile, so the holder may renew it and write again.
    assert collector_lease_renew(lease=a)
    with transaction.atomic():
        collector_lease_fence(lease=a)


def test_release_frees_the_lease_at_once(cluster):
    a = collector_lease_acquire(cluster_id=cluster.pk, holder="a")
    assert collector_lease_release(lease=a)
    assert not collector_lease_release(lease=a)
    b = collector_lease_acquire(cluster_id=cluster.pk, holder="b")
    assert b is not None
    assert not collector_lease_renew(lease=a)


def test_fence_outside_a_transaction_is_a_programming_error(cluster):
    a = collector_lease_acquire(cluster_id=cluster.pk, holder="a")
    with pytest.raises(RuntimeError, match="inside the transaction"):
        collector_lease_fence(lease=a)


def test_figures_and_history_of_a_fenced_off_writer_are_refused_whole(world, published):
    cluster_id = world.interactive.cluster_id
    ClusterUtilisation.objects.all().delete()
    PoolUtilisation.objects.all().delete()
    a = collector_lease_acquire(cluster_id=cluster_id, holder="a")
    expire(cluster_id)
    b = collector_lease_acquire(cluster_id=cluster_id, holder="b")
    now = timezone.now()
    with pytest.raises(LeaseLost):
        utilisation_publish(
            cluster_id=cluster_id,
            state=CollectorState.LIVE,
            now=now,
            observed_at=now,
            figures=published,
            lease=a,
        )
    with pytest.raises(LeaseLost):
        utilisation_snapshot_record(figures=published, at=now, seconds=15, lease=a)
    assert not ClusterUtilisation.objects.exists() and not PoolUtilisation.objects.exists()
    assert not PoolSnapshot.objects.exists() and not TeamUsageSnapshot.objects.exists()
    # The holder's writes go through.
    utilisation_publish(
        cluster_id=cluster_id, state=CollectorState.LIVE, now=now, observed_at=now, figures=published, lease=b
    )
    assert utilisation_snapshot_record(figures=published, at=now, seconds=15, lease=b) == 1
    assert PoolUtilisation.objects.get(pool=world.interactive).gpus_requested == 10
    with pytest.raises(ValueError, match="used for cluster"):
        utilisation_publish(
            cluster_id=factories.cluster("other").pk,
            state=CollectorState.LIVE,
            now=now,
            observed_at=now,
            lease=b,
        )


def test_history_periods_never_overlap_across_a_takeover(world, published):
    """A's last sample at t0; B takes over and proposes a whole interval at t0 + 5 s: it stands for
    the 5 s since A's sample only. A sample not after the last one is not written."""
    cluster_id = world.interactive.cluster_id
    t0 = timezone.now()
    a = collector_lease_acquire(cluster_id=cluster_id, holder="a")
    assert utilisation_snapshot_record(figures=published, at=t0, seconds=15, lease=a) == 1
    expire(cluster_id)
    b = collector_lease_acquire(cluster_id=cluster_id, holder="b")
    assert utilisation_snapshot_record(figures=published, at=t0, seconds=15, lease=b) == 0
    assert (
        utilisation_snapshot_record(figures=published, at=t0 + timedelta(seconds=5), seconds=15, lease=b) == 1
    )
    assert (
        utilisation_snapshot_record(figures=published, at=t0 + timedelta(seconds=20), seconds=15, lease=b)
        == 1
    )
    rows = list(PoolSnapshot.objects.filter(pool=world.interactive).order_by("at"))
    assert [r.seconds for r in rows] == [15, 5, 15]
    teams = TeamUsageSnapshot.objects.filter(pool=world.interactive).order_by("at", "team_id")
    # vision holds 6 GPUs, nlp 4: each row is GPUs times the seconds it stands for.
    assert [(t.seconds, t.gpu_seconds) for t in teams] == [
        (15, 90),
        (15, 60),
        (5, 30),
        (5, 20),
        (15, 90),
        (15, 60),
    ]


def test_a_holder_paused_inside_its_write_does_not_block_the_takeover(cluster, monkeypatch):
    """The row lock of a fenced write makes the takeover wait for it; a writer that stops in the
    middle (a paused process) loses its session after FENCED_IDLE_TIMEOUT and its write with it.
    (A longer idle timeout than the real one here, so the acquisition that times out behind the
    lock cannot race the end of the session.)"""
    monkeypatch.setattr(leases, "FENCED_IDLE_TIMEOUT", "8s")
    a = collector_lease_acquire(cluster_id=cluster.pk, holder="a", seconds=2)
    fenced, outcome = threading.Event(), {}

    def paused_writer() -> None:
        try:
            with transaction.atomic():
                collector_lease_fence(lease=a)
                ClusterUtilisation.objects.create(cluster=cluster, heartbeat_at=timezone.now())
                fenced.set()
                # Idle inside the transaction for longer than the database allows.
                threading.Event().wait(11)
        except DatabaseError as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    writer = threading.Thread(target=paused_writer)
    writer.start()
    assert fenced.wait(10)
    # The paused writer's lock forbids moving the expiry: let the short lease run out instead.
    wait_until("the lease to expire", lambda: collector_leases_free(cluster_ids=[cluster.pk]), timeout=10)
    with pytest.raises(DatabaseError, match="lock timeout"):
        # Blocked by the paused write's lock: this round gives up after ACQUIRE_LOCK_TIMEOUT.
        collector_lease_acquire(cluster_id=cluster.pk, holder="b")
    writer.join(30)
    b = collector_lease_acquire(cluster_id=cluster.pk, holder="b")
    assert b is not None and b.epoch == a.epoch + 1
    assert "error" in outcome, "the paused write should have lost its session"
    assert not ClusterUtilisation.objects.filter(cluster=cluster).exists()


def test_replicas_count_each_other_and_forget_the_silent(db):
    assert collector_replica_heartbeat(holder="a", seconds=15) == 1
    assert collector_replica_heartbeat(holder="b", seconds=15) == 2
    CollectorReplica.objects.filter(holder="a").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert collector_replica_heartbeat(holder="b", seconds=15) == 1
    collector_replica_leave(holder="b")
    assert not CollectorReplica.objects.exists()


def test_supervisors_share_clusters_fairly_and_hand_them_over(settings):
    """Two supervisors, four clusters whose credentials cannot work (each collector just reports
    stale): two each once both run; one stopping cleanly hands its clusters over at once."""
    clusters = [factories.cluster(f"c{i}") for i in range(4)]
    for c in clusters:
        c.kubeconfig = "current-context: ["
        c.save()
    options = {"interval": 5, "backoff_max": 1, "lease_for": 3, "renew_every": 1}
    one, two = Supervisor(holder="one", **options), Supervisor(holder="two", **options)
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=s.run, args=(e,)) for s, e in zip((one, two), stops, strict=True)]
    threads[0].start()
    wait_until("one to hold all four", lambda: len(one.held) == 4)
    threads[1].start()
    try:
        wait_until("a fair share each", lambda: len(one.held) == 2 and len(two.held) == 2, timeout=30)
        holders = dict(CollectorLease.objects.values_list("cluster_id", "holder"))
        assert sorted(holders.values()) == ["one", "one", "two", "two"]
        assert set(one.held).isdisjoint(two.held)
        stops[0].set()
        threads[0].join(30)
        wait_until("two to hold all four", lambda: len(two.held) == 4, timeout=30)
        assert set(CollectorLease.objects.values_list("holder", flat=True)) == {"two"}
    finally:
        for e in stops:
            e.set()
        for t in threads:
            t.join(30)
    assert not CollectorLease.objects.exclude(holder="").exists()  # all released at the end
    assert not CollectorReplica.objects.exists()
