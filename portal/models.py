from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A portal user. Team roles live on quotas.Membership; these flags are the platform-wide roles."""

    is_platform_admin = models.BooleanField(
        default=False, help_text="Approves at the platform stage, manages clusters and pools."
    )
    is_auditor = models.BooleanField(default=False, help_text="Reads everything, changes nothing.")

    @property
    def sees_everything(self) -> bool:
        return self.is_platform_admin or self.is_auditor or self.is_superuser


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

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_repr}"
