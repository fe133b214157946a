"""Concurrent approvals on PostgreSQL: throughput with the capacity checks and row locks, and the invariant.

Every approval of the final stage locks its pool row, so approvals of one pool serialise by design; the
figure is how many the database sustains while honouring that. Half the pools are oversubscribed so that
refusals are part of the load, and the run fails loudly if any pool ends above its grantable capacity.
"""

import multiprocessing as mp
import time
from datetime import timedelta
from typing import Any

from bench.common import Series, django_setup, fresh_catalogue, team_with_lead

PROCESSES = 4
POOLS = 4


def _prepare(n_requests: int) -> list[int]:
    from django.test import override_settings
    from django.utils import timezone

    from pools.models import NodePool, PoolClass
    from portal.models import User
    from quotas import services

    acc, cluster = fresh_catalogue()
    per_pool = n_requests // POOLS
    for i in range(POOLS):
        NodePool.objects.create(
            cluster=cluster,
            name=f"pool-{i}",
            pool_class=PoolClass.INTERACTIVE,
            accelerator=acc,
            priority_class_name="gpu-interactive-inference",
            # Requests are 1 GPU each: 80% of each pool's requests fit, the rest must be refused.
            capacity_gpus=int(per_pool * 0.8) + 2,
            headroom_gpus=2,
        )
    team, lead = team_with_lead("bench", "Bench", "lead")
    User.objects.create_user("admin", password="x", is_platform_admin=True)
    now = timezone.now()
    ids = []
    # Submitting picks the roomiest pool; disable that choice's side effects by creating drafts that all
    # fit at creation time (nothing is granted yet), spread evenly over the pools.
    with override_settings(PORTAL_PREFLIGHT=False):
        for i in range(n_requests):
            req = services.capacity_request_create(
                requester=lead,
                team=team,
                pool_class=PoolClass.INTERACTIVE,
                accelerator=acc,
                gpus=1,
                starts_at=now,
                ends_at=now + timedelta(days=1),
                purpose="bench",
                submit=False,
            )
            req.pool = NodePool.objects.get(name=f"pool-{i % POOLS}")
            req.save(update_fields=["pool"])
            services.capacity_request_submit(capacity_request=req, actor=lead)
            ids.append(req.pk)
    return ids


def _warm_broker() -> None:
    """Open the broker connection before the clock starts, as a long-running web process has it: the
    first task a process queues imports the transport and connects (about half a second here)."""
    from portal.celery import app

    with app.producer_or_acquire():
        pass


def _worker(ids: list[int], start_at: float, out: "mp.Queue[tuple[int, int]]") -> None:
    django_setup()
    from django.core.exceptions import ValidationError
    from django.test import override_settings

    from portal.models import User
    from quotas import services
    from quotas.models import CapacityRequest

    admin = User.objects.get(username="admin")
    approved = refused = 0
    _warm_broker()
    while time.time() < start_at:
        time.sleep(0.001)
    with override_settings(PORTAL_PREFLIGHT=False):
        for pk in ids:
            try:
                services.capacity_request_approve(capacity_request=CapacityRequest(pk=pk), actor=admin)
                approved += 1
            except ValidationError:
                refused += 1
    out.put((approved, refused))


def run_bulk_once(n_requests: int) -> dict[str, Any]:
    """The same requests decided in batches of the API's cap by one process: one pre-flight and one
    locked transaction per pool and batch, every rule checked before a request's writes, the audit
    rows inserted together (quotas.services.decisions)."""
    from django.db.models import Sum
    from django.test import override_settings

    from pools.models import NodePool
    from portal.celery import app
    from portal.models import User
    from quotas import services
    from quotas.models import Grant
    from quotas.services.decisions import APPROVE, MAX_BATCH

    ids = _prepare(n_requests)
    admin = User.objects.get(username="admin")
    approved = refused = 0
    _warm_broker()
    start = time.perf_counter()
    with override_settings(PORTAL_PREFLIGHT=False):
        for i in range(0, len(ids), MAX_BATCH):
            for r in services.capacity_requests_decide(
                actor=admin, request_ids=ids[i : i + MAX_BATCH], decision=APPROVE
            ):
                if r.outcome == "approved":
                    approved += 1
                else:
                    refused += 1
    elapsed = time.perf_counter() - start
    violations = []
    for pool in NodePool.objects.all():
        granted = Grant.objects.filter(pool=pool).aggregate(s=Sum("gpus"))["s"] or 0
        if granted > pool.grantable_gpus:
            violations.append(f"{pool.name}: {granted} > {pool.grantable_gpus}")
    if violations:
        raise AssertionError(f"capacity exceeded in bulk: {violations}")
    app.control.purge()
    return {"decisions": approved + refused, "approved": approved, "refused": refused, "seconds": elapsed}


def run_once(n_requests: int) -> dict[str, Any]:
    from django.db import connections
    from django.db.models import Sum

    from pools.models import NodePool
    from quotas.models import Grant

    ids = _prepare(n_requests)
    connections.close_all()
    ctx = mp.get_context("fork")
    out: mp.Queue[tuple[int, int]] = ctx.Queue()
    start_at = time.time() + 1.0
    procs = [ctx.Process(target=_worker, args=(ids[i::PROCESSES], start_at, out)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    elapsed = time.time() - start_at
    for p in procs:
        p.join()
    approved = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    violations = []
    for pool in NodePool.objects.all():
        granted = Grant.objects.filter(pool=pool).aggregate(s=Sum("gpus"))["s"] or 0
        if granted > pool.grantable_gpus:
            violations.append(f"{pool.name}: {granted} > {pool.grantable_gpus}")
    if violations:
        raise AssertionError(f"capacity exceeded: {violations}")
    from portal.celery import app

    app.control.purge()  # the reconcile tasks approvals queued: no worker consumes the bench broker
    return {"decisions": approved + refused, "approved": approved, "refused": refused, "seconds": elapsed}


def run(sizes: tuple[int, ...] = (200, 1000), repeats: int = 3) -> dict[str, Any]:
    django_setup()
    out: dict[str, Any] = {"processes": PROCESSES, "pools": POOLS, "sizes": {}}
    for n in sizes:
        rate = Series(f"approvals/s with {n} requests", "decisions/s")
        bulk_rate = Series(f"bulk decisions/s with {n} requests", "decisions/s")
        runs, bulk_runs = [], []
        for _ in range(repeats):
            r = run_once(n)
            runs.append(r)
            rate.values.append(r["decisions"] / r["seconds"])
            print(f"[bench approvals] n={n}: {r}", flush=True)
            b = run_bulk_once(n)
            bulk_runs.append(b)
            bulk_rate.values.append(b["decisions"] / b["seconds"])
            print(f"[bench approvals] n={n}, bulk: {b}", flush=True)
        out["sizes"][n] = {
            "rate": rate.summary(),
            "runs": runs,
            "bulk_rate": bulk_rate.summary(),
            "bulk_runs": bulk_runs,
            "capacity_violations": 0,
        }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(sizes=(200,), repeats=1), indent=2, default=str))
