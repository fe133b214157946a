from typing import TYPE_CHECKING

from rest_framework import permissions
from rest_framework.request import Request

from portal.models import ApiToken

if TYPE_CHECKING:
    # Imported for type hints only: rest_framework.views imports the permission classes.
    from rest_framework.views import APIView


class TokenAllowsMethod(permissions.BasePermission):
    """Read-only tokens may only read."""

    message = (
        "This API token is read-only: it may only use GET, HEAD and OPTIONS. "
        "Issue a token without --read-only to change things."
    )
    code = "token_read_only"

    def has_permission(self, request: Request, view: "APIView") -> bool:
        token = request.auth
        if isinstance(token, ApiToken) and token.read_only:
            return request.method in permissions.SAFE_METHODS
        return True


class AuditorsReadOnly(permissions.BasePermission):
    """The same rule as the browser: an auditor changes nothing, even in a team they belong to."""

    message = "Auditors can read everything but change nothing."
    code = "read_only_user"

    def has_permission(self, request: Request, view: "APIView") -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return not (request.user and request.user.is_authenticated and request.user.is_read_only)


class SeesEverything(permissions.BasePermission):
    """Platform admins and auditors: the audit log is theirs."""

    message = "Only platform admins and auditors can read the audit log."

    def has_permission(self, request: Request, view: "APIView") -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.sees_everything)


class IsPlatformAdminOrReadOnly(permissions.BasePermission):
    message = "Only platform admins can change this."

    def has_permission(self, request: Request, view: "APIView") -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_admin)
