"""`visible_to(user)`: the one way a read is scoped to what a user may see (as NetBox's restrict()).

Admins and auditors see every row; anybody else sees the rows of the teams they belong to. Models
whose rows belong to a team use TeamScopedQuerySet as their manager, so every selector scopes with
`Model.objects.visible_to(user)` and no view or selector spells the filter out again.
"""

from typing import Any, Self

from django.db import models

from portal import roles


class TeamScopedQuerySet(models.QuerySet):
    # The path from the row to its team; "" when the row is the team itself.
    team_path = "team"

    def visible_to(self, user: Any) -> Self:
        if roles.sees_everything(user):
            return self
        prefix = f"{self.team_path}__" if self.team_path else ""
        return self.filter(**{f"{prefix}memberships__user": user})


class TeamQuerySet(TeamScopedQuerySet):
    team_path = ""
