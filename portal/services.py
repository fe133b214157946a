"""Writes that belong to the portal itself: the audit trail and the platform-wide roles."""

from typing import Any

from django.db import models, transaction

from portal.models import AuditEvent, User


def audit_event_record(
    *,
    actor: User | None,
    action: str,
    obj: models.Model,
    team: Any = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    message: str = "",
) -> AuditEvent:
    # Callers are inside their own atomic block; refusing to run outside one keeps the promise that
    # no change is ever committed without its audit row.
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_event_record must run inside the transaction of the change it records")
    return AuditEvent.objects.create(
        actor=actor,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        team=team,
        before=before,
        after=after,
        message=message,
    )


@transaction.atomic
def user_platform_roles_set(
    *, user: User, is_platform_admin: bool, is_auditor: bool, actor: User | None, message: str = ""
) -> bool:
    """Set the platform-wide roles; True when something changed (and was audited)."""
    locked = User.objects.select_for_update().get(pk=user.pk)
    before = {"is_platform_admin": locked.is_platform_admin, "is_auditor": locked.is_auditor}
    after = {"is_platform_admin": is_platform_admin, "is_auditor": is_auditor}
    if before == after:
        return False
    User.objects.filter(pk=user.pk).update(**after)
    user.is_platform_admin, user.is_auditor = is_platform_admin, is_auditor
    audit_event_record(
        actor=actor, action="user.roles_set", obj=user, before=before, after=after, message=message
    )
    return True
