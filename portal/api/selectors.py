"""Reads for personal API tokens."""

from django.db.models import QuerySet

from portal import statements
from portal.api.services import token_digest
from portal.models import ApiToken, User


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    """A user's own tokens. Nobody lists another user's tokens, admins included."""
    return ApiToken.objects.filter(user=user)


def api_token_get(*, user: User, pk: int) -> ApiToken:
    return api_token_list(user=user).get(pk=pk)


def api_token_by_raw(*, raw: str) -> ApiToken | None:
    """The token and its user, as select_related("user") would read them, in one statement compiled
    once per process: every API request authenticates, so its ORM compile was a fixed cost of each."""
    digest = token_digest(raw)
    token_columns, user_columns = statements.model_columns(ApiToken), statements.model_columns(User)

    def build(digest: str) -> QuerySet[ApiToken]:
        # Digests are unique: nothing to order by.
        rows = ApiToken.objects.filter(digest=digest).order_by()
        return rows.values(*token_columns, *(f"user__{c}" for c in user_columns))[:1]

    statement, params = statements.bind("api token by digest", build, digest=digest)
    found = statements.rows(statement, params)
    if not found:
        return None
    (row,) = found
    token = ApiToken.from_db(statement.using, token_columns, [row[c] for c in token_columns])
    token.user = User.from_db(statement.using, user_columns, [row[f"user__{c}"] for c in user_columns])
    return token
