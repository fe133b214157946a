"""Reads for personal API tokens."""

from django.db.models import QuerySet

from portal.api.services import token_digest
from portal.models import ApiToken, User


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    """A user's own tokens. Nobody lists another user's tokens, admins included."""
    return ApiToken.objects.filter(user=user)


def api_token_get(*, user: User, pk: int) -> ApiToken:
    return api_token_list(user=user).get(pk=pk)


def api_token_by_raw(*, raw: str) -> ApiToken | None:
    # Digests are unique: nothing for first()'s ORDER BY to sort, so it is left out.
    rows = ApiToken.objects.select_related("user").filter(digest=token_digest(raw)).order_by()[:1]
    return next(iter(rows), None)
