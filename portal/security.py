"""Sign-in throttling (django-axes) and the response headers every page carries.

Password guessing: after PORTAL_LOGIN_FAILURE_LIMIT failed sign-ins for one account, or from one address,
within PORTAL_LOGIN_LOCKOUT_MINUTES, sign-in for that account (or from that address) is refused until that
many minutes after the last failure, whatever the password; the login page says until when, and the lockout
is audited.
API tokens never go through a password sign-in and are not affected. See docs/ui.md, "Password guessing".
"""

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db import transaction
from django.db.models import Max, Sum
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from portal.models import User
from portal.services import audit_event_record


def client_ip(request: HttpRequest) -> str:
    """The client's address, through the PORTAL_TRUSTED_PROXIES reverse proxies in front of the portal.

    Each trusted proxy appends the address it was connected from to X-Forwarded-For, so the client is the
    N-th entry from the right; anything further left was written by the client and is not believed. With
    no trusted proxy, the header is ignored altogether.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.PORTAL_TRUSTED_PROXIES
    if proxies <= 0:
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    if len(hops) < proxies:
        # Not through all the proxies (or a proxy that does not set the header): only the socket is known.
        return remote
    candidate = hops[-proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote


@dataclass(frozen=True)
class Lockout:
    reason: str  # "account" or "address"
    failures: int
    until: datetime


def lockout_for(*, username: str | None, ip_address: str | None) -> Lockout | None:
    """The lockout in force for this account or address, and when it ends (the latest of the two)."""
    cool_off: timedelta = get_cool_off()
    limit = get_failure_limit(None, None)
    since = timezone.now() - cool_off
    found: list[Lockout] = []
    for reason, filters in (("account", {"username": username}), ("address", {"ip_address": ip_address})):
        if not next(iter(filters.values())):
            continue
        figures = AccessAttempt.objects.filter(attempt_time__gte=since, **filters).aggregate(
            failures=Sum("failures_since_start"), last=Max("attempt_time")
        )
        if figures["failures"] and figures["failures"] >= limit:
            found.append(Lockout(reason, figures["failures"], figures["last"] + cool_off))
    return max(found, key=lambda lockout: lockout.until, default=None)


def lockout_text(lockout: Lockout, now: datetime | None = None) -> str:
    now = now or timezone.now()
    minutes = max(1, -(-int((lockout.until - now).total_seconds()) // 60))
    subject = "this account" if lockout.reason == "account" else "your network address"
    return (
        f"Too many failed sign-in attempts for {subject}: sign-in is locked until "
        f"{lockout.until:%H:%M} UTC (in {minutes} minute{'s' if minutes != 1 else ''}). "
        "Until then even the right password is refused."
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any] | None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the login page again, saying why and until when (HTTP 429)."""
    lockout = lockout_for(
        username=get_client_username(request, credentials),
        ip_address=getattr(request, "axes_ip_address", None),
    )
    text = (
        lockout_text(lockout)
        if lockout
        else "Too many failed sign-in attempts: sign-in is locked for a while. Try again later."
    )
    # Unbound: a bound form would authenticate again when its errors are read, counting one more failure.
    form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
    return render(
        request,
        "registration/login.html",
        {
            "form": form,
            "lockout": text,
            "next": request.POST.get("next", request.GET.get("next", "")),
            "oidc_enabled": settings.PORTAL_OIDC_ENABLED,
        },
        status=429,
    )


@receiver(user_locked_out)
def audit_lockout(
    sender: object, request: HttpRequest, username: str | None, ip_address: str, **kw: Any
) -> None:
    # Axes sends this signal for the failure that reaches the limit and again for every attempt refused
    # while locked; only the first one counted a failure (and set the count on the request).
    if getattr(request, "axes_failures_since_start", None) is None:
        return
    lockout = lockout_for(username=username, ip_address=ip_address)
    user = User.objects.filter(username=username).first() if username else None
    with transaction.atomic():
        obj = user or AccessAttempt.objects.filter(username=username, ip_address=ip_address).first()
        if obj is None:
            return
        audit_event_record(
            actor=None,
            action="login.locked_out",
            obj=obj,
            after={
                "username": username,
                "ip_address": ip_address,
                "failures": request.axes_failures_since_start,  # type: ignore[attr-defined]
                "locked_until": lockout.until.isoformat() if lockout else None,
            },
            message=lockout_text(lockout) if lockout else "Sign-in locked after repeated failures",
        )


class PermissionsPolicyMiddleware:
    """The portal uses no camera, microphone, location, payment or other powerful browser feature."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", settings.PORTAL_PERMISSIONS_POLICY)
        return response
