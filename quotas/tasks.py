"""Celery tasks: thin wrappers that take an id and call a service.

Reliability comes from the settings (acks_late, reject on worker loss, prefetch 1, a visibility
timeout above the hard time limit) and from the reconcilers being idempotent: any task may run twice
or be lost, because the provisioning sweeper re-queues whatever lags.
"""

from celery import Task, shared_task
from django.conf import settings

from pools.kube.errors import TemporaryKubeError
from quotas import reconcile, services

# An unreachable or overloaded cluster is retried with exponential backoff and full jitter, up to a
# maximum; after that the sweeper takes over at its slower pace.
RETRY_POLICY = {
    "autoretry_for": (TemporaryKubeError,),
    "retry_backoff": 2,
    "retry_backoff_max": settings.PORTAL_PROVISIONING["RETRY_BACKOFF_MAX_SECONDS"],
    "retry_jitter": True,
    "max_retries": settings.PORTAL_PROVISIONING["MAX_RETRIES"],
}


@shared_task
def grants_expire_due() -> list[int]:
    return services.grants_expire_due()


@shared_task(bind=True, **RETRY_POLICY)
def grant_reconcile(self: Task, grant_id: int) -> None:
    requeue_after = reconcile.grant_reconcile(grant_id=grant_id)
    if requeue_after is not None:
        self.apply_async((grant_id,), countdown=requeue_after)


@shared_task
def grants_provision(grant_ids: list[int]) -> dict[str, int]:
    """What approvals queue: the grants, with the others of their cluster that wait for their first
    apply, in one pass (reconcile.grants_provision)."""
    return _follow_up(reconcile.grants_provision(grant_ids=grant_ids), grant_ids)


@shared_task
def grants_reconcile(grant_ids: list[int]) -> dict[str, int]:
    """Grants of a pass polled again together (their quota or policy not yet reported)."""
    return _follow_up(reconcile.grants_reconcile(grant_ids=grant_ids), grant_ids)


def _follow_up(outcome: reconcile.BulkOutcome, grant_ids: list[int]) -> dict[str, int]:
    # What cannot go in a pass goes one by one (grant_reconcile, which retries cluster errors with
    # backoff); what a pass must poll again goes together, a batch per cluster.
    for again in outcome.again:
        grants_reconcile.apply_async((again,), countdown=outcome.requeue_after)
    for grant_id in outcome.single:
        grant_reconcile.delay(grant_id)
    return {
        "grants": len(grant_ids),
        "again": sum(len(again) for again in outcome.again),
        "single": len(outcome.single),
    }


@shared_task(bind=True, **RETRY_POLICY)
def serving_deployment_reconcile(self: Task, deployment_id: int) -> None:
    requeue_after = reconcile.serving_deployment_reconcile(deployment_id=deployment_id)
    if requeue_after is not None:
        self.apply_async((deployment_id,), countdown=requeue_after)


@shared_task
def provisioning_sweep() -> dict[str, int]:
    """Periodic: queue every grant and serving deployment that lags or is due for its drift resync."""
    grant_ids, deployment_ids = reconcile.reconcile_due()
    for grant_id in grant_ids:
        grant_reconcile.delay(grant_id)
    for deployment_id in deployment_ids:
        serving_deployment_reconcile.delay(deployment_id)
    return {"grants": len(grant_ids), "deployments": len(deployment_ids)}
