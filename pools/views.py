"""Admin pages for clusters and pools: admins act, auditors read, everybody else gets a 404.

Every action calls a pools.services function; cluster I/O errors come back as the specific
messages those functions raise (unreachable, unauthorised, missing permissions, no GPU nodes).
"""

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pools import selectors as pool_selectors
from pools import services
from pools.forms import ClusterRegisterForm
from pools.kube import client
from pools.models import Cluster, NodePool
from portal.models import User
from portal.ui import (
    error_text,
    focus_first_error,
    form_add_service_error,
    login_required,
    refusal,
    writer_required,
)
from quotas import selectors


def _require_sees_everything(user: User) -> None:
    # Team members learn free capacity from the request wizard; the inventory itself is not theirs.
    if not user.sees_everything:
        raise Http404("No such page")


def _admin_refusal(request: HttpRequest) -> HttpResponse | None:
    _require_sees_everything(request.user)
    if not request.user.is_admin:
        return refusal(request, "Only platform admins manage clusters.")
    return None


def _visible_cluster(user: User, pk: int) -> Cluster:
    _require_sees_everything(user)
    return get_object_or_404(pool_selectors.cluster_list(user=user), pk=pk)


def _pool_rows(pools: list[NodePool]) -> list[dict]:
    figures = selectors.pool_capacity_bulk(pairs=[(pool, None) for pool in pools])
    return [{"pool": pool, "figures": figures[(pool.pk, None)]} for pool in pools]


def _cluster_pools(user: User, cluster: Cluster) -> list[dict]:
    return _pool_rows(list(pool_selectors.node_pool_list(user=user).filter(cluster=cluster)))


@login_required
def pool_list(request: HttpRequest) -> HttpResponse:
    _require_sees_everything(request.user)
    pools = list(pool_selectors.node_pool_list(user=request.user))
    return render(request, "pools/pool_list.html", {"rows": _pool_rows(pools)})


@login_required
def cluster_list(request: HttpRequest) -> HttpResponse:
    _require_sees_everything(request.user)
    clusters = pool_selectors.cluster_list(user=request.user).annotate(pool_count=Count("pools"))
    return render(request, "pools/cluster_list.html", {"clusters": clusters})


@login_required
def cluster_detail(request: HttpRequest, pk: int) -> HttpResponse:
    cluster = _visible_cluster(request.user, pk)
    context = {"cluster": cluster, "rows": _cluster_pools(request.user, cluster)}
    return render(request, "pools/cluster_detail.html", context)


@writer_required
def cluster_register(request: HttpRequest) -> HttpResponse:
    if refused := _admin_refusal(request):
        return refused
    form = ClusterRegisterForm(request.POST or None, request.FILES or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                cluster = services.cluster_register(actor=request.user, **form.service_arguments())
            except (ValidationError, PermissionDenied) as exc:
                form_add_service_error(form, exc)
            else:
                messages.success(
                    request,
                    f"Cluster {cluster.name} registered ({cluster.server_version}). "
                    "Sync its inventory to discover the GPU node pools.",
                )
                return redirect("pools:cluster_detail", pk=cluster.pk)
        focus_first_error(form)
    context = {"form": form, "in_cluster_refusal": client.in_cluster_refusal()}
    return render(request, "pools/cluster_register.html", context, status=422 if form.errors else 200)


@writer_required
@require_POST
def cluster_test(request: HttpRequest, pk: int) -> HttpResponse:
    if refused := _admin_refusal(request):
        return refused
    cluster = _visible_cluster(request.user, pk)
    try:
        check = services.cluster_check_connection(cluster=cluster)
    except ValidationError as exc:
        outcome, ok = error_text(exc), False
    else:
        kueue = (
            f" It serves Kueue ({check.kueue_version}): batch and experimentation grants queue."
            if check.kueue_version
            else ""
        )
        outcome, ok = (
            f"Connected to {cluster.name}: Kubernetes {check.server_version}, {check.gpu_nodes} GPU "
            f"nodes, and the portal holds every permission it needs.{kueue}",
            True,
        )
    return _action_result(request, cluster, outcome, ok=ok)


@writer_required
@require_POST
def cluster_sync(request: HttpRequest, pk: int) -> HttpResponse:
    if refused := _admin_refusal(request):
        return refused
    cluster = _visible_cluster(request.user, pk)
    try:
        summary = services.cluster_sync_inventory(cluster=cluster, actor=request.user)
    except (ValidationError, PermissionDenied) as exc:
        return _action_result(request, cluster, error_text(exc), ok=False)
    counts = ", ".join(
        f"{len(names)} {label}"
        for label, names in [
            ("created", summary.created),
            ("updated", summary.updated),
            ("unchanged", summary.unchanged),
            ("disabled", summary.disabled),
        ]
    )
    return _action_result(
        request, cluster, f"Inventory synced: pools {counts}.", ok=True, notes=summary.notes
    )


def _action_result(
    request: HttpRequest, cluster: Cluster, outcome: str, *, ok: bool, notes: list[str] | None = None
) -> HttpResponse:
    if not request.htmx:
        (messages.success if ok else messages.error)(request, " ".join([outcome, *(notes or [])]))
        return redirect("pools:cluster_detail", pk=cluster.pk)
    cluster.refresh_from_db()
    context = {
        "cluster": cluster,
        "outcome": outcome,
        "ok": ok,
        "notes": notes or [],
        # Out-of-band: the pool table and the connection facts change with a sync.
        "rows": _cluster_pools(request.user, cluster),
    }
    return render(request, "pools/partials/action_result.html", context)


@login_required
def cluster_conformance(request: HttpRequest, pk: int) -> HttpResponse:
    cluster = _visible_cluster(request.user, pk)
    report = pool_selectors.cluster_conformance_report(user=request.user, cluster=cluster)
    template = "pools/partials/conformance.html" if request.htmx else "pools/conformance.html"
    return render(request, template, {"cluster": cluster, "report": report})
