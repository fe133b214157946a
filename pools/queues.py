"""Worker queues: one slow cluster must not stall the others.

Tasks that talk to one cluster (grant and serving reconciles, inventory sync, policies apply) are
routed to that cluster's shard queue, `clusters-<cluster id mod N>`, with N =
PORTAL_CLUSTER_QUEUE_SHARDS; each shard queue is consumed by a worker pool of its own (the chart's
`worker-clusters-<i>` Deployments, docker-compose's `worker-clusters-<i>` services), so a cluster
that hangs every call until the time limit occupies only its shard's workers. Everything else, the
beat's periodic tasks and the sweeper included, stays on the default queue. With N = 0 (the
default, `make run`) every task goes to the default queue and one worker pool runs them all.

The router runs wherever a task is queued (web, worker, beat). Each app registers how to find the
cluster of its cluster-bound tasks from their arguments (`cluster_task_register`, at start-up),
so the pools core needs no knowledge of grants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "celery"  # Celery's task_default_queue, left as it is
SHARD_QUEUE_PREFIX = "clusters-"

# A cluster-bound task's arguments -> its cluster's id (None: no such object any more).
ClusterOf = Callable[..., int | None]

_cluster_tasks: dict[str, ClusterOf] = {}


def cluster_task_register(*, task: str, cluster_of: ClusterOf) -> None:
    """Declare `task` (its Celery name) cluster-bound; `cluster_of` is called with its arguments."""
    _cluster_tasks[task] = cluster_of


def cluster_tasks() -> frozenset[str]:
    return frozenset(_cluster_tasks)


def shard_count() -> int:
    return max(int(settings.PORTAL_CLUSTER_QUEUE_SHARDS), 0)


def cluster_queue(*, cluster_id: int) -> str:
    """The queue of the cluster's tasks: its shard's, or the default queue without shards."""
    shards = shard_count()
    return f"{SHARD_QUEUE_PREFIX}{cluster_id % shards}" if shards else DEFAULT_QUEUE


def shard_queues() -> list[str]:
    """Every shard queue; each needs a worker pool consuming it (`celery worker -Q clusters-<i>`)."""
    return [f"{SHARD_QUEUE_PREFIX}{i}" for i in range(shard_count())]


def route_task(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    task: Any = None,
    **kw: Any,
) -> dict[str, str] | None:
    """Celery router (CELERY_TASK_ROUTES): None leaves the task on the default queue."""
    cluster_of = _cluster_tasks.get(name)
    if cluster_of is None or not shard_count() or options.get("queue"):
        # Not cluster-bound, no shards, or queued somewhere on purpose (a retry keeps its queue).
        return None
    try:
        cluster_id = cluster_of(*(args or ()), **(kwargs or {}))
    except DatabaseError:
        # Queueing must not fail because of a lookup: the default workers run it all the same.
        logger.warning("routing %s: its cluster could not be read; default queue", name, exc_info=True)
        return None
    if cluster_id is None:
        return None  # the object is gone: the task finds nothing to do, wherever it runs
    return {"queue": cluster_queue(cluster_id=cluster_id)}
