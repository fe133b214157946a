"""The Kueue quantities of a grant that queues (docs/queueing.md), computed from the grant, its
request and its pool's policy; quotas.reconcile.base puts them into the GrantContract."""

import math
from decimal import Decimal

from django.conf import settings

from quotas import manifests
from quotas.models import Grant


def _cpu(cores: Decimal) -> str:
    millis = int((cores * 1000).to_integral_value())
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _memory(mib: Decimal) -> str:
    whole = int(mib.to_integral_value())
    return f"{whole // 1024}Gi" if whole % 1024 == 0 else f"{whole}Mi"


def queue_contract(grant: Grant, *, holding: bool, node_selector: dict[str, str]) -> manifests.QueueContract:
    """The Kueue quantities of a queued grant. CPU and memory scale with its GPUs: the request's own
    figures when it named them (per GPU of the request), else the quota defaults per GPU
    (QUOTA_CPU_PER_GPU, QUOTA_MEMORY_GIB_PER_GPU), so borrowing N GPUs borrows their share of CPU and
    memory too, and lending likewise. An ended grant keeps nothing to borrow or lend and 0 GPUs."""
    cfg = settings.PORTAL_PROVISIONING
    req, pool = grant.request, grant.pool
    cpu_per_gpu = Decimal(req.cpu) / req.gpus if req.cpu else Decimal(cfg["QUOTA_CPU_PER_GPU"])
    mib_per_gpu = (
        Decimal(req.memory_gib * 1024) / req.gpus
        if req.memory_gib
        else Decimal(cfg["QUOTA_MEMORY_GIB_PER_GPU"] * 1024)
    )
    gpus = grant.gpus if holding else 0
    borrow = grant.borrow_gpus if holding else 0
    # The CPU and memory of the grant's GPUs stay nominal after it ended, as in its ResourceQuota:
    # CPU-only work may go on, GPU work may not.
    cpu = Decimal(req.cpu) if req.cpu else cpu_per_gpu * grant.gpus
    mib = Decimal(req.memory_gib * 1024) if req.memory_gib else mib_per_gpu * grant.gpus
    lending = pool.lending_percent
    lend_gpus = None if lending >= 100 else math.floor(gpus * lending / 100)
    share = Decimal(lending) / 100
    return manifests.QueueContract(
        cluster_queue=grant.namespace,
        cohort=manifests.kueue_pool_object_name(pool.name),
        flavor=manifests.kueue_pool_object_name(pool.name),
        flavor_labels=dict(node_selector),
        reclaim_policy=pool.reclaim_policy,
        gpus=gpus,
        cpu=_cpu(cpu),
        memory=_memory(mib),
        borrow_gpus=borrow,
        borrow_cpu=_cpu(cpu_per_gpu * borrow),
        borrow_memory=_memory(mib_per_gpu * borrow),
        lend_gpus=lend_gpus,
        lend_cpu=None if lending >= 100 else _cpu(cpu * share),
        lend_memory=None if lending >= 100 else _memory(mib * share),
        quota_gpus=gpus + borrow,
        quota_cpu=_cpu(cpu + cpu_per_gpu * borrow),
        quota_memory=_memory(mib + mib_per_gpu * borrow),
    )
