"""Celery tasks: thin wrappers that take an id and call a service."""

from celery import shared_task

from quotas import services


@shared_task
def grants_expire_due() -> list[int]:
    return services.grants_expire_due()


@shared_task
def grant_reconcile(grant_id: int) -> None:
    from quotas import reconcile

    reconcile.grant_reconcile(grant_id=grant_id)
