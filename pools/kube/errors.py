"""Typed errors of the cluster layer. Nothing else in the portal sees a kubernetes or urllib3 exception.

Messages are safe to show and to log: they carry the apiserver's own words or a sentence of ours, and
never a credential (tokens, keys and kubeconfig content are never formatted into them).
"""

import json
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError


class KubeError(Exception):
    """A failed call to a cluster; `reason` is the apiserver's Status reason, or ours for transport errors."""

    temporary = False

    def __init__(self, message: str, *, reason: str = "Unknown", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reason={self.reason!r}, status={self.status!r}, message={self.message!r})"
        )


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
    """401: the cluster does not accept the credentials at all."""


class Forbidden(PermanentKubeError):
    """403 from authorization (RBAC): the credentials are valid but lack a permission."""


class Invalid(PermanentKubeError):
    """Rejected by validation or admission: the message is the apiserver's, e.g. a quota refusal.

    Admission plugins answer 403 too (ResourceQuota, PodSecurity), but retrying with other
    credentials would not help, so those are Invalid rather than Forbidden.
    """


class Expired(PermanentKubeError):
    """410 Gone: a watch or list continuation asked for a resourceVersion etcd has compacted away."""


class InvalidKubeconfig(PermanentKubeError):
    """The stored credentials cannot be turned into a client (bad YAML, missing context, exec plugin...)."""


class TLSError(PermanentKubeError):
    """The apiserver's certificate is not trusted by the configured CA (or the name does not match)."""


# The authorizer's refusal reads `<resource> "<name>" is forbidden: User "<user>" cannot <verb> ...`;
# admission refusals share the 403 status but not this wording.
_RBAC_DENIAL = re.compile(r'\bUser "[^"]*" cannot \w+')


def _status_body(exc: ApiException) -> dict:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def from_api_exception(exc: ApiException) -> KubeError:
    status = exc.status or 0
    body = _status_body(exc)
    reason = body.get("reason") or exc.reason or "Unknown"
    message = body.get("message") or str(exc.reason or "")
    causes = (body.get("details") or {}).get("causes") or []
    if status == 0:
        # The REST layer turns TLS failures into a status-0 ApiException whose reason starts with the
        # exception's class name.
        if message.startswith("SSLError"):
            return TLSError(
                f"TLS verification failed: {message.splitlines()[-1]}", reason="TLSError", status=None
            )
        return TemporaryKubeError(message or "no response", reason="Unknown", status=None)
    if status == 404:
        return NotFound(message, reason=reason, status=status)
    if status == 401:
        return Unauthorized(
            "The cluster refused the credentials (401 Unauthorized): the token or client certificate "
            "is wrong, expired or revoked.",
            reason=reason,
            status=401,
        )
    if status == 403:
        if any(c.get("reason") == "NamespaceTerminating" for c in causes if isinstance(c, dict)):
            return TemporaryKubeError(message, reason="NamespaceTerminating", status=status)
        if _RBAC_DENIAL.search(message):
            return Forbidden(message, reason=reason, status=status)
        return Invalid(message, reason=reason, status=status)
    if status == 410:
        return Expired(message, reason=reason, status=status)
    if status in (400, 409, 422):
        return Invalid(message, reason=reason, status=status)
    if status == 429 or status >= 500:
        return TemporaryKubeError(message or f"HTTP {status}", reason=reason, status=status)
    return PermanentKubeError(message or f"HTTP {status}", reason=reason, status=status)


def _transport_cause(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None) if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    # Most specific first: NameResolutionError is a NewConnectionError, which is a ConnectTimeoutError.
    if isinstance(inner, urllib3.exceptions.NameResolutionError):
        return "the host name does not resolve"
    if isinstance(inner, urllib3.exceptions.NewConnectionError):
        return "no connection could be made (refused, or no route to the host)"
    if isinstance(inner, urllib3.exceptions.ConnectTimeoutError):
        return "the connection timed out"
    if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
        return "no answer before the read timeout"
    if isinstance(inner, urllib3.exceptions.ProtocolError):
        return "the connection broke off"
    if isinstance(inner, urllib3.exceptions.ResponseError):
        return "too many error responses"
    return type(inner or exc).__name__


def _tls_failure(exc: BaseException) -> BaseException | None:
    inner = getattr(exc, "reason", None) if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    if isinstance(inner, urllib3.exceptions.SSLError | ssl.SSLError):
        return inner
    return None


def translate(exc: BaseException, cluster_name: str) -> KubeError | None:
    """The typed error for an exception raised by the kubernetes client, or None when it is not one."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):  # DynamicApiError included: it subclasses ApiException
        return from_api_exception(exc)
    if isinstance(exc, json.JSONDecodeError):
        return PermanentKubeError(
            f"Cluster {cluster_name}: the server's answer is not JSON; "
            "is the address a Kubernetes API server?",
            reason="NotKubernetes",
        )
    if isinstance(exc, ResourceNotFoundError):
        return PermanentKubeError(f"The cluster does not serve this API: {exc}", reason="NoSuchAPI")
    tls = _tls_failure(exc)
    if tls is not None:
        # ssl's message names the failed check (e.g. "certificate verify failed: self-signed
        # certificate"); it never includes key material.
        detail = str(getattr(tls, "reason", None) or tls).splitlines()[-1][:300]
        return TLSError(
            f"Cluster {cluster_name}: TLS verification of the API server failed ({detail}); "
            "check the CA certificate and the server address.",
            reason="TLSError",
        )
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        # Transport errors name the host and port, never the credentials.
        pool = getattr(exc, "pool", None)
        where = f" at {pool.host}:{pool.port}" if getattr(pool, "host", None) else ""
        return Unreachable(
            f"Cluster {cluster_name} is unreachable{where}: {_transport_cause(exc)}.", reason="Unreachable"
        )
    return None


@contextmanager
def translated(cluster_name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        typed = translate(exc, cluster_name)
        if typed is None or typed is exc:
            raise
        raise typed from exc
