"""Provisioning throughput: approve N requests at once and time until every grant is Active, against
kubectl applying the same manifests one object at a time and as one directory, on the same cluster.
Two portal paths: approvals one after another (each queues its grant's first apply, whose pass also
takes the other approved grants waiting then, quotas.reconcile.bulk.grants_provision), and one bulk
decision (quotas.services.decisions: one pre-flight and one locked transaction per pool, the grants
queued together in chunks of 25, each chunk one pass).

What the portal does beyond the baselines: the approvals themselves (with the cluster pre-flight)
count; per grant the worker applies the grant's 4 objects (the 3 cluster-wide ones once per pass),
waits until the quota controller reports the new quota, proves the policy and the injection are in
force with dry-run pods (a pair per pass), and records conditions, the state move and audit rows in
PostgreSQL. kubectl only applies. Each run uses a fresh team slug and fresh baseline
namespace names, so every object is new.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    KUBECTL,
    Series,
    django_setup,
    log,
    process,
    reset_database,
    team_with_lead,
    testbed_cluster,
    wait_for,
)

CLUSTER_NAME = "gpu-portal-bench"
POOL = "interactive-a100"
WORKER_CONCURRENCY = 4
FIELD_MANAGER = "bench-kubectl"


def _prepare(kubeconfig: str) -> None:
    from django.core.management import call_command

    from pools.models import NodePool

    reset_database()
    call_command("seed_demo", kubeconfig=Path(kubeconfig), verbosity=0)
    # Room for every request: the benchmark measures provisioning, not the capacity rules.
    NodePool.objects.filter(name=POOL).update(capacity_gpus=100_000, headroom_gpus=0, max_gpus_per_team=None)
    # No warm headroom on the elastic pools: a placeholder node coming up would only add noise here.
    NodePool.objects.exclude(node_groups=[]).update(headroom_gpus=0)


def _requests(run: int, n: int) -> list[int]:
    from django.test import override_settings
    from django.utils import timezone

    from pools.models import NodePool
    from quotas import services

    pool = NodePool.objects.select_related("accelerator").get(name=POOL)
    team, lead = team_with_lead(f"b{run}", f"Bench {run}", f"lead{run}")
    now = timezone.now()
    ids = []
    with override_settings(PORTAL_PREFLIGHT=False):
        for _ in range(n):
            req = services.capacity_request_create(
                requester=lead,
                team=team,
                pool_class=pool.pool_class,
                accelerator=pool.accelerator,
                gpus=1,
                starts_at=now,
                ends_at=now + timedelta(days=1),
                purpose="bench",
                submit=False,
            )
            req.pool = pool
            req.save(update_fields=["pool"])
            services.capacity_request_submit(capacity_request=req, actor=lead)
            ids.append(req.pk)
    return ids


def _portal(ids: list[int], timeout: float) -> dict[str, float]:
    from portal.models import User
    from quotas import services
    from quotas.models import CapacityRequest
    from quotas.states import RequestState

    admin = User.objects.get(username="admin")
    start = time.perf_counter()
    for pk in ids:  # the preflight stays on: each approval checks the pool's nodes on the cluster
        services.capacity_request_approve(capacity_request=CapacityRequest(pk=pk), actor=admin)
    approved = time.perf_counter() - start

    def active() -> bool:
        return CapacityRequest.objects.filter(pk__in=ids, state=RequestState.ACTIVE).count() == len(ids)

    wait_for(f"{len(ids)} grants to become Active", active, timeout, interval=0.2)
    return {"approve_seconds": approved, "seconds": time.perf_counter() - start}


BULK_LINE = re.compile(
    r"bulk reconcile on \S+: (\d+) grants, applied in ([\d.]+) s, enforcement proven in ([\d.]+) s, "
    r"recorded in ([\d.]+) s"
)


def _bulk_phases(worker_log: str, offset: int) -> dict[str, float]:
    """The bulk reconciles' own account of their passes since `offset` of the worker's log
    (quotas.reconcile.bulk.BULK_TIMING): seconds summed over passes, which run in parallel in the
    worker's processes, so they add up to more than the wall time."""
    with open(worker_log, errors="replace") as f:
        f.seek(offset)
        passes = [m.groups() for m in BULK_LINE.finditer(f.read())]
    return {
        "passes": len(passes),
        "grants": sum(int(p[0]) for p in passes),
        "apply_seconds": sum(float(p[1]) for p in passes),
        "enforcement_seconds": sum(float(p[2]) for p in passes),
        "record_seconds": sum(float(p[3]) for p in passes),
    }


def _portal_bulk(ids: list[int], timeout: float, worker_log: str) -> dict[str, Any]:
    from portal.models import User
    from quotas import services
    from quotas.models import CapacityRequest
    from quotas.services.decisions import APPROVE, MAX_BATCH
    from quotas.states import RequestState

    admin = User.objects.get(username="admin")
    offset = os.path.getsize(worker_log)
    start = time.perf_counter()
    for i in range(0, len(ids), MAX_BATCH):  # the preflight stays on: once per pool and batch
        results = services.capacity_requests_decide(
            actor=admin, request_ids=ids[i : i + MAX_BATCH], decision=APPROVE
        )
        refused = [r for r in results if r.outcome != "approved"]
        if refused:
            raise RuntimeError(f"{len(refused)} bulk approvals refused, the first: {refused[0].error}")
    approved = time.perf_counter() - start

    def active() -> bool:
        return CapacityRequest.objects.filter(pk__in=ids, state=RequestState.ACTIVE).count() == len(ids)

    wait_for(f"{len(ids)} bulk-approved grants to become Active", active, timeout, interval=0.2)
    seconds = time.perf_counter() - start
    time.sleep(0.5)  # the last pass logs its timing just after it commits
    return {"approve_seconds": approved, "seconds": seconds, "phases": _bulk_phases(worker_log, offset)}


def _baseline_manifests(ids: list[int], prefix: str) -> list[dict[str, Any]]:
    """The portal's own desired objects for these grants, in fresh namespaces; cluster-wide ones once."""
    from quotas import manifests
    from quotas.models import Grant
    from quotas.reconcile.base import grant_contract, grant_shared_objects

    grants = Grant.objects.select_related("request", "team", "pool__cluster", "pool__accelerator").filter(
        request_id__in=ids
    )
    objects: dict[tuple[str, str, str], dict[str, Any]] = {}
    for grant in grants:
        contract = dataclasses.replace(grant_contract(grant), namespace=f"{prefix}-{grant.request_id}")
        shared = grant_shared_objects(grant.pool.cluster, contract)
        for m in [*shared, *manifests.grant_objects(contract)]:
            objects[(m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"])] = m
    return list(objects.values())


def _kubectl(kubeconfig: str, path: str) -> None:
    subprocess.run(
        [
            KUBECTL,
            f"--kubeconfig={kubeconfig}",
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
            "-f",
            path,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )


def _write(directory: str, objects: list[dict[str, Any]]) -> list[str]:
    # kubectl applies a directory's files in name order: cluster-wide objects and namespaces first.
    def rank(m: dict[str, Any]) -> int:
        return 0 if "namespace" not in m["metadata"] else 1

    paths = []
    for i, m in enumerate(sorted(objects, key=rank)):
        path = os.path.join(directory, f"{rank(m)}-{i:06d}.json")
        with open(path, "w") as f:
            json.dump(m, f)
        paths.append(path)
    return paths


def _one_at_a_time(kubeconfig: str, objects: list[dict[str, Any]]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-kubectl-") as d:
        paths = _write(d, objects)
        start = time.perf_counter()
        for path in paths:
            _kubectl(kubeconfig, path)
        return time.perf_counter() - start


def _directory(kubeconfig: str, objects: list[dict[str, Any]]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-kubectl-") as d:
        _write(d, objects)
        start = time.perf_counter()
        _kubectl(kubeconfig, d)
        return time.perf_counter() - start


def run(sizes: tuple[int, ...] = (50, 200), repeats: int = 3, workdir: str = "var/bench") -> dict[str, Any]:
    django_setup()
    from portal.celery import app

    os.makedirs(workdir, exist_ok=True)
    out: dict[str, Any] = {
        "cluster": f"testbed {CLUSTER_NAME} (kwok nodes, real kube-apiserver/controller-manager/etcd)",
        "pool": POOL,
        "worker": f"celery worker, prefork, concurrency {WORKER_CONCURRENCY}, bench database and broker",
        "kubectl": KUBECTL,
        "sizes": {},
    }
    with testbed_cluster(CLUSTER_NAME) as kubeconfig:
        _prepare(kubeconfig)
        app.control.purge()
        # The approvals' pre-flight reads the collector's live inventory: the collector runs in its own
        # process, as in production.
        from pools.models import ClusterInventory

        collector_args = [sys.executable, "manage.py", "collect_utilisation", "--cluster", "local"]
        worker_log = os.path.join(workdir, "provisioning-worker.log")
        worker_args = [
            sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=prefork",
            f"--concurrency={WORKER_CONCURRENCY}", "--loglevel=INFO", "--hostname=bench@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with (
            process(collector_args, os.path.join(workdir, "provisioning-collector.log")),
            process(worker_args, worker_log) as worker,
        ):
            wait_for("the collector's inventory", lambda: ClusterInventory.objects.exists(), 60)
            time.sleep(3)
            if worker.poll() is not None:
                raise RuntimeError(
                    f"the celery worker exited at start; see {workdir}/provisioning-worker.log"
                )
            run_no = 0
            for n in sizes:
                series = {
                    k: Series(f"{k} with {n} grants", "s")
                    for k in ("portal", "portal_bulk", "kubectl_one_at_a_time", "kubectl_directory")
                }
                ratios = {
                    k: Series(f"portal/{k} with {n} grants", "x")
                    for k in ("one_at_a_time", "directory", "bulk_directory")
                }
                runs = []
                objects = 0
                for _ in range(repeats):
                    run_no += 1
                    ids = _requests(run_no, n)
                    portal = _portal(ids, timeout=max(300.0, 5.0 * n))
                    run_no += 1
                    bulk = _portal_bulk(
                        _requests(run_no, n), timeout=max(300.0, 5.0 * n), worker_log=worker_log
                    )
                    one = _one_at_a_time(kubeconfig, _baseline_manifests(ids, f"kc1-{run_no}"))
                    directory_objects = _baseline_manifests(ids, f"kcd-{run_no}")
                    directory = _directory(kubeconfig, directory_objects)
                    objects = len(directory_objects)
                    r = {
                        **portal,
                        "bulk_approve_seconds": bulk["approve_seconds"],
                        "bulk_seconds": bulk["seconds"],
                        "bulk_phases": bulk["phases"],
                        "kubectl_one_at_a_time_seconds": one,
                        "kubectl_directory_seconds": directory,
                        "objects": objects,
                    }
                    runs.append(r)
                    series["portal"].values.append(portal["seconds"])
                    series["portal_bulk"].values.append(bulk["seconds"])
                    ratios["bulk_directory"].values.append(bulk["seconds"] / directory)
                    series["kubectl_one_at_a_time"].values.append(one)
                    series["kubectl_directory"].values.append(directory)
                    ratios["one_at_a_time"].values.append(portal["seconds"] / one)
                    ratios["directory"].values.append(portal["seconds"] / directory)
                    log("provisioning", f"n={n}: {r}")
                out["sizes"][n] = {
                    "objects": objects,
                    "seconds": {k: s.summary() for k, s in series.items()},
                    "objects_per_second": {k: objects / s.summary()["median"] for k, s in series.items()},
                    "ratio": {k: s.summary() for k, s in ratios.items()},
                    "runs": runs,
                }

    return out


if __name__ == "__main__":
    print(json.dumps(run(sizes=(10,), repeats=1), indent=2, default=str))
