"""Celery tasks: thin wrappers that take an id and call a service."""

from celery import Task, shared_task
from django.core.exceptions import ValidationError

from pools import headroom, services
from pools.kube.errors import TemporaryKubeError
from pools.models import Cluster

# Worth another try: the cluster may answer again. Everything else needs a person.
TEMPORARY_CODES = frozenset({"unreachable", "unavailable"})


@shared_task(bind=True, max_retries=5, default_retry_delay=30)
def cluster_sync_inventory(self, cluster_id: int) -> None:  # noqa: ANN001
    cluster = Cluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is None:
        return
    try:
        services.cluster_sync_inventory(cluster=cluster, actor=None)
    except ValidationError as exc:
        # The failure is already recorded on the cluster (last_error) for the admin pages.
        codes = {error.code for errors in exc.error_dict.values() for error in errors}
        if codes & TEMPORARY_CODES:
            raise self.retry(exc=exc, countdown=30 * 2**self.request.retries) from None


@shared_task(
    bind=True,
    autoretry_for=(TemporaryKubeError,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def cluster_policies_apply(self: Task, cluster_id: int) -> list[str]:
    cluster = Cluster.objects.filter(pk=cluster_id, enabled=True).first()
    return services.cluster_policies_apply(cluster=cluster) if cluster else []


@shared_task
def clusters_sync_inventory() -> list[int]:
    """Periodic resync: queue one sync per enabled cluster."""
    ids = list(Cluster.objects.filter(enabled=True).values_list("pk", flat=True))
    for cluster_id in ids:
        cluster_sync_inventory.delay(cluster_id)
    return ids


@shared_task(
    bind=True,
    autoretry_for=(TemporaryKubeError,),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=12,
)
def warm_headroom_reconcile(self: Task, pool_id: int) -> None:
    requeue_after = headroom.warm_headroom_reconcile(pool_id=pool_id)
    if requeue_after is not None:
        self.apply_async((pool_id,), countdown=requeue_after)


@shared_task
def warm_headroom_sweep() -> list[int]:
    """Periodic: re-apply every pool's placeholders (drift healed, a pool that stopped keeping
    headroom cleaned up)."""
    ids = headroom.warm_headroom_due()
    for pool_id in ids:
        warm_headroom_reconcile.delay(pool_id)
    return ids
