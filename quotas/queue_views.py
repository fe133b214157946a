"""The queue of a grant that queues through Kueue, on its grant page and the team page: admitted
and pending Jobs with their place in the queue, the estimated start and the GPUs borrowed and lent,
from what the collector's queue watch wrote (never from Kueue during a web request)."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_htmx.http import HTMX_STOP_POLLING

from pools.models import QueueStatus
from portal.models import User
from portal.ui import login_required
from quotas import selectors
from quotas.manifests import LOCAL_QUEUE_NAME
from quotas.models import Grant
from quotas.states import HOLDING_STATES

# Stated on the page next to the figures it explains (pools.utilisation.queues computes them).
RATE_WINDOW_MINUTES = 30


@dataclass(frozen=True)
class WorkloadView:
    name: str
    job: str
    state: str
    gpus: int
    position: int | None
    waited: timedelta | None
    eta: datetime | None
    admitted_at: datetime | None
    message: str

    @property
    def eta_in(self) -> timedelta | None:
        return None if self.eta is None else self.eta - timezone.now()


def _when(value: str | None) -> datetime | None:
    return parse_datetime(value) if value else None


def workload_views(queue: QueueStatus, now: datetime) -> list[WorkloadView]:
    """The queue's Workloads with their waits measured now (the page may be newer than the row)."""
    views = []
    for row in queue.detail.get("workloads", []):
        queued_at, admitted_at = _when(row.get("queued_at")), _when(row.get("admitted_at"))
        end = admitted_at or now
        views.append(
            WorkloadView(
                name=row.get("name", ""),
                job=row.get("job", ""),
                state=row.get("state", ""),
                gpus=row.get("gpus", 0),
                position=row.get("position"),
                waited=max(end - queued_at, timedelta(0)) if queued_at else None,
                eta=_when(row.get("eta")),
                admitted_at=admitted_at,
                message=row.get("message", ""),
            )
        )
    return views


def queue_context(user: User, grant: Grant | None) -> dict[str, Any]:
    """What the grant page's queue section needs; empty for grants that do not queue."""
    if grant is None or not grant.queued:
        return {}
    now = timezone.now()
    queue = selectors.grant_queue_get(user=user, grant=grant)
    return {
        "queue": queue,
        "queue_workloads": workload_views(queue, now) if queue is not None else [],
        "kueue": selectors.kueue_health(cluster_id=grant.pool.cluster_id, now=now),
        "local_queue": LOCAL_QUEUE_NAME,
        "default_request": settings.PORTAL_PROVISIONING["DEFAULT_REQUEST"],
        "rate_window_minutes": RATE_WINDOW_MINUTES,
    }


@login_required
def grant_queue(request: HttpRequest, pk: int) -> HttpResponse:
    """The queue section alone, polled by the grant page. Stops polling (286) once the grant has
    ended and nothing of it is queued or running any more."""
    grant = get_object_or_404(
        selectors.grant_list(user=request.user).select_related("pool"), pk=pk, admission="kueue"
    )
    context = {"grant": grant, **queue_context(request.user, grant)}
    queue = context["queue"]
    settled = grant.request.state not in HOLDING_STATES and (
        queue is None or not (queue.pending_workloads or queue.admitted_workloads)
    )
    return render(
        request, "quotas/partials/grant_queue.html", context, status=HTMX_STOP_POLLING if settled else 200
    )
