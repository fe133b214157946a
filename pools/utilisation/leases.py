"""Collector leases: each enabled cluster is watched by exactly one live collector replica.

One `CollectorLease` row per cluster. Every statement that takes, renews or checks a lease is one
atomic UPDATE (or a locking SELECT) whose time comes from the database's clock, so the replicas'
own clocks never decide who holds what.

- **acquire**: `UPDATE … SET holder = me, epoch = epoch + 1, expires_at = now + LEASE WHERE
  holder = '' OR expires_at <= now`: a free or expired lease goes to exactly one replica; `epoch`,
  bumped at every acquisition, is the fencing token.
- **renew**: `UPDATE … SET expires_at = now + LEASE WHERE holder = me AND epoch = mine`, every
  RENEW seconds. No row updated: another replica has it (or it was released): stop watching.
- **release**: on a clean stop, or to give a fair share to a new replica: `holder = ''`, so
  another replica takes it at its next round instead of waiting for the expiry.
- **fence**: every write of figures or history first locks the lease row `WHERE holder = me AND
  epoch = mine AND expires_at > now` in the same transaction and is refused (LeaseLost, the
  transaction rolls back) when that finds nothing. The lock makes the check hold until commit: a
  replica taking the lease over waits for the write to commit, and from then on every write of the
  old holder is refused, even one from a process that was paused and wakes up later.

Durations (settings, docs/utilisation.md): LEASE = PORTAL_COLLECTOR_LEASE_SECONDS (15 s), RENEW =
PORTAL_COLLECTOR_RENEW_SECONDS (5 s). A dead replica's leases expire at most LEASE seconds after its
last renewal, and the others try to acquire every RENEW seconds: takeover within LEASE + RENEW.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, Value
from django.db.models.expressions import Combinable
from django.db.models.functions import Now

from pools.models import CollectorLease, CollectorReplica

# A replica that waits longer than this for a lease row is blocked behind a writer that holds it
# (or behind a paused one, until the database ends its session): it tries again next round.
ACQUIRE_LOCK_TIMEOUT = "2s"
# A fenced write holds the lease row's lock only for the milliseconds of its statements. A holder
# paused in the middle (SIGSTOP, a frozen VM) would keep it, and so block every takeover: PostgreSQL
# ends such a session after this long idle inside its transaction, which rolls the write back.
FENCED_IDLE_TIMEOUT = "5s"


class LeaseLost(Exception):
    """The writer no longer holds the cluster's lease: its write was refused and rolled back."""


@dataclass(frozen=True)
class LeaseToken:
    """What a collector carries to prove, at each write, that it still holds the cluster."""

    cluster_id: int
    holder: str
    epoch: int


class DatabaseNow(Now):
    """The database's current time at the moment the statement runs. PostgreSQL's now() is the
    start of the transaction, which a paused process would carry forward: clock_timestamp() is not."""

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        return "clock_timestamp()", []


def _after(seconds: float) -> Combinable:
    return ExpressionWrapper(DatabaseNow() + Value(timedelta(seconds=seconds)), output_field=DateTimeField())


def _set_local(name: str, value: str) -> None:
    """A PostgreSQL setting for the current transaction only (SQLite serialises writers anyway)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # set_config(..., true) is SET LOCAL in a form that takes bound parameters.
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])


def lease_seconds() -> float:
    return float(settings.PORTAL_COLLECTOR_LEASE_SECONDS)


def renew_seconds() -> float:
    return float(settings.PORTAL_COLLECTOR_RENEW_SECONDS)


def holder_id() -> str:
    """Unique for the life of one process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _free() -> Q:
    return Q(holder="") | Q(expires_at__isnull=True) | Q(expires_at__lte=DatabaseNow())


@transaction.atomic
def collector_lease_acquire(
    *, cluster_id: int, holder: str, seconds: float | None = None
) -> LeaseToken | None:
    """Take the cluster's lease if it is free or expired; None when another replica holds it."""
    CollectorLease.objects.get_or_create(cluster_id=cluster_id)
    _set_local("lock_timeout", ACQUIRE_LOCK_TIMEOUT)
    taken = (
        CollectorLease.objects.filter(_free(), cluster_id=cluster_id).update(
            holder=holder,
            epoch=F("epoch") + 1,
            acquired_at=DatabaseNow(),
            renewed_at=DatabaseNow(),
            expires_at=_after(seconds or lease_seconds()),
        )
        == 1
    )
    if not taken:
        return None
    # The UPDATE's row lock lasts until commit: nobody can have moved the epoch meanwhile.
    epoch = CollectorLease.objects.filter(cluster_id=cluster_id).values_list("epoch", flat=True).get()
    return LeaseToken(cluster_id=cluster_id, holder=holder, epoch=epoch)


def collector_lease_renew(*, lease: LeaseToken, seconds: float | None = None) -> bool:
    """Extend the lease from now; False when it is no longer ours (taken over or released).
    A lease that expired but that nobody took is still ours: nobody else wrote meanwhile."""
    return (
        CollectorLease.objects.filter(
            cluster_id=lease.cluster_id, holder=lease.holder, epoch=lease.epoch
        ).update(renewed_at=DatabaseNow(), expires_at=_after(seconds or lease_seconds()))
        == 1
    )


def collector_lease_release(*, lease: LeaseToken) -> bool:
    """Give the lease up at once (a clean stop, a fair share for another replica)."""
    return (
        CollectorLease.objects.filter(
            cluster_id=lease.cluster_id, holder=lease.holder, epoch=lease.epoch
        ).update(holder="", expires_at=DatabaseNow())
        == 1
    )


def collector_lease_fence(*, lease: LeaseToken) -> CollectorLease:
    """Inside the writer's transaction, before its writes: lock the lease row if `lease` still
    holds it, or raise LeaseLost (the caller's transaction then rolls back). Any module that writes
    on the collector's behalf calls this first, with the collector's `lease`."""
    if not connection.in_atomic_block:
        raise RuntimeError("collector_lease_fence must run inside the transaction of the write it fences")
    _set_local("idle_in_transaction_session_timeout", FENCED_IDLE_TIMEOUT)
    held = (
        CollectorLease.objects.select_for_update(no_key=True)
        .filter(
            cluster_id=lease.cluster_id,
            holder=lease.holder,
            epoch=lease.epoch,
            expires_at__gt=DatabaseNow(),
        )
        .first()
    )
    if held is None:
        raise LeaseLost(f"cluster {lease.cluster_id}: lease #{lease.epoch} of {lease.holder} is not held")
    return held


@contextmanager
def collector_lease_fenced(*, lease: LeaseToken | None) -> Iterator[None]:
    """One transaction for the writes inside, refused whole (LeaseLost) unless `lease` still holds
    the cluster; None leaves them unfenced. Keep cluster requests out of it: it holds the lease row."""
    with transaction.atomic():
        if lease is not None:
            collector_lease_fence(lease=lease)
        yield


@transaction.atomic
def collector_replica_heartbeat(*, holder: str, seconds: float | None = None) -> int:
    """Say that this replica is alive for another `seconds`, forget replicas that stopped saying
    so, and return how many are alive (this one included): the fair share is clusters / that."""
    expiry = _after(seconds or lease_seconds())
    if not CollectorReplica.objects.filter(holder=holder).update(expires_at=expiry):
        CollectorReplica.objects.create(holder=holder, started_at=DatabaseNow(), expires_at=expiry)
    CollectorReplica.objects.filter(expires_at__lte=DatabaseNow()).exclude(holder=holder).delete()
    return CollectorReplica.objects.count()


def collector_replica_leave(*, holder: str) -> None:
    CollectorReplica.objects.filter(holder=holder).delete()


def collector_leases_free(*, cluster_ids: list[int]) -> set[int]:
    """Which of these clusters' leases nobody holds now (no row yet, released, or expired)."""
    known = CollectorLease.objects.filter(cluster_id__in=cluster_ids)
    held = set(known.exclude(_free()).values_list("cluster_id", flat=True))
    return set(cluster_ids) - held
