"""Writes for personal API tokens and idempotency records."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from portal.models import ApiToken, IdempotencyRecord, User
from portal.services import audit_event_record

TOKEN_PREFIX = "gpc_"
DISPLAY_PREFIX_LENGTH = 12


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    raw: str  # shown to the user once; never stored


@transaction.atomic
def api_token_issue(
    *, user: User, name: str, expires_in_days: int | None = None, read_only: bool = False
) -> IssuedToken:
    name = name.strip()
    if not name:
        raise ValidationError({"name": ["Name the token after what will use it, e.g. 'CI pipeline'."]})
    days = settings.PORTAL_API_TOKEN_DEFAULT_DAYS if expires_in_days is None else expires_in_days
    if not 1 <= days <= settings.PORTAL_API_TOKEN_MAX_DAYS:
        raise ValidationError(
            {"expires_in_days": [f"Tokens live between 1 and {settings.PORTAL_API_TOKEN_MAX_DAYS} days."]}
        )
    if not user.is_active:
        raise PermissionDenied(f"User {user.username} is inactive and cannot get a token.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name[:100],
        prefix=raw[:DISPLAY_PREFIX_LENGTH],
        digest=token_digest(raw),
        read_only=read_only,
        expires_at=timezone.now() + timedelta(days=days),
    )
    audit_event_record(
        actor=user,
        action="api_token.issued",
        obj=token,
        after={"name": token.name, "read_only": read_only, "expires_at": token.expires_at.isoformat()},
    )
    return IssuedToken(token=token, raw=raw)


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: User) -> ApiToken:
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if actor.pk != token.user_id and not actor.is_admin:
        raise PermissionDenied("Only the token's owner or a platform admin can revoke it.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_event_record(actor=actor, action="api_token.revoked", obj=token)
    return token


def api_token_touch(*, token: ApiToken) -> None:
    """Record that the token was used, at most once a minute: a write per API call would be waste."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


def idempotency_records_purge(*, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(hours=settings.PORTAL_API_IDEMPOTENCY_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
