"""Writes that belong to the portal itself: the audit trail."""

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
