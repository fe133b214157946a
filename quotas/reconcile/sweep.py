"""The sweeper's choice of what to reconcile again: lagging generations and stale resyncs."""

from datetime import datetime, timedelta

from django.db.models import F, Q
from django.utils import timezone

from quotas.models import Grant, ServingDeployment
from quotas.reconcile.base import (
    provisioning_settings,
)

SWEEP_BATCH = 500


# --- the sweeper --------------------------------------------------------------------------------


def reconcile_due(*, now: datetime | None = None) -> tuple[list[int], list[int]]:
    """Grants and serving deployments to reconcile now: those whose observed generation lags (their
    task was lost, or failed past its retries) and those due for the periodic drift resync."""
    now = now or timezone.now()
    cfg = provisioning_settings()
    grace = now - timedelta(seconds=cfg["SWEEP_SECONDS"])
    stale = now - timedelta(seconds=cfg["RESYNC_SECONDS"])
    lagging = Q(observed_generation__lt=F("generation")) & (
        Q(reconciled_at__isnull=True) | Q(reconciled_at__lt=grace)
    )
    never = Q(reconciled_at__isnull=True)
    grants = (
        Grant.objects.filter(pool__cluster__enabled=True)
        .filter(lagging | ((Q(reconciled_at__lt=stale) | never) & Q(namespace_deleted_at__isnull=True)))
        .order_by(F("reconciled_at").asc(nulls_first=True))
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    loading = Q(
        deleted_at__isnull=True,
        ready_at__isnull=True,
        replicas__gt=0,
        created_at__gt=now - timedelta(seconds=cfg["MODEL_LOAD_BUDGET_SECONDS"]),
        reconciled_at__lt=grace,
    )
    deployments = (
        ServingDeployment.objects.filter(grant__pool__cluster__enabled=True)
        .filter(lagging | loading | ((Q(reconciled_at__lt=stale) | never) & Q(deleted_at__isnull=True)))
        .order_by(F("reconciled_at").asc(nulls_first=True))
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    return list(grants), list(deployments)
