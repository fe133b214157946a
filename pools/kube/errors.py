import json

from kubernetes.client.exceptions import ApiException


class KubeError(Exception):
    """A failed call to a cluster; `reason` is the apiserver's Status reason, or ours for transport errors."""

    temporary = False

    def __init__(self, message: str, *, reason: str = "Unknown", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status


class TemporaryKubeError(KubeError):
    """Worth retrying later: unreachable, throttled, timed out, 5xx."""

    temporary = True


class PermanentKubeError(KubeError):
    """Retrying will not help until someone changes something: invalid object, forbidden, bad credentials."""


class Unreachable(TemporaryKubeError):
    pass


class NotFound(PermanentKubeError):
    pass


class Unauthorized(PermanentKubeError):
    pass


class Forbidden(PermanentKubeError):
    pass


class Invalid(PermanentKubeError):
    """Rejected by validation or admission (422/400): the message is the apiserver's, e.g. a quota refusal."""


def from_api_exception(exc: ApiException) -> KubeError:
    status = exc.status or 0
    reason, message = exc.reason or "Unknown", str(exc.reason or "")
    try:
        body = json.loads(exc.body or "{}")
        reason = body.get("reason") or reason
        message = body.get("message") or message
    except (TypeError, ValueError):
        pass
    if status == 404:
        return NotFound(message, reason=reason, status=status)
    if status == 401:
        return Unauthorized(
            "The cluster refused the credentials (401 Unauthorized).", reason=reason, status=401
        )
    if status == 403:
        return Forbidden(message, reason=reason, status=status)
    if status in (400, 409, 422):
        return Invalid(message, reason=reason, status=status)
    if status == 429 or status >= 500 or status == 0:
        return TemporaryKubeError(message or f"HTTP {status}", reason=reason, status=status)
    return PermanentKubeError(message, reason=reason, status=status)
