"""The utilisation dashboard: cluster and pool cards, a pool's GPU grid and history, cost per team.

Each page is one view; htmx polls the same view for the live region (selected by the HX-Target of
the request) every POLL_SECONDS, and the history region every HISTORY_POLL_SECONDS.

A polled region carries the version of its figures (selectors.*_version) as its ETag and sends it
back as If-None-Match (hx-headers); while it is unchanged the poll is answered 304 Not Modified, which
htmx leaves unswapped (base.html's responseHandling), at the cost of one query and no rendering.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.utils import timezone
from django.utils.cache import get_conditional_response, patch_cache_control, patch_vary_headers
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


def _etag(version: str | None) -> str | None:
    # Weak: the tag names the figures, not the bytes. Two renders of one version may differ in
    # bytes (the history's window slides by less than a column; a CSP nonce or markup change after
    # a deploy), and If-None-Match on a GET compares weakly anyway.
    return None if version is None else f'W/"{version}"'


def _poll_headers(etag: str | None) -> str:
    """The region's hx-headers: its next poll asks whether its version is still current."""
    return json.dumps({"If-None-Match": etag}) if etag else ""


def _revalidated(response: HttpResponse, etag: str | None) -> HttpResponse:
    if etag is None:
        return response
    response.headers["ETag"] = etag
    # A browser may keep the region but must ask every time; the URL also serves the whole page, so
    # a kept copy is one per HX-Target (and per user: the session middleware adds Vary: Cookie).
    patch_cache_control(response, private=True, no_cache=True)
    patch_vary_headers(response, ("HX-Request", "HX-Target"))
    return response


def _conditional(request: HttpRequest) -> bool:
    """The request names versions it has: worth reading the version alone before the figures. A
    request without one reads version and figures in one round trip (selectors.*_live_get)."""
    return "If-None-Match" in request.headers


def _not_modified(request: HttpRequest, etag: str | None) -> HttpResponse | None:
    """304 when the poll's If-None-Match still names the current version. Called after the
    permission checks: for what the user may not see there is no version to compare."""
    if etag is None:
        return None
    response = get_conditional_response(request, etag=etag)
    return None if response is None else _revalidated(response, etag)


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
    now = timezone.now()
    live_region = bool(request.htmx and request.htmx.target == "utilisation-live")
    if _conditional(request) and live_region:
        # A poll naming the version it shows: the version alone first, the figures only if it changed.
        etag = _etag(selectors.overview_version(user=request.user, now=now))
        if not_modified := _not_modified(request, etag):
            return not_modified
        live = selectors.overview_live_get(user=request.user, now=now, versioned=False)
    else:
        live = selectors.overview_live_get(user=request.user, now=now, versioned=True)
        etag = _etag(live.version)
    context = {
        "clusters": live.clusters,
        "team_rows": live.team_rows,
        "team_chart": _team_usage_chart(live.team_rows),
        "poll_seconds": POLL_SECONDS,
        "live_headers": _poll_headers(etag),
    }
    if live_region:
        return _revalidated(render(request, "utilisation/partials/overview_live.html", context), etag)
    return render(request, "utilisation/dashboard.html", context)


def _history_charts(pool_id: int, span: timedelta, end: datetime) -> list[charts.TimeChart]:
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
    now = timezone.now()
    target = request.htmx.target if request.htmx else None
    form = HistoryRangeForm(request.GET)
    history_range = form.cleaned_data["range"] if form.is_valid() else None
    # Versions before figures (see dashboard). None for a pool the user cannot see, which is then
    # answered below exactly as without versions.
    live_etag = history_etag = None
    detail: selectors.PoolDetail | None = None
    try:
        if target == "pool-live" and not _conditional(request):
            # Nothing to compare with: the version and the detail in one round trip.
            version, detail = selectors.pool_live_get(user=request.user, pool_id=pk, now=now)
            live_etag = _etag(version)
        elif target in (None, "pool-live"):
            live_etag = _etag(selectors.pool_live_version(user=request.user, pool_id=pk, now=now))
        if target in (None, "pool-history") and history_range is not None:
            span = HISTORY_RANGES[history_range]
            version = selectors.pool_history_version(
                user=request.user, pool_id=pk, span=span, now=now, step=span / charts.MAX_COLUMNS
            )
            history_etag = _etag(version)
        region_etag = {"pool-live": live_etag, "pool-history": history_etag}.get(target or "")
        if not_modified := _not_modified(request, region_etag):
            return not_modified
        if detail is None:
            detail = selectors.pool_detail_get(user=request.user, pool_id=pk, now=now)
    except NodePool.DoesNotExist:
        if request.htmx:
            return HttpResponseStopPolling()  # the pool went away: stop asking
        raise Http404("No such pool") from None
    if history_range is None:
        return HttpResponse(
            f"Unknown history range; choose one of {', '.join(HISTORY_RANGES)}.",
            status=400,
            content_type="text/plain",
        )
    context: dict[str, Any] = {
        "detail": detail,
        "pool": detail.view.pool,
        "live": detail.view.live,
        "grid": charts.node_grid(detail.nodes, total=detail.node_count),
        "poll_seconds": POLL_SECONDS,
        "history_poll_seconds": HISTORY_POLL_SECONDS,
        "history_range": history_range,
        "history_ranges": list(HISTORY_RANGES),
        "elastic": elastic.pool_elastic_get(
            pool=detail.view.pool, live=detail.view.live, inventory=detail.inventory, now=timezone.now()
        ),
        "live_headers": _poll_headers(live_etag),
        "history_headers": _poll_headers(history_etag),
    }
    if target == "pool-live":
        return _revalidated(render(request, "utilisation/partials/pool_live.html", context), live_etag)
    context["cohort"] = pool_cohort_get(user=request.user, pool=detail.view.pool)
    if target == "pool-cohort":
        return render(request, "utilisation/partials/pool_cohort.html", context)
    # Prometheus is asked only for its own region, which polls as slowly as the history.
    if target in (None, "pool-prometheus"):
        context["prom"] = selectors.pool_prometheus_get(detail=detail)
    if target == "pool-prometheus":
        return render(request, "utilisation/partials/pool_prometheus.html", context)
    context["history"] = _history_charts(pk, HISTORY_RANGES[history_range], now)
    if target == "pool-history":
        return _revalidated(render(request, "utilisation/partials/pool_history.html", context), history_etag)
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
