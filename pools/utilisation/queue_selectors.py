"""Reads of the queue figures (pools.models QueueStatus, WorkloadAdmission, QueueSnapshot,
KueueStatus) for the collector's queue watch, the grant, team and pool pages, the API and /metrics.

Visibility follows pools.utilisation.selectors: pool totals (a cohort's nominal, used, borrowed and
lent GPUs, its pending Workloads) are for every signed-in user, like the pool figures; what is about
one team (its queues, their Workloads by name, its share of the cohort) is for that team's members,
and everything for platform admins and auditors.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pools.models import KueueStatus, NodePool, QueueSnapshot, QueueStatus, WorkloadAdmission
from pools.utilisation.queues import RATE_WINDOW, QueueGrant
from pools.utilisation.selectors import tier_ranges
from portal.models import User
from quotas.manifests import LOCAL_QUEUE_NAME
from quotas.models import Grant
from quotas.selectors import teams_visible_to

# ----------------------------------------------------------------------------------------------
# For the collector


def collector_queue_grants(*, cluster_id: int) -> dict[str, QueueGrant]:
    """Namespace -> queued grant, for every grant of the cluster that queues (ended ones too: their
    pending Workloads still show, and say why they wait)."""
    rows = Grant.objects.filter(pool__cluster_id=cluster_id, admission="kueue").values_list(
        "namespace", "pk", "team_id", "team__slug", "pool_id", "pool__accelerator__mig_profile"
    )
    return {
        namespace: QueueGrant(
            namespace=namespace,
            cluster_queue=namespace,
            local_queue=LOCAL_QUEUE_NAME,
            resource=f"nvidia.com/mig-{mig}" if mig else "nvidia.com/gpu",
            grant_id=pk,
            team_id=team_id,
            team=slug,
            pool_id=pool_id,
        )
        for namespace, pk, team_id, slug, pool_id, mig in rows
    }


def collector_probe_namespace(*, cluster_id: int) -> str | None:
    """A namespace of an active queued grant of the cluster, where a dry-run Job tells whether
    Kueue's webhook answers; None when there is none (then nothing of the portal depends on it)."""
    return (
        Grant.objects.filter(
            pool__cluster_id=cluster_id,
            admission="kueue",
            request__state="active",
            namespace_deleted_at__isnull=True,
        )
        .order_by("pk")
        .values_list("namespace", flat=True)
        .first()
    )


def collector_recent_admissions(*, cluster_id: int, now: datetime) -> dict[str, list[tuple[str, datetime]]]:
    result: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for queue, uid, at in WorkloadAdmission.objects.filter(
        cluster_id=cluster_id, admitted_at__gte=now - RATE_WINDOW
    ).values_list("cluster_queue", "uid", "admitted_at"):
        result[queue].append((uid, at))
    return result


def collector_known_admissions(*, cluster_id: int, since: datetime) -> set[tuple[str, datetime]]:
    return set(
        WorkloadAdmission.objects.filter(cluster_id=cluster_id, admitted_at__gte=since).values_list(
            "uid", "admitted_at"
        )
    )


# ----------------------------------------------------------------------------------------------
# The pool page (the grant and team pages read through quotas.selectors)


@dataclass
class CohortTeam:
    team: str
    queues: int = 0
    nominal: int = 0
    used: int = 0
    borrowed: int = 0
    lent: int = 0
    pending: int = 0
    admitted: int = 0


@dataclass
class Cohort:
    """A pool's cohort: its totals for everyone, the share of each team the user may see."""

    pool: NodePool
    computed_at: datetime | None = None
    queues: int = 0
    nominal: int = 0
    used: int = 0
    borrowed: int = 0
    lent: int = 0
    pending: int = 0
    admitted: int = 0
    teams: list[CohortTeam] = field(default_factory=list)
    hidden_teams: int = 0

    @property
    def idle(self) -> int:
        return max(0, self.nominal - self.used)


def pool_cohort_get(*, user: User, pool: NodePool) -> Cohort:
    rows = list(QueueStatus.objects.filter(pool=pool).select_related("team"))
    visible = set(teams_visible_to(user=user).values_list("pk", flat=True))
    cohort = Cohort(pool=pool)
    by_team: dict[str, CohortTeam] = {}
    hidden: set[int | None] = set()
    for row in rows:
        cohort.computed_at = max(cohort.computed_at or row.computed_at, row.computed_at)
        cohort.queues += 1
        cohort.nominal += row.nominal_gpus
        cohort.used += row.used_gpus
        cohort.borrowed += row.borrowed_gpus
        cohort.lent += row.lent_gpus
        cohort.pending += row.pending_workloads
        cohort.admitted += row.admitted_workloads
        if row.team_id not in visible and not user.sees_everything:
            hidden.add(row.team_id)
            continue
        name = row.team.slug if row.team else ""
        share = by_team.setdefault(name, CohortTeam(team=name))
        share.queues += 1
        share.nominal += row.nominal_gpus
        share.used += row.used_gpus
        share.borrowed += row.borrowed_gpus
        share.lent += row.lent_gpus
        share.pending += row.pending_workloads
        share.admitted += row.admitted_workloads
    cohort.teams = sorted(by_team.values(), key=lambda t: (t.team == "", t.team))
    cohort.hidden_teams = len(hidden)
    return cohort


def pool_queue_history(*, pool_id: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The pool's queue history summed over its teams, one point per sample time, finest tier first
    (as pools.utilisation.selectors.pool_history)."""
    points: dict[datetime, dict[str, Any]] = {}
    for resolution, lower, upper in tier_ranges(start, end, history=QueueSnapshot):
        for row in QueueSnapshot.objects.filter(
            pool_id=pool_id, resolution=resolution, at__gte=lower, at__lt=upper
        ):
            point = points.setdefault(
                row.at,
                {
                    "at": row.at,
                    "seconds": row.seconds,
                    "pending": 0.0,
                    "borrowed": 0.0,
                    "used": 0.0,
                    "wait": 0.0,
                    "admissions": 0.0,
                    "admission_wait": 0.0,
                },
            )
            point["pending"] += row.pending_workloads
            point["borrowed"] += row.borrowed_gpus
            point["used"] += row.used_gpus
            point["wait"] = max(point["wait"], row.pending_wait_max_seconds)
            point["admissions"] += row.admissions
            point["admission_wait"] += row.admission_wait_seconds
    return [points[at] for at in sorted(points)]


# ----------------------------------------------------------------------------------------------
# /metrics


@dataclass
class QueueMetricsData:
    queues: list[QueueStatus]
    kueue: list[KueueStatus]
    # (cluster queue id) -> (admissions, summed wait) over the last RATE_WINDOW
    waits: dict[tuple[int, str], tuple[int, float]]


def queue_metrics_data(*, now: datetime) -> QueueMetricsData:
    queues = list(QueueStatus.objects.filter(cluster__enabled=True).select_related("cluster", "pool", "team"))
    waits: dict[tuple[int, str], tuple[int, float]] = {}
    for row in WorkloadAdmission.objects.filter(admitted_at__gte=now - RATE_WINDOW).values_list(
        "cluster_id", "cluster_queue", "admitted_at", "queued_at"
    ):
        cluster_id, queue, admitted_at, queued_at = row
        count, total = waits.get((cluster_id, queue), (0, 0.0))
        waits[(cluster_id, queue)] = (count + 1, total + max(0.0, (admitted_at - queued_at).total_seconds()))
    return QueueMetricsData(
        queues=queues,
        kueue=list(KueueStatus.objects.filter(cluster__enabled=True).select_related("cluster")),
        waits=waits,
    )


def recent_admission_wait(*, queue: QueueStatus, now: datetime) -> float | None:
    """Mean admission wait of the queue's admissions in the rate window, None without any."""
    rows = WorkloadAdmission.objects.filter(
        cluster_id=queue.cluster_id, cluster_queue=queue.name, admitted_at__gte=now - RATE_WINDOW
    ).values_list("admitted_at", "queued_at")
    waits = [max(0.0, (a - q).total_seconds()) for a, q in rows]
    return sum(waits) / len(waits) if waits else None
