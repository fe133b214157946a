"""One error format for the whole API: {"code": ..., "message": ..., "fields": {field: [messages]}}.

Services raise Django's ValidationError and PermissionDenied; DRF raises its own exceptions. All of
them, and 404/405/429/401, leave the API in the same shape.
"""

import logging
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ObjectDoesNotExist, SuspiciousOperation
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

# Service errors that are about the current state of an object, not about the input: 409 Conflict.
CONFLICT_CODES = frozenset(
    {
        "invalid_transition",
        "not_pending",
        "capacity",
        "conflict",
        "grant_not_active",
        "deleted",
        "already_deleted",
    }
)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is not in a state that allows this."
    default_code = "conflict"


class UnprocessableEntity(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The request cannot be processed."
    default_code = "unprocessable"


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF error details (nested dicts and lists) as {"a.b.0.c": [messages]}."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix: [str(item) for item in detail]} if detail else {}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix: [str(detail)]}


def _from_django_validation(exc: DjangoValidationError) -> exceptions.APIException:
    if hasattr(exc, "error_dict"):
        errors = exc.error_dict
        detail = {
            "non_field_errors" if field == NON_FIELD_ERRORS else field: [m for e in errs for m in e.messages]
            for field, errs in errors.items()
        }
        codes = {e.code for errs in errors.values() for e in errs}
    else:
        detail = {"non_field_errors": exc.messages}
        codes = {e.code for e in exc.error_list}
    conflict = codes & CONFLICT_CODES
    if conflict and list(detail) == ["non_field_errors"]:
        return Conflict(" ".join(detail["non_field_errors"]), code=sorted(conflict)[0])
    translated = exceptions.ValidationError(detail)
    # The service's own code when it gave exactly one (e.g. unreachable, missing_permissions).
    translated.error_code = next(iter(codes)) if len(codes) == 1 and None not in codes else "invalid"
    return translated


def _translate(exc: Exception, context: dict[str, Any]) -> Exception:
    if isinstance(exc, DjangoValidationError):
        return _from_django_validation(exc)
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, Http404 | ObjectDoesNotExist):
        pk = context.get("kwargs", {}).get("pk")
        what = f"No object with id {pk}" if pk is not None else "Not found"
        return exceptions.NotFound(f"{what}, or you are not allowed to see it.")
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError(str(exc) or "The request could not be read.")
    return exc


def error_body(exc: exceptions.APIException) -> dict[str, Any]:
    detail = exc.detail
    codes = exc.get_codes()
    if isinstance(detail, dict):
        fields = _flatten(detail)
        general = fields.pop("non_field_errors", [])
        if fields:
            names = ", ".join(sorted(fields))
            message = " ".join(general) or f"Some fields are invalid: {names}."
        else:
            message = " ".join(general) or "Invalid input."
        return {"code": getattr(exc, "error_code", "invalid"), "message": message, "fields": fields}
    if isinstance(detail, list):
        return {"code": "invalid", "message": " ".join(str(d) for d in detail), "fields": {}}
    return {"code": str(codes), "message": str(detail), "fields": {}}


def error_parts(exc: Exception, context: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]] | None:
    """The HTTP status and the one error body an exception would answer with, for a part of an answer
    (an item of a batch); None for an exception that is a bug, not an answer."""
    translated = _translate(exc, context or {})
    if not isinstance(translated, exceptions.APIException):
        return None
    return translated.status_code, error_body(translated)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    exc = _translate(exc, context)
    response = drf_exception_handler(exc, context)
    if response is None:
        # A bug, not bad input: log it with its traceback and still answer in the API's format.
        logger.error("Unhandled API error", exc_info=exc)
        return Response(
            {"code": "server_error", "message": "Internal error; it has been logged.", "fields": {}},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    assert isinstance(exc, exceptions.APIException)
    response.data = error_body(exc)
    return response
