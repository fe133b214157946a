"""Personal API tokens in the Authorization header: `Authorization: Bearer gpc_...`."""

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from portal.api import selectors, services
from portal.models import ApiToken, User

KEYWORDS = ("bearer", "token")


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Bearer tokens issued by `manage.py issue_token` or the tokens page.

    `request.auth` is the ApiToken, which the read-only permission and the throttle look at.
    """

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() not in KEYWORDS:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer <token>'.", code="invalid_token"
            )
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(
                "The token contains characters no token has.", code="invalid_token"
            ) from None
        token = selectors.api_token_by_raw(raw=raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown API token.", code="invalid_token")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed(
                f"API token {token.prefix}… was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC.",
                code="token_revoked",
            )
        if token.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed(
                f"API token {token.prefix}… expired on {token.expires_at:%Y-%m-%d %H:%M} UTC; "
                "issue a new one.",
                code="token_expired",
            )
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.", code="user_inactive")
        services.api_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
