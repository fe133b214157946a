"""Queue figures from hand-made Kueue objects (pools.utilisation.queues), and what the collector's
queue watch writes from them: live rows, admissions, history, /metrics. No cluster."""

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pools.models import KueueStatus, QueueSnapshot, QueueStatus, SnapshotResolution, WorkloadAdmission
from pools.utilisation import queue_services
from pools.utilisation.queue_watch import QueueWatch, trim_cluster_queue, trim_workload
from pools.utilisation.queues import (
    MIN_RATE_SPAN,
    QueueGrant,
    WorkloadState,
    admission_rate,
    compute_queues,
    workload_gpus,
)
from tests.provisioning.test_queue_manifests import batch_grant

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cluster_queue(
    name: str, nominal: int, *, used: int = 0, borrowed: int = 0, lend: int | None = None, borrow: int = 0
) -> dict:
    gpu: dict[str, Any] = {
        "name": "nvidia.com/gpu",
        "nominalQuota": str(nominal),
        "borrowingLimit": str(borrow),
    }
    if lend is not None:
        gpu["lendingLimit"] = str(lend)
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "gpu-capacity-portal"}},
        "spec": {
            "cohortName": "gpu-pool-batch",
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": "gpu-pool-batch",
                            "resources": [
                                {"name": "cpu", "nominalQuota": "64"},
                                {"name": "memory", "nominalQuota": "1Ti"},
                                gpu,
                            ],
                        }
                    ],
                }
            ],
        },
        "status": {
            "flavorsUsage": [
                {
                    "name": "gpu-pool-batch",
                    "resources": [{"name": "nvidia.com/gpu", "total": str(used), "borrowed": str(borrowed)}],
                }
            ],
            "conditions": [
                {"type": "Active", "status": "True", "reason": "Ready", "message": "Can admit new workloads"}
            ],
        },
    }


def workload(
    name: str,
    namespace: str,
    gpus: int,
    *,
    created: float,
    admitted: float | None = None,
    queue: str | None = None,
    priority: int = 0,
    evicted: float | None = None,
    finished: bool = False,
    message: str = "couldn't assign flavors to pod set main: insufficient unused quota",
) -> dict:
    conditions: list[dict[str, Any]] = []
    status: dict[str, Any] = {"conditions": conditions}
    if admitted is not None:
        conditions += [
            {
                "type": "QuotaReserved",
                "status": "True",
                "lastTransitionTime": ts(admitted),
                "message": "reserved",
            },
            {"type": "Admitted", "status": "True", "lastTransitionTime": ts(admitted), "message": "admitted"},
        ]
        status["admission"] = {
            "clusterQueue": queue or namespace,
            "podSetAssignments": [{"resourceUsage": {"cpu": "1", "nvidia.com/gpu": str(gpus)}}],
        }
    else:
        conditions.append(
            {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message}
        )
    if evicted is not None:
        conditions.append(
            {
                "type": "Evicted",
                "status": "True",
                "reason": "Preempted",
                "lastTransitionTime": ts(evicted),
                "message": "Preempted to accommodate a workload",
            }
        )
    if finished:
        conditions.append({"type": "Finished", "status": "True"})
    return {
        "metadata": {
            "name": f"job-{name}-abcde",
            "namespace": namespace,
            "uid": f"uid-{name}",
            "creationTimestamp": ts(created),
            "ownerReferences": [{"kind": "Job", "name": name}],
        },
        "spec": {
            "queueName": "gpu-grant",
            "priority": priority,
            "podSets": [
                {
                    "name": "main",
                    "count": 1,
                    "template": {
                        "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
                    },
                }
            ],
        },
        "status": status,
    }


GRANTS = {
    "a": QueueGrant(
        namespace="a",
        cluster_queue="a",
        local_queue="gpu-grant",
        resource="nvidia.com/gpu",
        grant_id=1,
        team_id=10,
        team="vision",
        pool_id=5,
    ),
    "b": QueueGrant(
        namespace="b",
        cluster_queue="b",
        local_queue="gpu-grant",
        resource="nvidia.com/gpu",
        grant_id=2,
        team_id=20,
        team="nlp",
        pool_id=5,
    ),
}


def test_a_borrowing_team_a_lending_team_and_the_queue_order() -> None:
    queues = [cluster_queue("a", 8, used=16, borrowed=8, borrow=8), cluster_queue("b", 8)]
    workloads = [
        workload("a-0", "a", 8, created=600, admitted=590),
        workload("a-1", "a", 8, created=599, admitted=590),
        workload("a-3", "a", 8, created=100),
        workload("a-2", "a", 8, created=300),
        workload("urgent", "a", 8, created=10, priority=100),
        workload("done", "a", 8, created=900, admitted=800, finished=True),
        workload("elsewhere", "other", 8, created=50),
    ]
    snapshot = compute_queues(queues, workloads, GRANTS, {}, NOW)
    a, b = snapshot.queues["a"], snapshot.queues["b"]
    assert (a.nominal_gpus, a.borrowing_limit_gpus, a.used_gpus, a.borrowed_gpus, a.lent_gpus) == (
        8,
        8,
        16,
        8,
        0,
    )
    assert (b.used_gpus, b.borrowed_gpus, b.lent_gpus) == (0, 0, 8)
    assert (a.admitted_workloads, a.pending_workloads) == (2, 3)
    # Higher priority first, then older first.
    pending = [w for w in a.workloads if w.state == WorkloadState.PENDING]
    assert [(w.job, w.position) for w in pending] == [("urgent", 1), ("a-2", 2), ("a-3", 3)]
    assert pending[1].waited_seconds == 300
    assert "insufficient unused quota" in pending[1].message
    assert a.oldest_pending_seconds == 300
    # The finished one is listed but neither admitted nor pending; other namespaces are not ours.
    assert {w.job: w.state for w in a.workloads}["done"] == WorkloadState.FINISHED
    assert "elsewhere" not in {w.job for w in a.workloads}
    assert {x.name for x in snapshot.admissions} == {"job-a-0-abcde", "job-a-1-abcde", "job-done-abcde"}


def test_a_preempted_workload_keeps_its_place_but_waits_since_its_eviction() -> None:
    workloads = [
        workload("later", "a", 8, created=200),
        workload("preempted", "a", 8, created=500, evicted=30),
    ]
    a = compute_queues([cluster_queue("a", 8)], workloads, GRANTS, {}, NOW).queues["a"]
    assert [(w.job, w.position, w.waited_seconds) for w in a.workloads] == [
        ("preempted", 1, 30),
        ("later", 2, 200),
    ]


def test_the_estimated_start_is_now_plus_position_over_the_recent_admission_rate() -> None:
    workloads = [workload(f"p{i}", "a", 1, created=100 - i) for i in range(3)]
    # 6 admissions over the last 10 minutes: 0.01 per second, so position n starts in n x 100 s.
    recent = {"a": [(f"u{i}", NOW - timedelta(minutes=10) + timedelta(minutes=i)) for i in range(6)]}
    a = compute_queues([cluster_queue("a", 8)], workloads, GRANTS, recent, NOW).queues["a"]
    assert a.recent_admissions == 6
    assert a.admission_rate_per_hour == pytest.approx(36.0)
    etas = [datetime.fromisoformat(w.eta) for w in a.workloads]
    assert etas == [NOW + timedelta(seconds=100 * n) for n in (1, 2, 3)]


def test_no_recent_admission_means_no_estimate_and_a_burst_is_spread_over_a_minute() -> None:
    a = compute_queues([cluster_queue("a", 8)], [workload("p", "a", 1, created=5)], GRANTS, {}, NOW).queues[
        "a"
    ]
    assert a.admission_rate_per_hour is None and a.workloads[0].eta is None
    old = [NOW - timedelta(hours=2)]
    assert admission_rate(old, NOW) is None
    burst = [NOW - timedelta(seconds=1)] * 3
    assert admission_rate(burst, NOW) == pytest.approx(3 / MIN_RATE_SPAN.total_seconds())


def test_admissions_seen_now_count_for_the_rate_once() -> None:
    workloads = [workload("in", "a", 1, created=120, admitted=60), workload("p", "a", 1, created=30)]
    recent = {"a": [("uid-in", NOW - timedelta(seconds=60))]}
    a = compute_queues([cluster_queue("a", 8, used=1)], workloads, GRANTS, recent, NOW).queues["a"]
    assert a.recent_admissions == 1


def test_lent_gpus_are_shared_among_idle_lenders_within_their_lending_limits() -> None:
    queues = [
        cluster_queue("a", 4, used=14, borrowed=10, borrow=10),
        cluster_queue("b", 8, lend=4),  # lends at most 4 of its 8 idle
        cluster_queue("c", 8, used=2),  # 6 idle
    ]
    grants = {**GRANTS, "c": dataclasses.replace(GRANTS["b"], namespace="c", cluster_queue="c", grant_id=3)}
    snap = compute_queues(queues, [], grants, {}, NOW)
    lent = {name: q.lent_gpus for name, q in snap.queues.items()}
    assert lent == {"a": 0, "b": 4, "c": 6}
    assert sum(lent.values()) == 10


def test_workload_gpus_come_from_the_admission_or_from_count_times_per_pod() -> None:
    admitted = workload("x", "a", 8, created=10, admitted=5)
    assert workload_gpus(admitted, "nvidia.com/gpu") == 8
    pending = workload("y", "a", 2, created=10)
    pending["spec"]["podSets"][0]["count"] = 3
    assert workload_gpus(pending, "nvidia.com/gpu") == 6
    assert workload_gpus(pending, "nvidia.com/mig-1g.10gb") == 0


def test_trimming_keeps_what_the_figures_read() -> None:
    full = workload("a-0", "a", 8, created=600, admitted=590)
    full["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["image"] = "big"
    full["status"]["conditions"].append({"type": "PodsReady", "status": "True"})
    trimmed = trim_workload(full)
    assert "image" not in trimmed["spec"]["podSets"][0]["template"]["spec"]["containers"][0]
    assert {c["type"] for c in trimmed["status"]["conditions"]} == {"QuotaReserved", "Admitted"}
    before = compute_queues([cluster_queue("a", 8, used=8)], [full], GRANTS, {}, NOW).queues["a"]
    after = compute_queues(
        [trim_cluster_queue(cluster_queue("a", 8, used=8))], [trimmed], GRANTS, {}, NOW
    ).queues["a"]
    assert before == after


# --- the queue watch's writes ----------------------------------------------------------------------


class FakeCache:
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def snapshot(self) -> list[dict]:
        return list(self.items)


@pytest.fixture
def queued_world(world):
    cluster = world.batch.cluster
    cluster.kueue_version = "v1beta2"
    cluster.save()
    return world, batch_grant(world, 8, "a", admission="kueue", borrow_gpus=8)


def test_the_watch_writes_live_rows_admissions_once_and_history(queued_world) -> None:
    world, grant = queued_world
    watch = QueueWatch(world.batch.cluster, interval=10)
    queues = [cluster_queue("a", 8, used=8, borrow=8)]
    now = datetime.now(UTC)
    workloads = [workload("a-0", "a", 8, created=120, admitted=60), workload("a-1", "a", 8, created=30)]
    watch._publish_figures(workloads, queues, now)
    watch._publish_figures(workloads, queues, now + timedelta(seconds=1))
    row = QueueStatus.objects.get(name="a")
    assert (row.grant_id, row.team_id, row.pool_id) == (grant.pk, world.vision.pk, world.batch.pk)
    assert (row.admitted_workloads, row.pending_workloads, row.used_gpus, row.nominal_gpus) == (1, 1, 8, 8)
    assert [w["position"] for w in row.detail["workloads"]] == [1, None]
    [admission] = WorkloadAdmission.objects.all()
    assert (admission.uid, admission.team_id, admission.gpus, admission.wait_seconds) == (
        "uid-a-0",
        world.vision.pk,
        8,
        60,
    )
    [sample] = QueueSnapshot.objects.all()
    assert (sample.pool_id, sample.team_id, sample.pending_workloads, sample.used_gpus) == (
        world.batch.pk,
        world.vision.pk,
        1,
        8,
    )
    # A queue gone from the cluster is gone from the portal.
    watch._publish_figures([], [], now + timedelta(seconds=2))
    assert not QueueStatus.objects.exists()


def test_history_counts_admissions_of_the_sample_period_and_rolls_up(queued_world) -> None:
    world, _ = queued_world
    watch = QueueWatch(world.batch.cluster, interval=0.001)
    start = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    watch._publish_figures([], [cluster_queue("a", 8)], start)
    WorkloadAdmission.objects.create(
        cluster=world.batch.cluster,
        uid="u1",
        admitted_at=start + timedelta(seconds=5),
        queued_at=start - timedelta(seconds=25),
        namespace="a",
        name="w",
        cluster_queue="a",
        pool=world.batch,
        team=world.vision,
        gpus=8,
    )
    watch._publish_figures([], [cluster_queue("a", 8)], start + timedelta(seconds=10))
    rows = list(QueueSnapshot.objects.order_by("at"))
    assert [(r.admissions, r.admission_wait_seconds) for r in rows] == [(0, 0), (1, 30)]
    counts = queue_services.queue_history_compact(now=start + timedelta(minutes=10))
    assert counts["rolled_up_300"] == 1
    [bucket] = QueueSnapshot.objects.filter(resolution=SnapshotResolution.FIVE_MINUTES)
    assert (bucket.admissions, bucket.admission_wait_seconds) == (1, 30)


def test_metrics_expose_queue_gauges_per_pool_and_team(queued_world, client, settings) -> None:
    settings.PORTAL_METRICS_TOKEN = ""
    world, _ = queued_world
    watch = QueueWatch(world.batch.cluster, interval=10)
    now = datetime.now(UTC)
    watch._publish_figures([workload("a-1", "a", 8, created=30)], [cluster_queue("a", 8, borrow=8)], now)
    KueueStatus.objects.create(cluster=world.batch.cluster, heartbeat_at=now, webhook_ok=False)
    text = client.get("/metrics").content.decode()
    cluster = world.batch.cluster.name
    labels = f'cluster="{cluster}",cluster_queue="a",namespace="a",pool="batch-h100",team="vision"'
    assert f"gpu_portal_queue_pending_workloads{{{labels}}} 1.0" in text
    assert f"gpu_portal_queue_nominal_gpus{{{labels}}} 8.0" in text
    assert f'gpu_portal_kueue_webhook_up{{cluster="{world.batch.cluster.name}"}} 0.0' in text
