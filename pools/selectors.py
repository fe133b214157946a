"""Reads about accelerators, clusters and pools."""

from django.db.models import Q, QuerySet

from pools.models import Accelerator, NodePool, PoolClass


def pools_offering(*, pool_class: str, accelerator: Accelerator | None = None) -> QuerySet[NodePool]:
    """Enabled pools that accept work of `pool_class` (batch may borrow pools with a batch fraction)."""
    qs = NodePool.objects.filter(enabled=True, cluster__enabled=True).select_related("cluster", "accelerator")
    if pool_class == PoolClass.BATCH:
        qs = qs.filter(Q(pool_class=pool_class) | Q(batch_fraction__gt=0))
    else:
        qs = qs.filter(pool_class=pool_class)
    if accelerator is not None:
        qs = qs.filter(accelerator=accelerator)
    return qs
