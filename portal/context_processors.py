"""Template context every page needs: the navigation the signed-in user's roles allow."""

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from portal.models import User
from quotas.models import Membership
from quotas.selectors import approval_inbox


@dataclass(frozen=True)
class Navigation:
    can_request: bool  # member of at least one team
    is_lead: bool
    is_admin: bool
    sees_everything: bool
    read_only: bool
    inbox_count: int

    @property
    def can_decide(self) -> bool:
        return self.is_lead or self.is_admin


def _navigation(user: User) -> Navigation:
    roles = set(Membership.objects.filter(user=user).values_list("role", flat=True))
    is_lead = Membership.Role.LEAD in roles
    return Navigation(
        can_request=bool(roles),
        is_lead=is_lead,
        is_admin=user.is_admin,
        sees_everything=user.sees_everything,
        read_only=user.is_read_only,
        inbox_count=approval_inbox(user=user).count() if is_lead or user.is_admin else 0,
    )


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    if not user.is_authenticated:
        return {}
    # Lazy: htmx partials never render the navigation, so they never pay for its queries.
    return {"nav": SimpleLazyObject(lambda: _navigation(user))}
