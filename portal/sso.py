"""Single sign-on: the OpenID Connect backend and the mapping of the identity provider's groups to teams
and roles.

With PORTAL_OIDC_ENABLED the identity provider is the source of truth for everyone who signs in through it:
at every sign-in the groups claim decides the user's team memberships, which of them they lead, and the
platform admin and auditor roles; whatever differs is added or removed, each change audited. Local accounts
(a usable password, made in the admin or by `createsuperuser`) are the break-glass accounts: single sign-on
never signs them in and never changes their roles, and users made by single sign-on have no password.
See docs/ui.md, "Single sign-on".
"""

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, path
from mozilla_django_oidc import views as oidc_views
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from requests import RequestException

from portal.models import User
from portal.services import audit_event_record, user_platform_roles_set
from quotas.models import Membership, Team
from quotas.services import membership_remove, membership_set

log = logging.getLogger(__name__)

TEAM_PLACEHOLDER = "{team}"
# A team slug, as quotas.models.Team validates it (a DNS label).
_SLUG = r"(?P<team>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"


@dataclass(frozen=True)
class GroupRoles:
    """What a user's groups at the identity provider make them in the portal."""

    teams: dict[str, str]  # team slug -> Membership.Role
    platform_admin: bool
    auditor: bool


def _group_pattern(setting: str, template: str) -> re.Pattern[str]:
    if template.count(TEAM_PLACEHOLDER) != 1:
        raise ImproperlyConfigured(
            f"{setting}={template!r} must contain {TEAM_PLACEHOLDER} exactly once, e.g. '/teams/{{team}}'."
        )
    before, after = template.split(TEAM_PLACEHOLDER)
    return re.compile(re.escape(before) + _SLUG + re.escape(after))


def group_config() -> dict[str, Any]:
    conf = settings.PORTAL_OIDC_GROUPS
    return {
        "claim": conf["CLAIM"],
        "team": _group_pattern("PORTAL_OIDC_TEAM_GROUP", conf["TEAM_GROUP"]),
        "lead": _group_pattern("PORTAL_OIDC_LEAD_GROUP", conf["LEAD_GROUP"]),
        "admin": set(conf["ADMIN_GROUPS"]),
        "auditor": set(conf["AUDITOR_GROUPS"]),
    }


def roles_from_groups(groups: Iterable[str]) -> GroupRoles:
    """Map group names to teams and roles. A group that matches the lead pattern is never read as a team
    (so 'gpu-{team}' and 'gpu-{team}-leads' can coexist); leading a team implies being in it."""
    conf = group_config()
    teams: dict[str, str] = {}
    groups = set(groups)
    for group in sorted(groups):
        if lead := conf["lead"].fullmatch(group):
            teams[lead["team"]] = Membership.Role.LEAD
        elif member := conf["team"].fullmatch(group):
            teams.setdefault(member["team"], Membership.Role.MEMBER)
    return GroupRoles(
        teams=teams,
        platform_admin=bool(groups & conf["admin"]),
        auditor=bool(groups & conf["auditor"]),
    )


class ClaimError(ValueError):
    """The identity provider's answer cannot be used; the message is shown on the login page."""


def groups_from_claims(claims: dict[str, Any], claim: str) -> list[str]:
    # Keycloak leaves the claim out for a user in no group: absent means no groups, not "unknown".
    value = claims.get(claim, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise ClaimError(
            f"The identity provider's '{claim}' claim is not a list of group names; ask its administrators "
            "to check the groups mapper of the portal's client."
        )
    return value


def user_roles_sync(*, user: User, roles: GroupRoles, groups: list[str]) -> list[str]:
    """Make the user's memberships and platform roles what their groups say. Returns what changed."""
    message = "Single sign-on: from the identity provider's groups at sign-in"
    changes: list[str] = []
    with transaction.atomic():
        known = {team.slug: team for team in Team.objects.filter(slug__in=roles.teams)}
        for slug in sorted(set(roles.teams) - set(known)):
            log.warning("SSO: %s is in a group for team %r, which the portal does not have", user, slug)
        memberships = Membership.objects.select_related("team").select_for_update(of=("self",))
        current = {m.team.slug: m for m in memberships.filter(user=user)}
        for slug, role in sorted(roles.teams.items()):
            if slug in known and (slug not in current or current[slug].role != role):
                membership_set(team=known[slug], user=user, role=role, actor=None, message=message)
                changes.append(f"{slug}: {role}")
        for slug, membership in sorted(current.items()):
            if slug not in roles.teams:
                membership_remove(membership=membership, actor=None, message=message)
                changes.append(f"{slug}: removed")
        if user_platform_roles_set(
            user=user,
            is_platform_admin=roles.platform_admin,
            is_auditor=roles.auditor,
            actor=None,
            message=message,
        ):
            changes.append(f"platform admin: {roles.platform_admin}, auditor: {roles.auditor}")
    if changes:
        log.info("SSO: %s signed in with groups %s: %s", user, sorted(groups), "; ".join(changes))
    return changes


class PortalOIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, live while PORTAL_OIDC_ENABLED is on, applying the group mapping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds every backend for every authenticate() call, password sign-ins included; with single
        # sign-on off none of the OIDC_* settings the library reads here exist.
        self.enabled = settings.PORTAL_OIDC_ENABLED
        if self.enabled:
            super().__init__(*args, **kwargs)
        else:
            self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        if not self.enabled:
            return None
        try:
            return super().authenticate(request, **kwargs)
        except RequestException as error:
            # The token, keys or user-info endpoint did not answer, or refused the code: a login-page
            # message, not a 500.
            log.warning("SSO: the identity provider could not be reached or refused the code: %s", error)
            self._refuse(
                "The identity provider did not complete the sign-in (it did not answer, or refused the "
                "request). Try again; if it keeps failing, tell the platform team."
            )
            return None

    def get_user(self, user_id: Any) -> User | None:
        # The library's returns a deactivated user too: their single sign-on sessions would outlive
        # the deactivation, which ends password sessions at once (ModelBackend).
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    def _refuse(self, text: str) -> None:
        log.warning("SSO sign-in refused: %s", text)
        self.request.sso_refused = True  # type: ignore[attr-defined]
        messages.error(self.request, text)

    def _roles(self, claims: dict[str, Any]) -> tuple[GroupRoles, list[str]] | None:
        claim = settings.PORTAL_OIDC_GROUPS["CLAIM"]
        try:
            groups = groups_from_claims(claims, claim)
        except ClaimError as error:
            self._refuse(str(error))
            return None
        return roles_from_groups(groups), groups

    def create_user(self, claims: dict[str, Any]) -> User | None:
        mapped = self._roles(claims) if settings.PORTAL_OIDC_GROUPS["CLAIM"] else None
        if settings.PORTAL_OIDC_GROUPS["CLAIM"] and mapped is None:
            return None
        with transaction.atomic():
            user = super().create_user(claims)  # create_user() with no password: unusable, SSO only
            user.first_name = str(claims.get("given_name", ""))[:150]
            user.last_name = str(claims.get("family_name", ""))[:150]
            user.save(update_fields=["first_name", "last_name"])
            audit_event_record(
                actor=None,
                action="user.created",
                obj=user,
                after={"email": user.email},
                message="Single sign-on: first sign-in",
            )
            if mapped:
                user_roles_sync(user=user, roles=mapped[0], groups=mapped[1])
        return user

    def update_user(self, user: User, claims: dict[str, Any]) -> User | None:
        if user.has_usable_password():
            self._refuse(
                f"{user.email} belongs to a local portal account, which signs in with its password only "
                "(single sign-on never takes over local accounts)."
            )
            return None
        if not settings.PORTAL_OIDC_GROUPS["CLAIM"]:
            return user
        mapped = self._roles(claims)
        if mapped is None:
            return None
        user_roles_sync(user=user, roles=mapped[0], groups=mapped[1])
        return user


class CallbackView(oidc_views.OIDCAuthenticationCallbackView):
    """The library's callback, saying on the login page why a sign-in did not complete."""

    def login_failure(self) -> HttpResponse:
        request = self.request
        if not getattr(request, "sso_refused", False):
            if request.GET.get("error"):
                reason = request.GET.get("error_description") or request.GET["error"]
                text = f"The identity provider did not sign you in: {reason[:200]}"
            elif getattr(self, "user", None) is not None and not self.user.is_active:
                text = "Your portal account is deactivated; ask a platform admin."
            else:
                text = "Single sign-on did not complete (the sign-in may have expired). Try again."
            messages.error(request, text)
        return super().login_failure()


def _sso_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.PORTAL_OIDC_ENABLED:
            raise Http404("Single sign-on is not enabled.")
        return view(request, *args, **kwargs)

    return wrapped


# The library's URL names, answered only while single sign-on is on (a 404 otherwise, never a 500 for the
# missing OIDC_* settings).
urlpatterns: list[URLPattern] = [
    path(
        "callback/",
        _sso_only(CallbackView.as_view()),
        name="oidc_authentication_callback",
    ),
    path(
        "authenticate/",
        _sso_only(oidc_views.OIDCAuthenticationRequestView.as_view()),
        name="oidc_authentication_init",
    ),
]


@checks.register(checks.Tags.security)
def check_group_mapping(**kwargs: Any) -> list[checks.CheckMessage]:
    try:
        group_config()
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="portal.E001")]
    return []
