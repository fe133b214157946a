"""Queueing through Kueue: time from approval to the first Job admitted, and admissions per second
through portal-made queues with 1,000 Jobs queued, on a testbed cluster of its own with the real
Kueue v0.17.0 (and the portal's collector following it).

Setup: the testbed with EXTRA_NODES H100 nodes (pool `bench-h100`, 8 GPUs each, batch class), the
demo seed plus that pool, a Celery worker reconciling, `manage.py collect_utilisation` running.

1. **First admission.** A team lead's batch request of 8 GPUs is approved by a platform admin (the
   pre-flight on); a client then tries to create a Job naming the grant's LocalQueue every 50 ms
   until the cluster accepts it (namespace, policy and queue in place), and the clock stops when
   Kueue admits its Workload. Also recorded: approval to the grant being Active, and to the portal
   showing the Workload admitted.
2. **Admissions at 1,000 queued Jobs.** Q grants (one ClusterQueue each) hold between them 1,000
   GPUs of nominal quota; in each a blocker Job takes all of it, then 1,000 one-GPU Jobs are created
   (N/Q per grant) and wait. The clock starts when the blockers are deleted: Kueue then admits the
   1,000 queued Jobs. Admissions/s = 1,000 / (time until every queue reports them admitted), read
   from the ClusterQueues' status every 0.25 s, so it includes the garbage collector removing the
   blockers' Workloads and Kueue's status updates; Kueue's own admission timestamps (whole seconds)
   give the span from the first to the last admission, and 1,000 / (span + 1 s) is Kueue's own
   rate. Also: until the portal's queue rows show them all.
   Run with Q = 1 (one queue: Kueue admits one Workload per ClusterQueue per scheduling cycle) and
   Q = 10.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Series,
    django_setup,
    log,
    process,
    reset_database,
    team_with_lead,
    testbed_cluster,
    wait_for,
)

CLUSTER_NAME = "gpu-portal-bench-queue"
POOL = "bench-h100"
GPUS_PER_NODE = 8
EXTRA_NODES = 125  # 1,000 H100s
WORKER_CONCURRENCY = 2
QUEUED = 1000
KUEUE = "kueue.x-k8s.io/v1beta2"


def _prepare(kubeconfig: str) -> None:
    from django.core.management import call_command

    from pools.kube.objects import POOL_LABEL
    from pools.models import Accelerator, Cluster, NodePool, PoolClass
    from pools.services import cluster_policies_apply, kueue_detect

    reset_database()
    call_command("seed_demo", kubeconfig=Path(kubeconfig), verbosity=0)
    cluster = Cluster.objects.get(name="local")
    cluster.kueue_version, note = kueue_detect(cluster)
    if not cluster.kueue_version:
        raise RuntimeError(f"the bench cluster serves no Kueue API: {note or 'no kueue.x-k8s.io group'}")
    cluster.save(update_fields=["kueue_version"])
    NodePool.objects.update_or_create(
        cluster=cluster,
        name=POOL,
        defaults={
            "pool_class": PoolClass.BATCH,
            "accelerator": Accelerator.objects.get(slug="h100-80gb"),
            "node_selector": {POOL_LABEL: POOL},
            "taint_key": POOL_LABEL,
            "taint_value": POOL,
            "priority_class_name": "gpu-batch-inference",
            "zones": ["zone-a", "zone-b"],
            # The 1,000 of part 2 plus the first-admission grants, which give theirs back by revoking.
            "capacity_gpus": EXTRA_NODES * GPUS_PER_NODE,
            "batch_fraction": 1,
        },
    )
    cluster_policies_apply(cluster=cluster)


def _job(namespace: str, name: str, gpus: int, pods: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kueue.x-k8s.io/queue-name": "gpu-grant"},
        },
        "spec": {
            "parallelism": pods,
            "completions": pods,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "priorityClassName": "gpu-batch-inference",
                    "containers": [
                        {
                            "name": "infer",
                            "image": "registry.example.com/batch/infer:1",
                            # Requests stated: Kueue fills missing ones from the namespace's LimitRange
                            # (500m, 1Gi), which would exceed these limits (docs/queueing.md).
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "100m", "memory": "128Mi", "nvidia.com/gpu": str(gpus)},
                            },
                        }
                    ],
                }
            },
        },
    }


def _grants(run: str, count: int, gpus: int) -> list[Any]:
    """`count` batch grants of `gpus` each, approved now by the platform admin (pre-flight on)."""
    from django.utils import timezone

    from pools.models import NodePool
    from portal.models import User
    from quotas import services
    from quotas.models import Grant

    pool = NodePool.objects.select_related("accelerator").get(name=POOL)
    admin = User.objects.get(username="admin")
    now = timezone.now()
    requests = []
    for index in range(count):
        team, lead = team_with_lead(f"{run}{index}", f"Bench {run} {index}", f"lead-{run}-{index}")
        requests.append(
            services.capacity_request_create(
                requester=lead,
                team=team,
                pool_class=pool.pool_class,
                accelerator=pool.accelerator,
                gpus=gpus,
                starts_at=now,
                ends_at=now + timedelta(days=1),
                purpose="bench",
            )
        )
    for req in requests:
        services.capacity_request_approve(capacity_request=req, actor=admin)
    return [Grant.objects.get(request=req) for req in requests]


def _admitted(workload: dict[str, Any]) -> str | None:
    for condition in (workload.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Admitted" and condition.get("status") == "True":
            return condition.get("lastTransitionTime")
    return None


def _end(grants: list[Any], cluster: Any) -> None:
    """Give the quota back and remove everything, so the next run starts on an empty pool."""
    from pools.kube import ops
    from portal.models import User
    from quotas import services

    admin = User.objects.get(username="admin")
    for grant in grants:
        services.grant_revoke(grant=grant, actor=admin, reason="bench run over")
        # The portal's way: the reconciler deletes the namespace and the grant's ClusterQueue.
        services.grant_namespace_delete(grant=grant, actor=admin)
    wait_for(
        "the bench namespaces to be gone",
        lambda: all(ops.get(cluster, "v1", "Namespace", g.namespace) is None for g in grants),
        timeout=600,
        interval=1.0,
    )


def first_admission(run: str, cluster: Any) -> dict[str, float]:
    from pools.kube import ops
    from pools.kube.errors import KubeError
    from pools.models import QueueStatus
    from quotas.models import CapacityRequest

    start = time.perf_counter()
    [grant] = _grants(run, 1, GPUS_PER_NODE)
    approved = time.perf_counter() - start

    def accepted() -> bool:
        try:
            ops.create(cluster, _job(grant.namespace, "first", GPUS_PER_NODE))
        except KubeError:
            return False
        return True

    wait_for("the cluster to accept a Job in the new grant", accepted, timeout=120, interval=0.05)
    job_accepted = time.perf_counter() - start

    def admitted() -> bool:
        return any(
            _admitted(w) for w in ops.list_objects(cluster, KUEUE, "Workload", namespace=grant.namespace)
        )

    wait_for("Kueue to admit the first Job", admitted, timeout=120, interval=0.05)
    first_admitted = time.perf_counter() - start
    wait_for(
        "the grant to be active",
        lambda: CapacityRequest.objects.get(pk=grant.request_id).state == "active",
        timeout=120,
        interval=0.05,
    )
    active = time.perf_counter() - start
    wait_for(
        "the portal to show the admitted Job",
        lambda: QueueStatus.objects.filter(grant=grant, admitted_workloads=1).exists(),
        timeout=120,
        interval=0.1,
    )
    shown = time.perf_counter() - start
    _end([grant], cluster)
    return {
        "approve_seconds": approved,
        "job_accepted_seconds": job_accepted,
        "first_admitted_seconds": first_admitted,
        "grant_active_seconds": active,
        "portal_shows_seconds": shown,
    }


def queued_admissions(run: str, cluster: Any, queues: int, queued: int = QUEUED) -> dict[str, Any]:
    from datetime import datetime

    from kubernetes import client as k8s

    from pools.kube import ops
    from pools.kube.client import connect
    from pools.models import QueueStatus

    per_queue = queued // queues
    grants = _grants(run, queues, per_queue)
    wait_for(
        f"{queues} grants to be active",
        lambda: all(type(g.request).objects.get(pk=g.request_id).state == "active" for g in grants),
        timeout=300,
        interval=0.2,
    )

    def cq(g: Any) -> dict[str, Any]:
        return ops.get(cluster, KUEUE, "ClusterQueue", g.namespace) or {}

    def total(key: str) -> int:
        return sum(int((cq(g).get("status") or {}).get(key) or 0) for g in grants)

    # Blockers: each takes its queue's whole nominal quota (pods of 4 GPUs).
    for g in grants:
        ops.create(cluster, _job(g.namespace, "blocker", 4, pods=per_queue // 4))
    wait_for(
        "the blockers to be admitted",
        lambda: total("admittedWorkloads") == queues,
        timeout=300,
        interval=0.25,
    )

    names = [(g.namespace, f"q-{i}") for g in grants for i in range(per_queue)]
    created_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda item: ops.create(cluster, _job(item[0], item[1], 1)), names))
    created = time.perf_counter() - created_start
    wait_for(
        f"{queued} Jobs to be pending", lambda: total("pendingWorkloads") == queued, timeout=600, interval=0.5
    )

    batch = k8s.BatchV1Api(connect(cluster).api)
    start = time.perf_counter()
    for g in grants:
        batch.delete_namespaced_job("blocker", g.namespace, propagation_policy="Background")
    wait_for(
        f"Kueue to admit {queued} Jobs",
        lambda: total("admittedWorkloads") == queued,
        timeout=900,
        interval=0.25,
    )
    seconds = time.perf_counter() - start
    wait_for(
        f"the portal to show {queued} admitted",
        lambda: (
            sum(QueueStatus.objects.filter(grant__in=grants).values_list("admitted_workloads", flat=True))
            == queued
        ),
        timeout=900,
        interval=0.25,
    )
    portal = time.perf_counter() - start
    stamps = sorted(
        datetime.fromisoformat(t.replace("Z", "+00:00"))
        for g in grants
        for w in ops.list_objects(cluster, KUEUE, "Workload", namespace=g.namespace)
        if (t := _admitted(w))
    )
    span = (stamps[-1] - stamps[0]).total_seconds() if stamps else None
    _end(grants, cluster)
    return {
        "queues": queues,
        "queued": queued,
        "create_seconds": created,
        "creates_per_second": queued / created,
        "admit_seconds": seconds,
        "admissions_per_second": queued / seconds,
        "kueue_span_seconds": span,
        # Kueue's timestamps are whole seconds: a span of s covers at most s + 1 seconds.
        "kueue_admissions_per_second": queued / (span + 1) if span is not None else None,
        "portal_shows_seconds": portal,
    }


def run(
    repeats: int = 3, queue_counts: tuple[int, ...] = (1, 10), workdir: str = "var/bench"
) -> dict[str, Any]:
    django_setup()
    from pools.models import Cluster
    from portal.celery import app

    os.makedirs(workdir, exist_ok=True)
    out: dict[str, Any] = {
        "cluster": f"testbed {CLUSTER_NAME}: {EXTRA_NODES} kwok nodes of 8 H100 in pool {POOL}, "
        "Kueue v0.17.0 (one process, client QPS 50, burst 100, batch/job integration), real "
        "kube-apiserver, scheduler, etcd",
        "worker": f"celery worker, prefork, concurrency {WORKER_CONCURRENCY}; collector every 5 s",
        "first_admission": {},
        "sizes": {},
    }
    with testbed_cluster(CLUSTER_NAME, extra_nodes=EXTRA_NODES) as kubeconfig:
        _prepare(kubeconfig)
        cluster = Cluster.objects.get(name="local")
        app.control.purge()
        worker_args = [
            sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=prefork",
            f"--concurrency={WORKER_CONCURRENCY}", "--loglevel=WARNING", "--hostname=bench-queue@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        collector_args = [sys.executable, "manage.py", "collect_utilisation", "--interval", "5"]
        with (
            process(worker_args, os.path.join(workdir, "queueing-worker.log")) as worker,
            process(collector_args, os.path.join(workdir, "queueing-collector.log")) as collector,
        ):
            # Measured from the approval on: the worker must be consuming by then (on a loaded machine
            # its start takes tens of seconds).
            wait_for(
                "the worker to answer",
                lambda: worker.poll() is not None or app.control.ping(timeout=1.0),
                180,
            )
            for proc, name in ((worker, "worker"), (collector, "collector")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited at start; see {workdir}/queueing-{name}.log")
            series = {
                k: Series(k, "s")
                for k in (
                    "job_accepted_seconds",
                    "first_admitted_seconds",
                    "grant_active_seconds",
                    "portal_shows_seconds",
                )
            }
            runs = []
            for index in range(repeats):
                r = first_admission(f"f{index}", cluster)
                runs.append(r)
                for key, s in series.items():
                    s.values.append(r[key])
                log("queueing", f"first admission: {r}")
            out["first_admission"] = {"seconds": {k: s.summary() for k, s in series.items()}, "runs": runs}
            for queues in queue_counts:
                rate = Series(f"admissions/s, {QUEUED} queued in {queues} queue(s)", "1/s")
                shown = Series("portal shows them all", "s")
                runs = []
                for index in range(repeats):
                    r = queued_admissions(f"q{queues}x{index}", cluster, queues)
                    runs.append(r)
                    rate.values.append(r["admissions_per_second"])
                    shown.values.append(r["portal_shows_seconds"])
                    log("queueing", f"{QUEUED} queued in {queues} queue(s): {r}")
                out["sizes"][queues] = {
                    "queued": QUEUED,
                    "admissions_per_second": rate.summary(),
                    "portal_shows_seconds": shown.summary(),
                    "runs": runs,
                }
    return out


if __name__ == "__main__":
    print(json.dumps(run(repeats=1), indent=2, default=str))
