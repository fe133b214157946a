"""OpenAPI generation: every operation documents the error responses it can give, in the one error shape."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

from portal.api.serializers import ErrorSerializer

ERRORS = {
    "400": "Bad input: malformed JSON, a wrong type, an unknown filter value or page, or a rule the "
    "request breaks. `fields` names each invalid field.",
    "401": "No credentials, or an unknown, expired or revoked token.",
    "403": "Authenticated but not allowed: not your role, your own request, or a read-only token.",
    "404": "No such object, or one you are not allowed to see (the API never says which).",
    "409": "The object's current state does not allow this (e.g. approving a request that is no longer "
    "pending, or a pool that no longer has room).",
    "415": "The body is not `application/json`.",
    "422": "The Idempotency-Key was already used with a different request.",
    "429": "Courtesy rate limit per token exceeded; retry after the `Retry-After` seconds.",
}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _error(code: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=ERRORS[code])


class PortalAutoSchema(AutoSchema):
    def _error_codes(self) -> list[str]:
        codes = ["400"]
        if not all(isinstance(p, AllowAny) for p in self.view.get_permissions()):
            codes += ["401", "403", "429"]
        if "{" in self.path:
            codes.append("404")
        if self.method in UNSAFE:
            codes.append("409")
        if self.method in {"POST", "PUT", "PATCH"}:
            codes.append("415")
        if self.method == "POST":
            codes.append("422")
        return codes

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction=direction)
        for code in self._error_codes():
            if code not in responses:
                responses[code] = self._get_response_for_code(_error(code), code, direction=direction)
        return dict(sorted(responses.items()))


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        definition = build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer")
        definition["description"] = (
            "A personal API token: `manage.py issue_token USERNAME` or the tokens page."
        )
        return definition
