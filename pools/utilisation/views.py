"""The utilisation dashboard: cluster and pool cards, a pool's GPU grid and history, cost per team.

Each page is one view; htmx polls the same view for the live region (selected by the HX-Target of
the request) every POLL_SECONDS, and the history region every HISTORY_POLL_SECONDS.
"""

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from pools.models import NodePool
from pools.utilisation import charts, elastic, selectors
from pools.utilisation.forms import HISTORY_RANGES, CostPeriodForm, HistoryRangeForm
from pools.utilisation.queue_selectors import pool_cohort_get, pool_queue_history

POLL_SECONDS = 2
HISTORY_POLL_SECONDS = 15

View = Callable[..., HttpResponse]


def login_required_polling(view: View) -> View:
    """login_required that also suits polled partials: a poll from a page whose session ended
    sends the whole page to the login form instead of swapping the form into a card."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if request.htmx:
            page = request.htmx.current_url_abs_path or request.path
            return HttpResponseClientRedirect(f"{resolve_url(settings.LOGIN_URL)}?next={page}")
        return redirect_to_login(request.get_full_path())

    return wrapper


def _team_usage_chart(rows: list[selectors.TeamUsageRow]) -> charts.BarChart:
    return charts.bar_chart(
        [
            (f"{r.team or '(no grant)'} · {r.pool}", r.used, r.granted if r.team else None, "used")
            for r in rows
        ]
    )


@require_GET
@login_required_polling
def dashboard(request: HttpRequest) -> HttpResponse:
    clusters = selectors.utilisation_overview(user=request.user, now=timezone.now())
    team_rows = selectors.team_usage_list(user=request.user)
    context = {
        "clusters": clusters,
        "team_rows": team_rows,
        "team_chart": _team_usage_chart(team_rows),
        "poll_seconds": POLL_SECONDS,
    }
    if request.htmx and request.htmx.target == "utilisation-live":
        return render(request, "utilisation/partials/overview_live.html", context)
    return render(request, "utilisation/dashboard.html", context)


def _history_charts(pool_id: int, span: timedelta) -> list[charts.TimeChart]:
    end = timezone.now()
    start = end - span
    rows = selectors.pool_history(pool_id=pool_id, start=start, end=end)
    samples = [
        charts.Sample(
            at=row.at,
            seconds=row.seconds,
            values={
                "allocatable": row.gpus_allocatable,
                "requested": row.gpus_requested,
                "free": row.gpus_free,
                "stranded": row.gpus_stranded,
                "pending": row.pods_pending,
                "wait": row.queue_wait_max_seconds / 60,
            },
        )
        for row in rows
    ]
    gpus = charts.time_chart(
        samples,
        [
            ("requested", "Requested", "requested", "area"),
            ("allocatable", "Allocatable", "allocatable", "line"),
            ("free", "Free", "free", "line"),
            ("stranded", "Stranded", "stranded", "line"),
        ],
        start=start,
        end=end,
        title="GPUs over time",
    )
    queue = charts.time_chart(
        samples,
        [
            ("pending", "Pending GPU pods", "pending", "area"),
            ("wait", "Longest queue wait (min)", "wait", "line"),
        ],
        start=start,
        end=end,
        title="Queue: pending pods and longest wait",
        height=140,
    )
    return [gpus, queue, *_queue_history_charts(pool_id, start, end)]


def _queue_history_charts(pool_id: int, start: datetime, end: datetime) -> list[charts.TimeChart]:
    """The pool's Kueue queues over time (docs/queueing.md), when it has any history of them."""
    points = pool_queue_history(pool_id=pool_id, start=start, end=end)
    if not points:
        return []
    samples = [
        charts.Sample(
            at=p["at"],
            seconds=p["seconds"],
            values={
                "pending": p["pending"],
                "borrowed": p["borrowed"],
                "wait": (p["admission_wait"] / p["admissions"] / 60) if p["admissions"] else 0.0,
            },
        )
        for p in points
    ]
    return [
        charts.time_chart(
            samples,
            [
                ("pending", "Pending Jobs (Kueue)", "pending", "area"),
                ("borrowed", "GPUs borrowed in the cohort", "requested", "line"),
                ("wait", "Mean admission wait (min)", "wait", "line"),
            ],
            start=start,
            end=end,
            title="Queues: pending Jobs, borrowed GPUs, admission wait",
            height=140,
        )
    ]


@require_GET
@login_required_polling
def pool_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        detail = selectors.pool_detail_get(user=request.user, pool_id=pk, now=timezone.now())
    except NodePool.DoesNotExist:
        if request.htmx:
            return HttpResponseStopPolling()  # the pool went away: stop asking
        raise Http404("No such pool") from None
    form = HistoryRangeForm(request.GET)
    if not form.is_valid():
        return HttpResponse(
            f"Unknown history range; choose one of {', '.join(HISTORY_RANGES)}.",
            status=400,
            content_type="text/plain",
        )
    history_range = form.cleaned_data["range"]
    context: dict[str, Any] = {
        "detail": detail,
        "pool": detail.view.pool,
        "live": detail.view.live,
        "grid": charts.node_grid(detail.nodes),
        "poll_seconds": POLL_SECONDS,
        "history_poll_seconds": HISTORY_POLL_SECONDS,
        "history_range": history_range,
        "history_ranges": list(HISTORY_RANGES),
        "elastic": elastic.pool_elastic_get(pool=detail.view.pool, live=detail.view.live, now=timezone.now()),
    }
    target = request.htmx.target if request.htmx else None
    if target == "pool-live":
        return render(request, "utilisation/partials/pool_live.html", context)
    context["cohort"] = pool_cohort_get(user=request.user, pool=detail.view.pool)
    if target == "pool-cohort":
        return render(request, "utilisation/partials/pool_cohort.html", context)
    # Prometheus is asked only for its own region, which polls as slowly as the history.
    if target in (None, "pool-prometheus"):
        context["prom"] = selectors.pool_prometheus_get(detail=detail)
    if target == "pool-prometheus":
        return render(request, "utilisation/partials/pool_prometheus.html", context)
    context["history"] = _history_charts(pk, HISTORY_RANGES[history_range])
    if target == "pool-history":
        return render(request, "utilisation/partials/pool_history.html", context)
    return render(request, "utilisation/pool_detail.html", context)


@require_GET
@login_required_polling
def cost(request: HttpRequest) -> HttpResponse:
    today = timezone.now().date()
    form = CostPeriodForm(request.GET or {"start": today - timedelta(days=6), "end": today})
    context: dict[str, Any] = {"form": form}
    status = 200
    if form.is_valid():
        start = datetime.combine(form.cleaned_data["start"], time.min, tzinfo=UTC)
        end = datetime.combine(form.cleaned_data["end"] + timedelta(days=1), time.min, tzinfo=UTC)
        teams = selectors.team_cost_list(user=request.user, start=start, end=end)
        context |= {
            "teams": teams,
            "cost_chart": charts.bar_chart(
                [(t.team or "(no grant)", float(t.cost), None, "cost") for t in teams],
                format_value=lambda v: f"{v:,.2f}",
            ),
        }
    else:
        status = 400
    deployments = selectors.serving_load_times(user=request.user)
    context |= {
        "serving_cost": selectors.serving_cost_list(user=request.user),
        "deployments": deployments,
        "load_chart": charts.bar_chart(
            [(f"{d.grant.namespace}/{d.name}", d.load_seconds or 0, None, "load") for d in deployments],
            format_value=lambda v: f"{v:.0f}s",
        ),
    }
    return render(request, "utilisation/cost.html", context, status=status)
