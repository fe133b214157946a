"""Celery tasks of the portal itself: thin wrappers around services."""

from celery import shared_task

from portal import services as portal_services
from portal.api import services


@shared_task
def idempotency_records_purge() -> int:
    return services.idempotency_records_purge()


@shared_task
def sessions_purge() -> int:
    return portal_services.sessions_purge()
