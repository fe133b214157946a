"""`visible_to(user)`: the one way a read is scoped to what a user may see (as NetBox's restrict()).

Admins and auditors see every row; anybody else sees the rows of the teams they belong to. Models
whose rows belong to a team use TeamScopedQuerySet as their manager, so every selector scopes with
`Model.objects.visible_to(user)` and no view or selector spells the filter out again.
"""

from typing import Any, Self, TypeVar

from django.db import models
from django.db.models import Model, QuerySet

from portal import roles

M = TypeVar("M", bound=Model)


class TeamScopedQuerySet(models.QuerySet):
    # The path from the row to its team; "" when the row is the team itself.
    team_path = "team"

    def visible_to(self, user: Any) -> Self:
        if roles.sees_everything(user):
            return self
        # A semi-join on the user's memberships rather than a join through the team: the rows are not
        # multiplied by it, and count() of a scoped list does not join the team and membership rows
        # into every row it counts (a third of a 10,000-row page's time).
        team = self.model
        for step in self.team_path.split("__") if self.team_path else ():
            team = team._meta.get_field(step).related_model
        memberships = team._meta.get_field("memberships").related_model
        teams = memberships.objects.filter(user=user).values("team_id")
        return self.filter(**{f"{self.team_path or 'pk'}__in": teams})


class TeamQuerySet(TeamScopedQuerySet):
    team_path = ""


def locked(queryset: QuerySet[M]) -> QuerySet[M]:
    """Lock the rows of `queryset` itself FOR UPDATE, never the rows it joins with select_related: a
    joined team, pool or cluster row locked that way blocks every commit that references it (PostgreSQL's
    foreign-key checks take KEY SHARE on it), which deadlocked approvals against grant reconciles."""
    return queryset.select_for_update(of=("self",))
