"""Browser pages for teams, requests, approvals and grants.

Thin: reads go through quotas.selectors (scoped to the user), writes through quotas.services, and
their errors come back as inline messages. htmx partials are rendered by the same views, picked by
the element the request targets.
"""

from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING, HttpResponseClientRedirect

from pools.models import AdmissionMode, NodePool, PoolClass
from portal.models import User
from portal.ui import (
    error_text,
    focus_first_error,
    form_add_service_error,
    login_required,
    refusal,
    writer_required,
)
from quotas import policies, rules, selectors, services
from quotas.access import grant_access_get
from quotas.forms import (
    BulkDecisionForm,
    CapacityRequestForm,
    DecisionForm,
    ReasonForm,
    ServingDeploymentForm,
)
from quotas.models import CapacityRequest, Grant, ServingDeployment
from quotas.queue_views import queue_context
from quotas.rules import PoolCapacity
from quotas.states import HOLDING_STATES, PENDING_STATES, RequestState

PAGE_SIZE = 50
HOME_ROWS = 10
TEAM_PAGE_ROWS = 50
# While a request is in one of these states something is about to change by itself (a decision, the
# reconciler), so its page polls; in any other state it stays put and the poll stops itself.
IN_FLIGHT_STATES = PENDING_STATES | {RequestState.APPROVED, RequestState.PROVISIONING}
DEPLOYABLE_STATES = {RequestState.APPROVED, RequestState.PROVISIONING, RequestState.ACTIVE}


@dataclass(frozen=True)
class Impact:
    """What approving a request does to its pool, in the numbers approvers reason with."""

    pool: NodePool
    figures: PoolCapacity
    gpus: int
    refusal: str | None
    # Pools that queue through Kueue: what the request may borrow, and its cohort as the collector
    # last saw it (queues, nominal, used, borrowed GPUs, pending Workloads), for approvers.
    queued: bool = False
    borrow: int = 0
    cohort: dict[str, int] | None = None

    @property
    def granted_after(self) -> int:
        return self.figures.granted + self.gpus


def _impact(
    req: CapacityRequest,
    figures: dict[tuple[int, int | None], PoolCapacity],
    cohorts: dict[int, dict[str, int]],
) -> Impact | None:
    if req.pool is None:
        return None
    pool_figures = figures[(req.pool.pk, req.team_id)]
    is_batch = req.pool_class == PoolClass.BATCH
    queued = req.pool.admission_mode == AdmissionMode.KUEUE
    return Impact(
        pool=req.pool,
        figures=pool_figures,
        gpus=req.gpus,
        refusal=rules.capacity_refusal(
            pool_figures, gpus=req.gpus, pool_name=str(req.pool), is_batch=is_batch
        )
        or rules.borrow_refusal(
            pool_figures,
            gpus=req.gpus,
            borrow=req.borrow_gpus,
            pool_name=str(req.pool),
            is_batch=is_batch,
            queued=queued,
            max_borrow=req.pool.max_borrow_gpus,
        ),
        queued=queued,
        borrow=req.borrow_gpus,
        cohort=cohorts.get(req.pool.pk, {}) if queued else None,
    )


def _impacts(requests: list[CapacityRequest]) -> list[Impact | None]:
    figures = selectors.pool_capacity_bulk(pairs=[(r.pool, r.team_id) for r in requests if r.pool])
    cohorts = selectors.pool_cohorts_bulk(pools={r.pool for r in requests if r.pool})
    return [_impact(r, figures, cohorts) for r in requests]


def _visible_request(user: User, pk: int) -> CapacityRequest:
    try:
        return selectors.capacity_request_get(user=user, pk=pk)
    except CapacityRequest.DoesNotExist:
        raise Http404("No such request") from None


# --- lists ------------------------------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The signed-in user's start page: their requests in flight, their inbox, their teams' grants."""
    user = request.user
    requests = selectors.capacity_request_list(user=user)
    return render(
        request,
        "portal/home.html",
        {
            "in_flight": requests.filter(state__in=PENDING_STATES)[:HOME_ROWS],
            "inbox": selectors.approval_inbox(user=user)[:HOME_ROWS],
            "grants": selectors.grant_usage_list(user=user).filter(request__state__in=HOLDING_STATES)[
                :HOME_ROWS
            ],
        },
    )


@login_required
def request_list(request: HttpRequest) -> HttpResponse:
    requests = selectors.capacity_request_list(user=request.user)
    state = request.GET.get("state", "")
    if state in RequestState.values:
        requests = requests.filter(state=state)
    page = Paginator(requests, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "quotas/request_list.html",
        {"page": page, "state": state, "states": RequestState.choices},
    )


@login_required
def team(request: HttpRequest, slug: str | None = None) -> HttpResponse:
    user = request.user
    teams = selectors.teams_visible_to(user=user)
    if slug is None:
        first = teams.first()
        if first is None:
            return render(request, "quotas/team.html", {"team": None, "teams": []})
        return redirect("quotas:team_detail", slug=first.slug)
    team = get_object_or_404(teams, slug=slug)
    grants = list(selectors.grant_usage_list(user=user).filter(team=team)[:TEAM_PAGE_ROWS])
    measured = selectors.grant_measured_usage(grants=grants)
    queues = selectors.grant_queues_bulk(user=user, grants=grants)
    return render(
        request,
        "quotas/team.html",
        {
            "team": team,
            "teams": list(teams),
            "members": team.memberships.select_related("user").order_by("role", "user__username"),
            "requests": selectors.capacity_request_list(user=user).filter(team=team)[:TEAM_PAGE_ROWS],
            "grants": [{"grant": grant, "measured": measured.get(grant.pk)} for grant in grants],
            "deployments": selectors.serving_deployment_list(user=user).filter(
                team=team, deleted_at__isnull=True
            )[:TEAM_PAGE_ROWS],
            "row_limit": TEAM_PAGE_ROWS,
            "queues": [(grant, queues[grant.pk]) for grant in grants if grant.pk in queues],
        },
    )


def _inbox_context(user: User) -> dict:
    requests = list(selectors.approval_inbox(user=user)[:PAGE_SIZE])
    items = [
        {"req": req, "impact": impact, "form": DecisionForm()}
        for req, impact in zip(requests, _impacts(requests), strict=True)
    ]
    return {"items": items, "limit": PAGE_SIZE, "bulk_form": BulkDecisionForm()}


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    return render(request, "quotas/inbox.html", _inbox_context(request.user))


def _selected(request: HttpRequest) -> list[int]:
    values = request.POST.getlist("requests") if request.method == "POST" else request.GET.getlist("requests")
    ids = []
    for value in values:
        if value.isdigit() and len(value) <= 18 and int(value) not in ids:
            ids.append(int(value))
    return ids


def _refusal_text(result: services.DecisionResult) -> str:
    if isinstance(result.error, PermissionDenied | ValidationError):
        return error_text(result.error)
    return "No such request in your inbox." if result.error is not None else ""


@login_required
def inbox_preview(request: HttpRequest) -> HttpResponse:
    """The capacity impact, per pool, of approving the requests selected in the inbox."""
    ids = _selected(request)[: services.decisions.MAX_BATCH]
    impacts = selectors.approval_batch_impact(user=request.user, request_ids=ids)
    return render(request, "quotas/partials/inbox_impact.html", {"impacts": impacts, "selected": len(ids)})


@writer_required
@require_POST
def inbox_decide(request: HttpRequest) -> HttpResponse:
    """Approve or reject every selected request with one comment (quotas.services.decisions)."""
    user = request.user
    form = BulkDecisionForm(request.POST)
    ids = _selected(request)
    results: list[services.DecisionResult] = []
    error = ""
    if not form.is_valid():
        error = "Choose Approve or Reject."
    elif not ids:
        error = "Select the requests to decide first."
    else:
        visible = set(
            selectors.capacity_request_list(user=user).filter(pk__in=ids).values_list("pk", flat=True)
        )
        try:
            results = services.capacity_requests_decide(
                actor=user,
                request_ids=[pk for pk in ids if pk in visible],
                decision=form.cleaned_data["decision"],
                comment=form.cleaned_data["comment"],
            )
        except ValidationError as exc:
            error = error_text(exc)
    outcomes = [{"id": r.request_id, "outcome": r.outcome, "error": _refusal_text(r)} for r in results]
    if not request.htmx:
        if error:
            return refusal(request, error, status=422)
        done = sum(1 for r in results if r.ok)
        messages.success(request, f"{done} of {len(results)} requests decided.")
        for item in outcomes:
            if item["error"]:
                messages.error(request, f"#{item['id']}: {item['error']}")
        return redirect("quotas:inbox")
    context = {**_inbox_context(user), "outcomes": outcomes, "bulk_error": error}
    if error:
        context["bulk_form"] = form
    return render(request, "quotas/partials/inbox_list.html", context, status=422 if error else 200)


# --- the request wizard -------------------------------------------------------------------------


@writer_required
def request_create(request: HttpRequest) -> HttpResponse:
    user = request.user
    if request.method == "POST":
        form = CapacityRequestForm(request.POST, user=user)
        if form.is_valid():
            try:
                req = services.capacity_request_create(requester=user, **form.service_arguments())
            except (ValidationError, PermissionDenied) as exc:
                form_add_service_error(form, exc)
            else:
                messages.success(request, f"Request #{req.pk} submitted: {req.get_state_display().lower()}.")
                url = reverse("quotas:request_detail", args=[req.pk])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
        focus_first_error(form)
        template = "quotas/partials/request_form.html" if request.htmx else "quotas/request_create.html"
        return render(request, template, {"form": form, "estimate": form.estimate()}, status=422)

    if request.htmx:
        # The wizard's live parts: the accelerators offered for the chosen class, and the summary.
        # Unbound, so half-filled fields show no errors while the user is still typing.
        form = CapacityRequestForm(initial=request.GET.dict(), user=user)
        template = (
            "quotas/partials/accelerator_field.html"
            if request.htmx.target == "accelerator-field"
            else "quotas/partials/request_summary.html"
        )
        return render(request, template, {"form": form, "estimate": form.estimate()})

    form = CapacityRequestForm(initial=CapacityRequestForm.initial_values(), user=user)
    if not form.fields["team"].queryset.exists():
        return refusal(request, "You are not a member of any team yet; ask a team lead to add you.")
    return render(request, "quotas/request_create.html", {"form": form, "estimate": form.estimate()})


# --- one request, its grant and its live status -------------------------------------------------


def _live_context(user: User, req: CapacityRequest) -> dict:
    grant = selectors.grant_list(user=user).filter(request_id=req.pk).first()
    deployments = (
        list(selectors.serving_deployment_list(user=user).filter(grant=grant)) if grant is not None else []
    )
    # Level-based reconcile: whatever has a desired generation the cluster has not caught up with yet
    # is still moving, and so is a model server whose replicas are still coming up.
    lagging = [obj for obj in [grant, *deployments] if obj and obj.observed_generation < obj.generation]
    lagging += [d for d in deployments if d.deleted_at is None and d.ready_replicas != d.replicas]
    return {
        "req": req,
        "grant": grant,
        "decisions": req.decisions.select_related("approver"),
        "timeline": selectors.capacity_request_timeline(user=user, capacity_request=req),
        "deployments": deployments,
        "in_flight": req.state in IN_FLIGHT_STATES or bool(lagging),
        "can_deploy": grant is not None
        and req.state in DEPLOYABLE_STATES
        and policies.can_operate_serving(user=user, team_id=req.team_id),
        "can_cancel": req.state in PENDING_STATES | {RequestState.DRAFT}
        and policies.can_cancel(user=user, capacity_request=req),
        **queue_context(user, grant),
    }


def _decision_context(user: User, req: CapacityRequest) -> dict:
    can_decide = policies.can_decide(user=user, capacity_request=req)
    return {
        "req": req,
        "can_decide": can_decide,
        "impact": _impacts([req])[0] if can_decide else None,
        "form": DecisionForm(),
    }


def _workloads_context(user: User, req: CapacityRequest, grant: Grant) -> dict:
    workloads = selectors.grant_workloads_get(user=user, grant=grant, now=timezone.now())
    # Pods may outlive the grant (nothing replaces them, but they run until they end): the region
    # keeps following the namespace while it holds capacity or still runs something.
    polling = grant.namespace_deleted_at is None and (
        req.state in HOLDING_STATES or bool(workloads.workloads)
    )
    return {"req": req, "grant": grant, "workloads": workloads, "workloads_polling": polling}


@login_required
def request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    user = request.user
    req = _visible_request(user, pk)
    if request.htmx and request.htmx.target == "grant-workloads":
        grant = selectors.grant_of_request(user=user, capacity_request=req)
        if grant is None:
            return HttpResponse(status=HTMX_STOP_POLLING)
        context = _workloads_context(user, req, grant)
        status = 200 if context["workloads_polling"] else HTMX_STOP_POLLING
        return render(request, "quotas/partials/grant_workloads.html", context, status=status)
    live = _live_context(user, req)
    if request.htmx and request.htmx.target == "request-live":
        status = 200 if live["in_flight"] else HTMX_STOP_POLLING
        return render(request, "quotas/partials/request_live.html", live, status=status)
    context = {
        **live,
        **_decision_context(user, req),
        "can_revoke": policies.can_manage_grants(user=user)
        and live["grant"] is not None
        and req.state in HOLDING_STATES,
        # Shrinking needs at least 2 GPUs to leave 1.
        "can_shrink": policies.can_manage_grants(user=user)
        and live["grant"] is not None
        and req.state in HOLDING_STATES
        and live["grant"].gpus > 1,
        "reason_form": ReasonForm(),
    }
    if live["grant"] is not None:
        context |= _workloads_context(user, req, live["grant"])
        context["access"] = grant_access_get(grant=live["grant"])
    return render(request, "quotas/request_detail.html", context)


def _decision_outcome(req: CapacityRequest, decision: str) -> str:
    if decision == "reject":
        return f"You rejected request #{req.pk}."
    if req.state == RequestState.PENDING_PLATFORM:
        return f"You approved request #{req.pk} for team {req.team}: it now awaits a platform admin."
    return f"You approved request #{req.pk}: {req.gpus} x {req.accelerator} granted to team {req.team}."


@writer_required
@require_POST
def request_decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve or reject; inline in the inbox or on the request page, or as a plain form post."""
    user = request.user
    req = _visible_request(user, pk)
    form = DecisionForm(request.POST)
    outcome = error = ""
    status = 200
    if not form.is_valid():
        error, status = "Choose Approve or Reject.", 422
    else:
        decision, comment = form.cleaned_data["decision"], form.cleaned_data["comment"]
        decide = (
            services.capacity_request_approve if decision == "approve" else services.capacity_request_reject
        )
        try:
            req = decide(capacity_request=req, actor=user, comment=comment)
        except PermissionDenied as exc:
            error, status = error_text(exc), 403
        except ValidationError as exc:
            error, status = error_text(exc), 422
        else:
            outcome = _decision_outcome(req, decision)

    if not request.htmx:
        if error:
            return refusal(request, error, status=status)
        messages.success(request, outcome)
        return redirect("quotas:request_detail", pk=req.pk)
    context = {**_decision_context(user, req), "outcome": outcome, "error": error}
    if error:
        # Keep what the approver typed: they fix the comment or read the refusal, then try again.
        context["form"] = form
    if (request.htmx.target or "").startswith("inbox-item-"):
        return render(request, "quotas/partials/inbox_item.html", context, status=status)
    return render(request, "quotas/partials/decision_panel.html", context, status=status)


@writer_required
@require_POST
def request_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    req = _visible_request(request.user, pk)
    try:
        services.capacity_request_cancel(capacity_request=req, actor=request.user)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(request, f"Request #{req.pk} cancelled.")
    return redirect("quotas:request_detail", pk=req.pk)


@login_required
def grant_detail(request: HttpRequest, pk: int) -> HttpResponse:
    grant = get_object_or_404(selectors.grant_list(user=request.user), pk=pk)
    return redirect(reverse("quotas:request_detail", args=[grant.request_id]) + "#grant")


def _download(text: str, filename: str) -> HttpResponse:
    response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
def grant_kubeconfig(request: HttpRequest, pk: int) -> HttpResponse:
    """The namespace's kubeconfig, without any secret, as a file."""
    grant = get_object_or_404(selectors.grant_list(user=request.user), pk=pk)
    return _download(grant_access_get(grant=grant).kubeconfig, f"{grant.namespace}-kubeconfig.yaml")


@login_required
def grant_example_manifest(request: HttpRequest, pk: int) -> HttpResponse:
    """A model server for the namespace, from the serving deployments' builder, as a file."""
    grant = get_object_or_404(selectors.grant_list(user=request.user), pk=pk)
    return _download(grant_access_get(grant=grant).example_manifest, f"{grant.namespace}-example.yaml")


@writer_required
@require_POST
def grant_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    grant: Grant = get_object_or_404(selectors.grant_list(user=request.user), pk=pk)
    form = ReasonForm(request.POST)
    form.is_valid()
    try:
        services.grant_revoke(grant=grant, actor=request.user, reason=form.cleaned_data.get("reason", ""))
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(request, f"Grant {grant.namespace} revoked; its quota is being removed.")
    return redirect("quotas:request_detail", pk=grant.request_id)


@writer_required
@require_POST
def grant_shrink(request: HttpRequest, pk: int) -> HttpResponse:
    grant: Grant = get_object_or_404(selectors.grant_list(user=request.user), pk=pk)
    try:
        gpus = int(request.POST.get("gpus", ""))
    except ValueError:
        messages.error(request, "Give the new GPU count as a whole number.")
        return redirect("quotas:request_detail", pk=grant.request_id)
    try:
        services.grant_shrink(grant=grant, actor=request.user, gpus=gpus)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(
            request, f"Grant {grant.namespace} shrunk to {gpus} GPUs; its quota is being lowered."
        )
    return redirect("quotas:request_detail", pk=grant.request_id)


# --- serving deployments ------------------------------------------------------------------------


@writer_required
def deployment_create(request: HttpRequest, pk: int) -> HttpResponse:
    grant: Grant = get_object_or_404(selectors.grant_list(user=request.user), pk=pk)
    registries = settings.PORTAL_PROVISIONING["IMAGE_REGISTRY_ALLOWLIST"]
    form = ServingDeploymentForm(request.POST or None, registries=registries)
    if request.method == "POST":
        if form.is_valid():
            try:
                deployment = services.serving_deployment_create(
                    grant=grant, actor=request.user, **form.cleaned_data
                )
            except (ValidationError, PermissionDenied) as exc:
                form_add_service_error(form, exc)
            else:
                messages.success(request, f"Serving deployment {deployment.name} created; it is starting.")
                url = reverse("quotas:request_detail", args=[grant.request_id]) + "#grant"
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
        focus_first_error(form)
    template = "quotas/partials/deployment_form.html" if request.htmx else "quotas/deployment_create.html"
    status = 422 if form.is_bound else 200
    return render(request, template, {"form": form, "grant": grant}, status=status)


def _visible_deployment(user: User, pk: int) -> ServingDeployment:
    return get_object_or_404(selectors.serving_deployment_list(user=user), pk=pk, deleted_at__isnull=True)


@writer_required
@require_POST
def deployment_scale(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = _visible_deployment(request.user, pk)
    try:
        replicas = int(request.POST.get("replicas", ""))
        services.serving_deployment_scale(deployment=deployment, actor=request.user, replicas=replicas)
    except ValueError:
        messages.error(request, "Replicas must be a whole number.")
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(request, f"Deployment {deployment.name} scaled to {replicas}.")
    return redirect(reverse("quotas:request_detail", args=[deployment.grant.request_id]) + "#grant")


@writer_required
@require_POST
def deployment_delete(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = _visible_deployment(request.user, pk)
    try:
        services.serving_deployment_delete(deployment=deployment, actor=request.user)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(request, f"Deployment {deployment.name} deleted; its pods are being removed.")
    return redirect(reverse("quotas:request_detail", args=[deployment.grant.request_id]) + "#grant")
