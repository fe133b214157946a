"""Two real collector processes (`manage.py collect_utilisation`) share two testbed clusters: each
cluster is watched by exactly one; a replica that is paused (SIGSTOP) and one that is killed
(SIGKILL) have their cluster taken over by the other within the stated bound, the figures of both
clusters are live again, and no history or usage period is ever counted twice.

The second cluster is this module's own (`<testbed name>-b`), started and stopped here."""

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from pools.kube import ops
from pools.models import (
    Cluster,
    ClusterUtilisation,
    CollectorLease,
    CollectorState,
    NodePool,
    PoolClass,
    PoolSnapshot,
    PoolUtilisation,
    SnapshotResolution,
    TeamUsageSnapshot,
)
from tests import factories
from tests.common import database_url
from tests.testbed import TEST_LABEL, load_testbed_module, unique_name, wait_until
from tests.utilisation.conftest import PrivatePool

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 2  # seconds between history samples: many samples, and periods to check, in little time
# The stated bound (docs/utilisation.md "Scaling out"): a lease expires LEASE seconds after its
# last renewal, and the other replicas try to acquire every RENEW seconds.
TAKEOVER_BOUND = settings.PORTAL_COLLECTOR_LEASE_SECONDS + settings.PORTAL_COLLECTOR_RENEW_SECONDS
# Scheduling slack on a loaded machine, on top of the bound, for the waits.
SLACK = 5


@pytest.fixture(scope="module")
def second_cluster(testbed):
    tb = load_testbed_module()
    name = f"{testbed.name if testbed.local else 'gpu-portal-test'}-b"
    try:
        try:
            kubeconfig = tb.up(name)
        except tb.TestbedError:
            # On a loaded machine a component may miss its start-up deadline; `up` is idempotent
            # and starts what is not running.
            kubeconfig = tb.up(name)
        yield kubeconfig.read_text()
    finally:
        tb.down(name)


class Replica:
    """One `collect_utilisation` process on the test database, in its own process group."""

    def __init__(self, label: str, workdir: Path) -> None:
        self.label = label
        self.log = workdir / f"collector-{label}.log"
        env = {
            **os.environ,
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            "DJANGO_SETTINGS_MODULE": "portal.settings.test",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "collect_utilisation",
                    "--interval",
                    str(INTERVAL),
                    "--backoff-max",
                    "2",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def holds(self, lease: CollectorLease | None) -> bool:
        # holder_id(): host:pid:random
        return lease is not None and lease.holder.split(":")[1:2] == [str(self.proc.pid)]

    def signal(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.label} (pid {self.proc.pid}) ---\n" + "\n".join(self.text().splitlines()[-lines:])

    def end(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait(30)


def lease_of(cluster: Cluster) -> CollectorLease | None:
    return CollectorLease.objects.filter(cluster=cluster).exclude(holder="").first()


def live(pool: NodePool, requested: int, since: datetime | None = None) -> bool:
    status = ClusterUtilisation.objects.filter(cluster_id=pool.cluster_id).first()
    figures = PoolUtilisation.objects.filter(pool=pool).first()
    return (
        status is not None
        and status.state == CollectorState.LIVE
        and figures is not None
        and figures.gpus_requested == requested
        and (since is None or (status.heartbeat_at > since and figures.computed_at > since))
    )


def make_namespace(cluster: Cluster, name: str) -> None:
    ops.apply(
        cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {TEST_LABEL: "true"}}},
    )
    wait_until(
        f"the default service account of {name}",
        lambda: ops.get(cluster, "v1", "ServiceAccount", "default", name),
    )


def assert_periods_never_overlap(pools: list[NodePool], gpus: dict[int, set[int]]) -> dict[int, int]:
    """Raw samples per pool, and usage rows per pool and team: each stands for the `seconds` up to
    its `at`, and no two of them share any of that time. Returns the samples per pool."""
    counts = {}
    for pool in pools:
        rows = list(PoolSnapshot.objects.filter(pool=pool, resolution=SnapshotResolution.RAW).order_by("at"))
        counts[pool.pk] = len(rows)
        for before, after in itertools.pairwise(rows):
            gap = (after.at - before.at).total_seconds()
            assert 0 < after.seconds <= gap + 1e-6, (pool.name, before.at, after.at, after.seconds)
        by_team = defaultdict(list)
        for row in TeamUsageSnapshot.objects.filter(pool=pool, resolution=SnapshotResolution.RAW).order_by(
            "at"
        ):
            by_team[row.team_id].append(row)
            # GPU-seconds are the GPUs held times the seconds the row stands for, never more.
            assert round(row.gpu_seconds / row.seconds) in gpus[pool.pk], (
                pool.name,
                row.gpu_seconds,
                row.seconds,
            )
        for team_rows in by_team.values():
            for before, after in itertools.pairwise(team_rows):
                assert after.seconds <= (after.at - before.at).total_seconds() + 1e-6, (pool.name, after.at)
    return counts


def test_two_collectors_share_two_clusters_and_take_over(world, testbed, second_cluster, tmp_path):
    one = testbed.cluster(name="shard-one")
    two = Cluster.objects.create(name="shard-two", kubeconfig=second_cluster)
    clusters = (one, two)
    private = {c.pk: PrivatePool(c, unique_name("shard")) for c in clusters}
    namespaces = {c.pk: unique_name("t", f"shard-{c.name}") for c in clusters}
    pools, pods = {}, {one.pk: 3, two.pk: 2}
    replicas: list[Replica] = []
    try:
        for c in clusters:
            private[c.pk].add_nodes(1, gpus=8)
            pools[c.pk] = factories.pool(
                private[c.pk].name, PoolClass.EXPERIMENTATION, world.a100, capacity=8, cluster=c
            )
            make_namespace(c, namespaces[c.pk])
            factories.active_grant(world.vision, pools[c.pk], 8, namespaces[c.pk])
            pod = private[c.pk].pod("serve", pods[c.pk])
            ops.create(c, {**pod, "metadata": {"name": "serve", "namespace": namespaces[c.pk]}})

        # Only these two clusters are enabled (the world's own pools' cluster has no credentials).
        Cluster.objects.exclude(pk__in=[c.pk for c in clusters]).update(enabled=False)
        replicas = [Replica("first", tmp_path), Replica("second", tmp_path)]

        def logs() -> str:
            return "\n".join(r.tail() for r in replicas)

        def holder_of(cluster: Cluster) -> Replica | None:
            lease = lease_of(cluster)
            return next((r for r in replicas if r.holds(lease)), None)

        def both_watched_one_each() -> bool:
            holders = [holder_of(c) for c in clusters]
            return (
                None not in holders
                and holders[0] is not holders[1]
                and all(live(pools[c.pk], pods[c.pk]) for c in clusters)
            )

        # Both start at once: one may grab both clusters first, then hands one over (fair share).
        wait_until(
            "each replica to watch one cluster, live", both_watched_one_each, timeout=90, diagnostics=logs
        )

        def take_over(victim: Replica, how: int) -> tuple[Cluster, Replica, CollectorLease, float]:
            cluster = next(c for c in clusters if holder_of(c) is victim)
            survivor = next(r for r in replicas if r is not victim)
            before = lease_of(cluster)
            started, started_at = time.monotonic(), timezone.now()
            victim.signal(how)
            lease = wait_until(
                f"{survivor.label} to take {cluster.name} over",
                lambda: (lease := lease_of(cluster)) and survivor.holds(lease) and lease,
                timeout=TAKEOVER_BOUND + SLACK,
                interval=0.1,
                diagnostics=logs,
            )
            measured = time.monotonic() - started
            assert lease.epoch == before.epoch + 1 and lease.acquired_at > started_at
            wait_until(
                f"{cluster.name}'s figures live again",
                lambda: live(pools[cluster.pk], pods[cluster.pk], since=lease.acquired_at),
                timeout=30,
                diagnostics=logs,
            )
            live_after = time.monotonic() - started
            print(
                f"\n{signal.Signals(how).name} {victim.label}: {cluster.name} taken over by "
                f"{survivor.label} after {measured:.1f}s (bound {TAKEOVER_BOUND:g}s), figures live "
                f"again after {live_after:.1f}s"
            )
            return cluster, survivor, lease, measured

        # 1. A paused replica (its process stopped, not dead): the other takes its cluster over; when
        # it wakes up it finds the lease gone, stops watching and writes nothing more for it.
        paused = holder_of(one)
        cluster, survivor, lease, _ = take_over(paused, signal.SIGSTOP)
        assert all(live(pools[c.pk], pods[c.pk]) for c in clusters)
        paused.signal(signal.SIGCONT)
        wait_until(
            f"{paused.label} to stop watching {cluster.name}",
            lambda: f"collector {cluster.name}: stopping" in paused.text(),
            timeout=TAKEOVER_BOUND + SLACK,
            diagnostics=logs,
        )
        # Two replicas again: the fair share is one each, and the woken one gets one back.
        wait_until("one cluster each again", both_watched_one_each, timeout=60, diagnostics=logs)

        # 2. A killed replica: the other takes its cluster over.
        victim = holder_of(two)
        cluster, survivor, lease, _ = take_over(victim, signal.SIGKILL)
        victim.proc.wait(30)
        assert all(holder_of(c) is survivor for c in clusters)
        assert all(live(pools[c.pk], pods[c.pk]) for c in clusters)

        # The survivor follows the taken-over cluster: a change there reaches its figures.
        ops.delete(cluster, "v1", "Pod", "serve", namespaces[cluster.pk])
        pods[cluster.pk] = 0
        wait_until("the deleted pod's GPUs released", lambda: live(pools[cluster.pk], 0), diagnostics=logs)
        # Samples of both clusters continue after the takeover (nothing lost).
        wait_until(
            "history samples of both clusters after the takeover",
            lambda: all(
                PoolSnapshot.objects.filter(pool=pools[c.pk], at__gt=lease.acquired_at).count() >= 2
                for c in clusters
            ),
            timeout=30,
            diagnostics=logs,
        )

        survivor.signal(signal.SIGTERM)
        assert survivor.proc.wait(30) == 0, survivor.tail()
        # A clean stop hands everything back at once.
        assert not CollectorLease.objects.exclude(holder="").exists()

        held = {pools[one.pk].pk: {3}, pools[two.pk].pk: {2}}  # GPUs the grant's pod held while it ran
        counts = assert_periods_never_overlap(list(pools.values()), held)
        assert all(n >= 10 for n in counts.values()), counts
        assert "lease lost" in paused.text() or "another replica holds the lease" in paused.text(), (
            paused.tail()
        )
    finally:
        for r in replicas:
            r.end()
        for c in clusters:
            private[c.pk].delete_nodes()
            ops.delete(c, "v1", "Namespace", namespaces[c.pk])
