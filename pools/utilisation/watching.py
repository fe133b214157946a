"""What the collector's watch threads share: the health of the caches they read, and the loop that
publishes what the caches hold whenever one changed (at most every DEBOUNCE seconds) and at least
every heartbeat.

Three threads run per cluster (pools.utilisation.collector: the figures; workloads: the diagnosis;
queue_watch: Kueue's queues), each writing its own tables, each fenced by the cluster's lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection

from pools.kube.watch import Backoff, CacheStatus, ResourceCache, Source
from pools.models import CollectorState
from pools.utilisation.leases import LeaseLost

logger = logging.getLogger(__name__)

# Changes arriving together are published together; a change shows within this plus a page's poll.
DEBOUNCE = 0.5


def watch_cache(
    source: Source,
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    on_change: Callable[[], None],
    backoff_max: float,
    watch_timeout: int,
) -> ResourceCache:
    """A list+watch cache as every watch of the collector keeps them: a change wakes `on_change`,
    reconnections back off up to `backoff_max` seconds."""
    return ResourceCache(
        source,
        transform=transform,
        on_change=on_change,
        backoff=Backoff(maximum=backoff_max),
        watch_timeout=watch_timeout,
    )


@dataclass(frozen=True)
class CachesHealth:
    """How current a set of watch caches is, in the words the collector's tables use."""

    state: str  # a CollectorState
    # While every watch is healthy the data is current; otherwise it is as of the last answer.
    observed_at: datetime | None
    stale_since: datetime | None
    last_error: str


def caches_health(statuses: Sequence[CacheStatus], now: datetime) -> CachesHealth:
    if any(s.stale for s in statuses):
        state = CollectorState.STALE
    elif all(s.synced for s in statuses):
        state = CollectorState.LIVE
    else:
        state = CollectorState.SYNCING
    contacts = [s.last_contact for s in statuses if s.last_contact]
    stale_since = [s.stale_since for s in statuses if s.stale_since]
    return CachesHealth(
        state=state,
        observed_at=now if state == CollectorState.LIVE else max(contacts, default=None),
        stale_since=min(stale_since) if stale_since else None,
        last_error="; ".join(sorted({s.last_error for s in statuses if s.last_error})),
    )


def publish_loop(
    *,
    what: str,
    publish: Callable[[], None],
    changed: threading.Event,
    stop: threading.Event,
    wait: Callable[[], float],
    on_fenced: Callable[[], None] | None = None,
    on_error: Callable[[], None] | None = None,
) -> None:
    """Run `publish` after every change and at least every `wait()` seconds until `stop` is set.

    A refused write (LeaseLost: another replica holds the cluster now) ends the loop and tells
    `on_fenced`, whose supervisor then stops every watch of the cluster. Any other failure is logged
    and retried next round: neither the database restarting nor one odd object may end a watch, and
    one that stays broken shows as stale or silent on the pages."""
    try:
        while not stop.is_set():
            changed.wait(wait())
            changed.clear()
            if stop.is_set():
                break
            started = time.monotonic()
            # At most one publish every DEBOUNCE seconds, counted from its start: one that took
            # longer (thousands of nodes) is followed at once by the changes that came meanwhile.
            # A failed one waits the whole DEBOUNCE: a broken database is not hammered.
            pause = DEBOUNCE
            try:
                publish()
                pause = max(0.0, DEBOUNCE - (time.monotonic() - started))
            except LeaseLost:
                logger.warning("%s: lease lost, no longer writing", what)
                if on_fenced is not None:
                    on_fenced()
                break
            except Exception:
                logger.exception("%s: computing or writing failed", what)
                if on_error is not None:
                    on_error()
            stop.wait(pause)
    finally:
        connection.close()
