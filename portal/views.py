from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRefresh

from portal.ui import login_redirect


@require_GET
def livez(request: HttpRequest) -> JsonResponse:
    """The process answers: for liveness probes, which must not restart every web pod because the
    database is briefly away (readiness, /healthz, takes the pod out of the Service instead)."""
    return JsonResponse({"status": "ok"})


class LoginView(auth_views.LoginView):
    """Django's login form, offering single sign-on while it is on (read per request, not at import)."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "oidc_enabled": settings.PORTAL_OIDC_ENABLED}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers and reaches its database: for readiness and for load balancers."""
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
