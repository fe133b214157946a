"""Writes that belong to the portal itself: the audit trail and the platform-wide roles."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import models, transaction

from portal.models import AuditEvent, User

# The audit rows of an audit_events_batched() block, written together when it ends.
_batch: ContextVar[list[AuditEvent] | None] = ContextVar("audit_batch", default=None)


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
    event = AuditEvent(
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
    batch = _batch.get()
    if batch is None:
        event.save(force_insert=True)
    else:
        batch.append(event)
    return event


@contextmanager
def audit_events_batched() -> Iterator[list[AuditEvent]]:
    """Collect the audit rows recorded inside the block and insert them in one statement as it ends,
    still inside the caller's transaction (a bulk decision records two rows per approval). The block
    yields the pending rows: a caller that gives up on part of its work drops that part's rows."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_events_batched must run inside the transaction of the changes it records")
    pending: list[AuditEvent] = []
    token = _batch.set(pending)
    try:
        yield pending
    finally:
        _batch.reset(token)
    AuditEvent.objects.bulk_create(pending)


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
