"""`Idempotency-Key` on creating POSTs: a retry with the same key gets the first answer, nothing twice.

The key is claimed by inserting an IdempotencyRecord inside the same transaction as the work. A
concurrent request with the same key blocks on the unique index until the first one commits, then
replays its stored response; if the first one fails, its claim rolls back with it and the second
runs normally. Only successful (2xx) responses are stored: an error created nothing, so the same
call may simply be sent again once its cause is fixed.
"""

import functools
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.api.exceptions import UnprocessableEntity
from portal.api.renderers import render_json
from portal.models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name=HEADER,
    type=OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Any unique string (a UUID is ideal), at most 255 printable ASCII characters. A retry with the same "
        "key and the same body returns the first successful response (with `Idempotent-Replayed: true`) "
        "and creates nothing twice; the same key with a different body is refused with 422. Keys are "
        f"remembered for {settings.PORTAL_API_IDEMPOTENCY_HOURS} hours."
    ),
)

Handler = Callable[..., Response]


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and all(" " <= ch <= "~" for ch in key)


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method}\n{request.path}\n".encode())
    digest.update(request.body)
    return digest.hexdigest()


def _replay(record: IdempotencyRecord) -> Response:
    data = json.loads(record.response_body) if record.response_body else None
    return Response(data, status=record.status_code, headers={"Idempotent-Replayed": "true"})


def _claim(request: Request, key: str, fingerprint: str) -> IdempotencyRecord | Response:
    """Insert the record for `key`, or answer from the one already there."""
    user = request.user
    for _attempt in range(2):
        try:
            with transaction.atomic():
                return IdempotencyRecord.objects.create(
                    user=user,
                    key=key,
                    method=request.method,
                    path=request.path[:500],
                    fingerprint=fingerprint,
                )
        except IntegrityError:
            existing = IdempotencyRecord.objects.select_for_update().filter(user=user, key=key).first()
        if existing is None:
            continue  # its holder rolled back or purged it meanwhile: claim it again
        expired = existing.created_at < timezone.now() - timedelta(
            hours=settings.PORTAL_API_IDEMPOTENCY_HOURS
        )
        if expired:
            existing.delete()
            continue
        if existing.fingerprint != fingerprint:
            raise UnprocessableEntity(
                f"Idempotency-Key {key!r} was already used for a different request "
                f"({existing.method} {existing.path} with another body). Use a new key for a new request.",
                code="idempotency_key_reused",
            )
        return _replay(existing)
    raise UnprocessableEntity(
        "The Idempotency-Key is being reused concurrently; retry.", code="idempotency_key_busy"
    )


def idempotent(handler: Handler) -> Handler:
    """Make a POST handler honour the Idempotency-Key header."""

    @functools.wraps(handler)
    def wrapper(view: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return handler(view, request, *args, **kwargs)
        if not _valid_key(key):
            raise ValidationError(
                {HEADER: [f"Use 1 to {MAX_KEY_LENGTH} printable ASCII characters, e.g. a UUID."]}
            )
        fingerprint = _fingerprint(request)
        with transaction.atomic():
            claimed = _claim(request, key, fingerprint)
            if isinstance(claimed, Response):
                return claimed
            try:
                response = handler(view, request, *args, **kwargs)
            except Exception as exc:
                response = view.handle_exception(exc)
            if not 200 <= response.status_code < 300:
                transaction.set_rollback(True)
                return response
            claimed.status_code = response.status_code
            # Stored as rendered, in the same key order, so the replay renders to the same bytes.
            claimed.response_body = render_json(response.data).decode()
            claimed.save(update_fields=["status_code", "response_body"])
            return response

    return wrapper
