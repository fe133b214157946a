from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRefresh

from portal.ui import login_redirect, login_required
from quotas import selectors
from quotas.states import HOLDING_STATES, PENDING_STATES

RECENT = 10


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    requests = selectors.capacity_request_list(user=user)
    return render(
        request,
        "portal/home.html",
        {
            "in_flight": requests.filter(state__in=PENDING_STATES)[:RECENT],
            "inbox": selectors.approval_inbox(user=user)[:RECENT],
            "grants": selectors.grant_usage_list(user=user).filter(request__state__in=HOLDING_STATES)[
                :RECENT
            ],
        },
    )


class LoginView(auth_views.LoginView):
    """Django's login form, offering single sign-on while it is on (read per request, not at import)."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "oidc_enabled": settings.PORTAL_OIDC_ENABLED}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "database": connection.vendor})


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF refusals of htmx requests reload the page (or go to the login form) instead of swapping an error.

    An htmx page goes stale when the session behind it ends or is replaced by a new sign-in in another
    tab: its token no longer matches. Reloading gets a fresh token; signing in gets a fresh session.
    """
    if request.htmx:
        if not request.user.is_authenticated:
            return login_redirect(request)
        response = HttpResponseClientRefresh()
        response.status_code = 403
        return response
    return django_csrf_failure(request, reason=reason)
