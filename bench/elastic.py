"""Elastic pools on a testbed with Karpenter (kwok provider): how long an interactive GPU pod waits to
run with warm headroom held by placeholders versus scaling from zero, at the same node bring-up delay,
and how long an approval takes to become an Active grant on a pool with zero nodes.

Per bring-up delay B (set per NodePool through the testbed's bring-up annotation, so one cluster
serves every delay):

- **warm**: a pool with one node of headroom (placeholders hold it); a pod that follows the grant's
  contract is created and the clock stops when the apiserver reports it Running. The pod is deleted
  and the next run waits until the placeholders hold the headroom again on a replacement node.
- **cold**: a fresh pool (its own NodePool, no node, no headroom) per run: its request is approved
  (pre-flight from the collector's inventory), the clock for approval -> Active stops when the grant's
  request is `active`; then a contract pod is created and timed until Running (Karpenter's claim, the
  node's bring-up, the bind).

Beside it, the latency of `capacity_request_approve` itself with the pre-flight on: on a live cluster
(read from the collector's inventory, no request to the cluster) and on a cluster the collector marks
stale (refused at once with its reason).

The portal's worker (Celery, embedded beat for the warm-headroom sweep) and collector
(`manage.py collect_utilisation`) run as their own processes against the bench database; times are
wall clock, polled every 50 ms.
"""

import copy
import os
import socket
import sys
import time
from datetime import timedelta
from typing import Any

from bench.common import (
    Series,
    bench_env,
    django_setup,
    log,
    percentile,
    process,
    reset_database,
    team_with_lead,
    testbed_cluster,
    testbed_module,
    wait_for,
)

CLUSTER_NAME = "gpu-portal-bench-elastic"
DEAD = "bench-dead"
POLL = 0.05
TIMEOUT = 300.0


def _pod(namespace: str, pool: str, gpus: int, name: str) -> dict[str, Any]:
    prefix = "accelerator.platform.example.com/"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeSelector": {f"{prefix}pool": pool},
            "tolerations": [
                {"key": f"{prefix}gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                {"key": f"{prefix}pool", "operator": "Equal", "value": pool, "effect": "NoSchedule"},
            ],
            "priorityClassName": "gpu-interactive-inference",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "server",
                    "image": "registry.example.com/llm/vllm:v0.6.3",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


class Bench:
    def __init__(self, kubeconfig: str) -> None:
        from pools.models import Cluster

        self.tb = testbed_module()
        self.topology = self.tb.load_topology()
        self.shape = copy.deepcopy(
            next(p for p in self.topology["elasticPools"] if p["name"] == "interactive-h100")
        )
        with open(kubeconfig) as f:
            text = f.read()
        self.cluster = Cluster.objects.create(
            name="bench-elastic", kubeconfig=text, api_url="https://bench.invalid"
        )
        self.k8s = self.cluster

    # -- setup -----------------------------------------------------------------------------

    def catalogue(self) -> None:
        from pools.services import cluster_policies_apply
        from portal.models import User
        from tests import factories

        self.h100 = factories.accelerator(
            "h100-80gb", 80, name="H100 80GB", product="NVIDIA-H100-80GB-HBM3", type_label="nvidia-h100"
        )
        self.a100 = factories.accelerator(
            "a100-80gb", 80, name="A100 80GB", product="NVIDIA-A100-SXM4-80GB", type_label="nvidia-a100"
        )
        self.team, self.lead = team_with_lead("bench", "Bench", "lead")
        self.admin = User.objects.create_user("admin", password="x", is_platform_admin=True)
        cluster_policies_apply(cluster=self.cluster)

    def nodepool(self, name: str, bringup: float, limit: int) -> Any:
        from pools.kube import ops
        from pools.models import PoolClass
        from tests import factories

        spec = {**copy.deepcopy(self.shape), "name": name, "zones": ["zone-a"], "limits": {"gpus": limit}}
        spec["consolidateAfter"] = "30s"
        manifest = self.tb.render_nodepool(self.topology, spec, bringup)
        manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "gpu-portal-bench"
        ops.apply(self.k8s, manifest)
        return factories.pool(
            name, PoolClass.INTERACTIVE, self.h100, capacity=limit, cluster=self.cluster, node_groups=[name]
        )

    def wait_group(self, name: str) -> None:
        from pools.kube import ops
        from pools.kube.objects import condition_of
        from pools.models import ClusterInventory

        def ready() -> bool:
            nodepool = ops.get(self.k8s, "karpenter.sh/v1", "NodePool", name) or {}
            if (condition_of(nodepool, "Ready") or {}).get("status") != "True":
                return False
            inventory = ClusterInventory.objects.filter(cluster=self.cluster).first()
            groups = inventory.document.get("node_groups") if inventory else []
            return any(g["name"] == name and g.get("ready") is not False for g in groups or [])

        wait_for(f"NodePool {name} Ready in the collector's inventory", ready, TIMEOUT, interval=0.2)

    def request(self, gpus: int, accelerator: Any = None) -> Any:
        from django.utils import timezone

        from pools.models import PoolClass
        from quotas import services

        now = timezone.now()
        return services.capacity_request_create(
            requester=self.lead,
            team=self.team,
            pool_class=PoolClass.INTERACTIVE,
            accelerator=accelerator or self.h100,
            gpus=gpus,
            starts_at=now,
            ends_at=now + timedelta(days=1),
            purpose="bench",
        )

    def approve(self, req: Any) -> float:
        from quotas import services

        start = time.perf_counter()
        services.capacity_request_approve(capacity_request=req, actor=self.admin)
        return time.perf_counter() - start

    def active(self, req: Any) -> Any:
        from quotas.models import Grant
        from quotas.states import RequestState

        def done() -> Any:
            grant = Grant.objects.select_related("request").filter(request_id=req.pk).first()
            return grant if grant and grant.request.state == RequestState.ACTIVE else None

        return wait_for(f"request {req.pk} active", done, TIMEOUT, interval=POLL)

    def time_pod(self, namespace: str, pool: str, gpus: int, name: str) -> float:
        from pools.kube import ops

        start = time.perf_counter()
        ops.create(self.k8s, _pod(namespace, pool, gpus, name))

        def running() -> bool:
            pod = ops.get(self.k8s, "v1", "Pod", name, namespace) or {}
            return (pod.get("status") or {}).get("phase") == "Running"

        wait_for(f"pod {name} Running", running, TIMEOUT, interval=POLL)
        return time.perf_counter() - start

    def warm_held(self, pool: Any, gpus: int) -> None:
        from pools.models import WarmHeadroom

        wait_for(
            f"{gpus} warm GPUs held on {pool.name}",
            lambda: WarmHeadroom.objects.filter(pool=pool, gpus_held=gpus, gpus_wanted=gpus).exists(),
            TIMEOUT,
            interval=0.2,
        )

    # -- the measurements ------------------------------------------------------------------

    def delay(self, bringup: float, repeats: int) -> dict[str, Any]:
        from pools.kube import ops
        from pools.models import NodePool

        per_node = int(self.shape["gpus"])
        tag = f"{bringup:g}".replace(".", "-")
        warm_series = Series(f"pod to Running, warm, bring-up {bringup:g}s", "s")
        cold_series = Series(f"pod to Running, from zero, bring-up {bringup:g}s", "s")
        active_series = Series(f"approval to Active, zero-node pool, bring-up {bringup:g}s", "s")
        ratio = Series(f"warm / cold, bring-up {bringup:g}s", "x")

        warm_pool = self.nodepool(f"bw-{tag}", bringup, limit=per_node * 8)
        NodePool.objects.filter(pk=warm_pool.pk).update(headroom_gpus=per_node)
        warm_pool.refresh_from_db()
        self.wait_group(warm_pool.name)
        warm_req = self.request(per_node)
        type(warm_req).objects.filter(pk=warm_req.pk).update(pool=warm_pool)
        warm_req.refresh_from_db()
        self.approve(warm_req)
        warm_grant = self.active(warm_req)
        runs = []
        for i in range(repeats):
            self.warm_held(warm_pool, per_node)
            warm = self.time_pod(warm_grant.namespace, warm_pool.name, per_node, f"warm-{i}")
            # Cold: a new pool with no node for every run.
            cold_pool = self.nodepool(f"bc-{tag}-{i}", bringup, limit=per_node * 2)
            self.wait_group(cold_pool.name)
            req = self.request(1)
            # The request picks the roomiest pool; pin it to the cold one, as an admin would.
            type(req).objects.filter(pk=req.pk).update(pool=cold_pool)
            req.refresh_from_db()
            approve = self.approve(req)
            start = time.perf_counter()
            grant = self.active(req)
            to_active = time.perf_counter() - start + approve
            cold = self.time_pod(grant.namespace, cold_pool.name, 1, f"cold-{i}")
            # Gone, not just terminating: the grant's quota frees its GPUs only then.
            ops.delete(self.k8s, "v1", "Pod", f"warm-{i}", warm_grant.namespace)
            wait_for(
                f"pod warm-{i} to be gone",
                lambda i=i: ops.get(self.k8s, "v1", "Pod", f"warm-{i}", warm_grant.namespace) is None,
                TIMEOUT,
                interval=0.2,
            )
            NodePool.objects.filter(pk=cold_pool.pk).update(enabled=False)
            warm_series.values.append(warm)
            cold_series.values.append(cold)
            active_series.values.append(to_active)
            ratio.values.append(warm / cold)
            run = {"warm_seconds": warm, "cold_seconds": cold, "approval_to_active_seconds": to_active}
            runs.append(run)
            log("elastic", f"bring-up {bringup:g}s run {i + 1}: {run}")
        # This delay's pools are done: no more placeholders, no more requests land there.
        NodePool.objects.filter(pk=warm_pool.pk).update(enabled=False)
        return {
            "bringup_seconds": bringup,
            "warm": warm_series.summary(),
            "cold": cold_series.summary(),
            "ratio": ratio.summary(),
            "approval_to_active": active_series.summary(),
            "runs": runs,
        }

    def _latency_pool(self, cluster: Any) -> Any:
        """The testbed's static A100 pool, room for every sample. The worker's beat may have synced it
        from the cluster's inventory already (pools.services.cluster_sync_inventory, every 10 minutes):
        then that row."""
        from pools.models import NodePool, PoolClass
        from tests import factories

        pool = NodePool.objects.filter(cluster=cluster, name="interactive-a100").first()
        if pool is None:
            return factories.pool(
                "interactive-a100", PoolClass.INTERACTIVE, self.a100, capacity=1000, cluster=cluster
            )
        NodePool.objects.filter(pk=pool.pk).update(capacity_gpus=1000, headroom_gpus=0)
        pool.refresh_from_db()
        return pool

    def approval_latency(self, samples: int) -> dict[str, Any]:
        """capacity_request_approve with the pre-flight on: on the live cluster, and on one the
        collector marks stale; and the pre-flight alone."""
        from django.core.exceptions import ValidationError

        from pools.models import Cluster, ClusterUtilisation, CollectorState
        from pools.services import pool_preflight_refusal

        live_pool = self._latency_pool(self.cluster)
        live, preflight = [], []
        for _ in range(samples):
            start = time.perf_counter()
            assert pool_preflight_refusal(pool=live_pool) is None
            preflight.append((time.perf_counter() - start) * 1000)
        for _ in range(samples):
            req = self.request(1, self.a100)
            type(req).objects.filter(pk=req.pk).update(pool=live_pool)
            req.refresh_from_db()
            live.append(self.approve(req) * 1000)
        dead = Cluster.objects.get(name=DEAD)
        dead_pool = self._latency_pool(dead)
        wait_for(
            "the dead cluster marked stale",
            lambda: ClusterUtilisation.objects.filter(cluster=dead, state=CollectorState.STALE).exists(),
            60,
        )
        refused, reasons = [], set()
        for _ in range(samples):
            req = self.request(1, self.a100)
            type(req).objects.filter(pk=req.pk).update(pool=dead_pool)
            req.refresh_from_db()
            start = time.perf_counter()
            try:
                self.approve(req)
            except ValidationError as exc:
                reasons.add(exc.message.split(": ", 1)[-1].split(" since ")[0])
            refused.append((time.perf_counter() - start) * 1000)

        def stats(values: list[float]) -> dict[str, float]:
            return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}

        return {
            "samples": samples,
            "preflight_ms": stats(preflight),
            "live_ms": stats(live),
            "stale_ms": stats(refused),
            "stale_refusals": len(refused),
            "stale_reason": sorted(reasons),
        }


def run(
    delays: tuple[float, ...] = (15.0, 45.0), repeats: int = 3, workdir: str = "var/bench"
) -> dict[str, Any]:
    django_setup()
    from pools.models import Cluster
    from portal.celery import app

    os.makedirs(workdir, exist_ok=True)
    out: dict[str, Any] = {
        "cluster": f"testbed {CLUSTER_NAME}, Karpenter v1.13.0 (kwok provider), H100 NodePools (8 per node)",
        "delays": {},
    }
    with testbed_cluster(CLUSTER_NAME) as kubeconfig:
        reset_database()
        app.control.purge()
        bench = Bench(kubeconfig)
        bench.catalogue()
        # A cluster that does not answer, for the approval latency when the collector marks it stale.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        Cluster.objects.create(name=DEAD, api_url=f"http://127.0.0.1:{port}", token="t")
        worker_args = [
            sys.executable, "-m", "celery", "-A", "portal", "worker", "-B", "--pool=prefork",
            "--concurrency=2", "--loglevel=WARNING", "--hostname=bench-elastic@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat",
            "--schedule", os.path.join(workdir, "elastic-beat-schedule"),
        ]  # fmt: skip
        # The collector in its own process, as in production: approvals read what it wrote.
        collector_args = [
            sys.executable, "manage.py", "collect_utilisation", "--cluster", bench.cluster.name,
            "--cluster", DEAD, "--interval", "2", "--backoff-max", "2",
        ]  # fmt: skip
        env = bench_env(PORTAL_SWEEP_SECONDS="2", PORTAL_RESYNC_SECONDS="30")
        try:
            with (
                process(collector_args, os.path.join(workdir, "elastic-collector.log"), env=env),
                process(worker_args, os.path.join(workdir, "elastic-worker.log"), env=env) as worker,
            ):
                time.sleep(3)
                if worker.poll() is not None:
                    raise RuntimeError(f"the celery worker exited at start; see {workdir}/elastic-worker.log")
                wait_for("the collector's inventory", lambda: _live(bench.cluster), 60)
                for delay in delays:
                    out["delays"][f"{delay:g}"] = bench.delay(delay, repeats)
                out["approval_latency"] = bench.approval_latency(20)
        finally:
            app.control.purge()
    return out


def _live(cluster: Any) -> bool:
    from pools.models import ClusterInventory, ClusterUtilisation, CollectorState

    return (
        ClusterUtilisation.objects.filter(cluster=cluster, state=CollectorState.LIVE).exists()
        and ClusterInventory.objects.filter(cluster=cluster).exists()
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(delays=(10.0,), repeats=1), indent=2, default=str))
