"""Periodic work of the utilisation read side (Celery beat, portal/settings/base.py)."""

from celery import shared_task
from django.utils import timezone

from pools.utilisation import queue_services, services


@shared_task
def utilisation_history_compact() -> dict[str, int]:
    """Roll utilisation samples up into 5-minute and hourly averages and apply retention (beat)."""
    return services.utilisation_history_compact(now=timezone.now())


@shared_task
def queue_history_compact() -> dict[str, int]:
    """The same for the Kueue queue history, and drop admissions past their retention (beat)."""
    return queue_services.queue_history_compact(now=timezone.now())
