from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models

from portal import roles
from portal.querysets import TeamScopedQuerySet


class User(AbstractUser):
    """A portal user. Team roles live on quotas.Membership; these flags are the platform-wide roles."""

    is_platform_admin = models.BooleanField(
        default=False, help_text="Approves at the platform stage, manages clusters and pools."
    )
    is_auditor = models.BooleanField(default=False, help_text="Reads everything, changes nothing.")

    # The rules are portal.roles; these properties are for templates and short call sites.
    @property
    def is_admin(self) -> bool:
        return roles.is_admin(self)

    @property
    def sees_everything(self) -> bool:
        return roles.sees_everything(self)

    @property
    def is_read_only(self) -> bool:
        return roles.is_read_only(self)


class Session(AbstractBaseSession):
    """A signed-in browser's session, naming its user so that one read brings both (portal.sessions).
    A user's sessions go with them."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="sessions"
    )

    @classmethod
    def get_session_store_class(cls) -> Any:
        from portal.sessions import SessionStore

        return SessionStore


class AuditEvent(models.Model):
    """One row per state change, written in the same transaction as the change itself."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=64, db_index=True, help_text="e.g. capacity_request.approved")
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    # Lets team members see their own team's history without seeing anybody else's.
    team = models.ForeignKey(
        "quotas.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    message = models.TextField(blank=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["-created_at", "-id"], name="audit_newest_first"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_repr}"


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 digest is stored: the token itself is shown once, at issue.

    A fast hash is enough here (unlike passwords): the token is 256 random bits, so there is nothing to
    brute-force, and a fast lookup by digest keeps authentication to one indexed query.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'CI pipeline'")
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell tokens apart")
    digest = models.CharField(max_length=64, unique=True)
    read_only = models.BooleanField(default=False, help_text="Refused on every call that changes something")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class IdempotencyRecord(models.Model):
    """The first successful response to a POST sent with an Idempotency-Key, replayed on retries.

    The unique constraint is what makes two concurrent identical calls create one object: the second
    INSERT waits for the first transaction and then fails, and the caller replays the stored response.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body")
    status_code = models.PositiveSmallIntegerField(null=True)
    # The rendered JSON text, not jsonb: a replay must be the same bytes, and jsonb reorders keys.
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"
