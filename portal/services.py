"""Writes that belong to the portal itself: the audit trail, the platform-wide roles and the sessions'
housekeeping; and batched inserts of rows that are only ever added (audit rows, approval decisions)."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from django.db import models, transaction
from django.utils import timezone

from portal.models import AuditEvent, Session, User

M = TypeVar("M", bound=models.Model)

# The rows of an inserts_batched() block, written together when it ends.
_batch: ContextVar[list[models.Model] | None] = ContextVar("insert_batch", default=None)


def row_insert(row: M) -> M:
    """Insert `row`, a row nothing updates later, now or, inside inserts_batched(), with the block's
    other rows. Its primary key is set once it is written: callers inside a block must not need it."""
    batch = _batch.get()
    if batch is None:
        row.save(force_insert=True)
    else:
        batch.append(row)
    return row


@contextmanager
def inserts_batched() -> Iterator[list[models.Model]]:
    """Collect the rows row_insert() records inside the block and insert them with one statement per
    model as it ends, still inside the caller's transaction (a bulk decision writes a decision and two
    audit rows per approval). An exception in the block drops them with the transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("inserts_batched must run inside the transaction of the changes it records")
    pending: list[models.Model] = []
    token = _batch.set(pending)
    try:
        yield pending
    finally:
        _batch.reset(token)
    by_model: dict[type[models.Model], list[models.Model]] = {}
    for row in pending:
        by_model.setdefault(type(row), []).append(row)
    for model, rows in by_model.items():
        model._default_manager.bulk_create(rows)


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
    return row_insert(
        AuditEvent(
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


def sessions_purge() -> int:
    """Delete the sessions past their expiry. Django never deletes them by itself (an expired one is
    only refused when read), so without this the table grows by a row per sign-in forever."""
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
