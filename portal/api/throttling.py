from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from portal.models import ApiToken

if TYPE_CHECKING:
    # Imported for type hints only: rest_framework.views imports the permission classes.
    from rest_framework.views import APIView


class TokenRateThrottle(SimpleRateThrottle):
    """A courtesy limit per API token (PORTAL_API_TOKEN_RATE); browser sessions are not throttled.

    Counted in Django's cache, per process: it protects the portal from a runaway script, it does not
    stop a determined client, so it is not a security boundary.
    """

    scope = "token"

    def get_rate(self) -> str | None:
        # Read at call time, not import time, so the rate follows the settings (tests change it).
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Request, view: "APIView") -> str | None:
        if not isinstance(request.auth, ApiToken):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}
