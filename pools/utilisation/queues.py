"""Queue figures of grants that queue through Kueue, computed from Kueue's own objects.

Pure functions over ClusterQueue and Workload dicts as the apiserver serves them (kueue.x-k8s.io
v1beta2, camelCase JSON), plain descriptions of the portal's queued grants and the admission times
the collector recorded. No database and no client: the collector's queue watch
(pools.utilisation.queue_watch) feeds them from its watches, the tests from hand-made objects.

Definitions (docs/queueing.md explains them for users):
- A Workload is *admitted* while its Admitted condition is True, *finished* once Finished is True,
  *pending* otherwise (an inactive one, `spec.active: false`, is neither). It is queued since its
  creation, or since its last eviction (a preemption puts it back in the queue).
- *Position*: Kueue orders a ClusterQueue's pending Workloads by priority (higher first), then by
  creation time (older first; a preempted Workload keeps its place); the position is the place in
  that order, 1 first. Under
  BestEffortFIFO a later, smaller Workload may start before an earlier one that does not fit yet,
  so the position is the order Kueue tries them in, not a promise.
- *Estimated start* = now + position / rate, where rate = admissions into that ClusterQueue during
  the last RATE_WINDOW divided by the time since the first of them (at least MIN_RATE_SPAN). No
  admission in the window: no estimate.
- GPUs *used* and *borrowed* are Kueue's (`status.flavorsUsage`, total and beyond nominal). GPUs
  *lent* are apportioned: a cohort's borrowed GPUs come out of its members' idle nominal quota
  (nominal - used, within the lending limit); each member is said to lend its share of that idle
  quota, in proportion, since Kueue does not say whose idle quota a borrower uses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pools.kube.objects import condition_of, parse_time, pod_gpu_requests, quantity

Json = dict[str, Any]

RATE_WINDOW = timedelta(minutes=30)
MIN_RATE_SPAN = timedelta(minutes=1)
# Workloads a queue keeps by name for its page (positions are computed for all of them).
LISTED_WORKLOADS = 200


class WorkloadState:
    ADMITTED = "admitted"
    PENDING = "pending"
    FINISHED = "finished"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class QueueGrant:
    """A grant that queues: what the figures need from its row."""

    namespace: str
    cluster_queue: str
    local_queue: str
    resource: str  # the GPU unit of its pool: nvidia.com/gpu or nvidia.com/mig-<profile>
    grant_id: int | None = None
    team_id: int | None = None
    team: str = ""
    pool_id: int | None = None


@dataclass
class WorkloadRow:
    namespace: str
    name: str
    uid: str
    job: str
    state: str
    gpus: int
    priority: int
    queued_at: str | None
    waited_seconds: float
    created_at: str = ""  # Kueue's queue order: priority, then creation (evictions keep their place)
    position: int | None = None
    eta: str | None = None
    admitted_at: str | None = None
    # Kueue's own words: why it waits (QuotaReserved False), or why it was evicted.
    message: str = ""


@dataclass(frozen=True)
class Admission:
    """An admission seen in a Workload's status, for the collector to record once."""

    uid: str
    namespace: str
    name: str
    cluster_queue: str
    admitted_at: datetime
    queued_at: datetime
    gpus: int


@dataclass
class QueueFigures:
    name: str
    namespace: str = ""
    grant_id: int | None = None
    team_id: int | None = None
    pool_id: int | None = None
    cohort: str = ""
    active: bool = False
    active_reason: str = ""
    active_message: str = ""
    nominal_gpus: int = 0
    borrowing_limit_gpus: int | None = None
    lending_limit_gpus: int | None = None
    used_gpus: int = 0
    borrowed_gpus: int = 0
    lent_gpus: int = 0
    recent_admissions: int = 0
    admission_rate_per_hour: float | None = None
    workloads: list[WorkloadRow] = field(default_factory=list)

    @property
    def admitted_workloads(self) -> int:
        return sum(1 for w in self.workloads if w.state == WorkloadState.ADMITTED)

    @property
    def pending_workloads(self) -> int:
        return sum(1 for w in self.workloads if w.state == WorkloadState.PENDING)

    @property
    def oldest_pending_seconds(self) -> float:
        waits = [w.waited_seconds for w in self.workloads if w.state == WorkloadState.PENDING]
        return max(waits, default=0.0)

    @property
    def idle_lendable_gpus(self) -> int:
        idle = max(0, self.nominal_gpus - self.used_gpus)
        return idle if self.lending_limit_gpus is None else min(idle, self.lending_limit_gpus)


@dataclass
class QueueSnapshot:
    queues: dict[str, QueueFigures]
    admissions: list[Admission]


# ----------------------------------------------------------------------------------------------
# Reading Kueue's objects


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _true(obj: Json, kind: str) -> bool:
    condition = condition_of(obj, kind)
    return condition is not None and condition.get("status") == "True"


def _resource_entries(cluster_queue: Json, resource: str) -> list[Json]:
    spec = cluster_queue.get("spec") or {}
    return [
        entry
        for group in spec.get("resourceGroups") or []
        for flavor in group.get("flavors") or []
        for entry in flavor.get("resources") or []
        if entry.get("name") == resource
    ]


def _limit(entries: list[Json], key: str) -> int | None:
    values = [e[key] for e in entries if e.get(key) is not None]
    return int(sum(quantity(v) for v in values)) if values else None


def _usage(cluster_queue: Json, resource: str) -> tuple[int, int]:
    total = borrowed = 0
    for flavor in (cluster_queue.get("status") or {}).get("flavorsUsage") or []:
        for entry in flavor.get("resources") or []:
            if entry.get("name") == resource:
                total += int(quantity(entry.get("total", "0")))
                borrowed += int(quantity(entry.get("borrowed", "0")))
    return total, borrowed


def workload_gpus(workload: Json, resource: str) -> int:
    """GPUs a Workload reserves (admitted: Kueue's assignment) or asks for (count x per pod)."""
    admission = (workload.get("status") or {}).get("admission") or {}
    assigned = [a.get("resourceUsage", {}).get(resource) for a in admission.get("podSetAssignments") or []]
    if any(value is not None for value in assigned):
        return int(sum(quantity(v) for v in assigned if v is not None))
    total = 0
    for pod_set in (workload.get("spec") or {}).get("podSets") or []:
        per_pod = pod_gpu_requests({"spec": (pod_set.get("template") or {}).get("spec") or {}})
        total += int(pod_set.get("count") or 1) * per_pod.get(resource, 0)
    return total


def workload_state(workload: Json) -> str:
    if _true(workload, "Finished"):
        return WorkloadState.FINISHED
    if _true(workload, "Admitted"):
        return WorkloadState.ADMITTED
    if (workload.get("spec") or {}).get("active") is False:
        return WorkloadState.INACTIVE
    return WorkloadState.PENDING


def workload_queued_at(workload: Json) -> datetime | None:
    """Its creation, or its last eviction when that is later: a preempted Workload queues again."""
    created = parse_time((workload.get("metadata") or {}).get("creationTimestamp"))
    evicted = condition_of(workload, "Evicted")
    if evicted is not None and evicted.get("status") == "True":
        when = parse_time(evicted.get("lastTransitionTime"))
        if when is not None and (created is None or when > created):
            return when
    return created


def _admitted_at(workload: Json) -> datetime | None:
    condition = condition_of(workload, "Admitted")
    if condition is None or condition.get("status") != "True":
        return None
    return parse_time(condition.get("lastTransitionTime"))


def _message(workload: Json, state: str) -> str:
    if state == WorkloadState.PENDING:
        for kind in ("QuotaReserved", "Evicted"):
            condition = condition_of(workload, kind)
            if condition is not None and condition.get("message"):
                if kind == "QuotaReserved" and condition.get("status") == "True":
                    continue
                return str(condition["message"])
        return "Waiting for Kueue to consider it."
    if state == WorkloadState.INACTIVE:
        return "Deactivated (spec.active is false): Kueue will not admit it."
    return ""


def _job_name(workload: Json) -> str:
    for ref in (workload.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job":
            return str(ref.get("name") or "")
    return ""


def admission_rate(admitted: Sequence[datetime], now: datetime) -> float | None:
    """Admissions per second over the recent window (see the module docstring), None without any."""
    recent = [t for t in admitted if now - RATE_WINDOW <= t <= now]
    if not recent:
        return None
    span = max(now - min(recent), MIN_RATE_SPAN)
    return len(recent) / span.total_seconds()


def _apportion(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split `total` (at most the sum of weights) into whole parts proportional to `weights`,
    largest remainders first, ties by name: the parts always add up."""
    pool = sum(weights.values())
    total = min(total, pool)
    if pool <= 0 or total <= 0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / pool for k, w in weights.items()}
    parts = {k: int(v) for k, v in exact.items()}
    rest = total - sum(parts.values())
    for key in sorted(weights, key=lambda k: (-(exact[k] - parts[k]), k))[:rest]:
        parts[key] += 1
    return parts


# ----------------------------------------------------------------------------------------------
# The figures


def compute_queues(
    cluster_queues: Iterable[Json],
    workloads: Iterable[Json],
    grants: Mapping[str, QueueGrant],
    admitted_recently: Mapping[str, Iterable[tuple[str, datetime]]],
    now: datetime,
) -> QueueSnapshot:
    """Figures of every portal ClusterQueue. `grants` maps namespace -> its queued grant;
    `admitted_recently` maps ClusterQueue name -> the (Workload uid, admission time) pairs recorded
    in the rate window; admissions seen now count for the rate even before they are recorded."""
    by_queue = {g.cluster_queue: g for g in grants.values()}
    queues: dict[str, QueueFigures] = {}
    for cq in cluster_queues:
        name = (cq.get("metadata") or {}).get("name", "")
        grant = by_queue.get(name)
        resource = grant.resource if grant is not None else _gpu_resource_of(cq)
        entries = _resource_entries(cq, resource)
        used, borrowed = _usage(cq, resource)
        active = condition_of(cq, "Active") or {}
        queues[name] = QueueFigures(
            name=name,
            namespace=grant.namespace if grant else "",
            grant_id=grant.grant_id if grant else None,
            team_id=grant.team_id if grant else None,
            pool_id=grant.pool_id if grant else None,
            cohort=str((cq.get("spec") or {}).get("cohortName") or ""),
            active=active.get("status") == "True",
            active_reason=str(active.get("reason") or ""),
            active_message=str(active.get("message") or ""),
            nominal_gpus=_limit(entries, "nominalQuota") or 0,
            borrowing_limit_gpus=_limit(entries, "borrowingLimit"),
            lending_limit_gpus=_limit(entries, "lendingLimit"),
            used_gpus=used,
            borrowed_gpus=borrowed,
        )

    admissions: list[Admission] = []
    for workload in workloads:
        meta = workload.get("metadata") or {}
        namespace = meta.get("namespace", "")
        state = workload_state(workload)
        admitted_to = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue")
        grant = grants.get(namespace)
        queue_name = admitted_to or (grant.cluster_queue if grant else None)
        if queue_name not in queues:
            continue  # not in a portal queue
        figures = queues[queue_name]
        resource = grant.resource if grant else by_queue.get(queue_name, _NO_GRANT).resource
        queued_at = workload_queued_at(workload)
        # A finished Workload was admitted too: its admission counts even if it ran between two looks.
        admitted_at = (
            _admitted_at(workload) if state in (WorkloadState.ADMITTED, WorkloadState.FINISHED) else None
        )
        gpus = workload_gpus(workload, resource)
        end = admitted_at if admitted_at is not None else now
        figures.workloads.append(
            WorkloadRow(
                namespace=namespace,
                name=meta.get("name", ""),
                uid=meta.get("uid", ""),
                job=_job_name(workload),
                state=state,
                gpus=gpus,
                priority=int((workload.get("spec") or {}).get("priority") or 0),
                queued_at=_iso(queued_at),
                created_at=str(meta.get("creationTimestamp") or ""),
                waited_seconds=max(0.0, (end - queued_at).total_seconds()) if queued_at else 0.0,
                admitted_at=_iso(admitted_at),
                message=_message(workload, state),
            )
        )
        if admitted_at is not None and queued_at is not None and meta.get("uid"):
            admissions.append(
                Admission(
                    uid=meta["uid"],
                    namespace=namespace,
                    name=meta.get("name", ""),
                    cluster_queue=queue_name,
                    admitted_at=admitted_at,
                    queued_at=min(queued_at, admitted_at),
                    gpus=gpus,
                )
            )

    seen: dict[str, set[tuple[str, datetime]]] = defaultdict(set)
    for name, pairs in admitted_recently.items():
        seen[name].update(pairs)
    for admission in admissions:
        seen[admission.cluster_queue].add((admission.uid, admission.admitted_at))
    for figures in queues.values():
        _order(figures, [moment for _, moment in seen.get(figures.name, ())], now)
    _lend(queues.values())
    return QueueSnapshot(queues=queues, admissions=admissions)


_NO_GRANT = QueueGrant(namespace="", cluster_queue="", local_queue="", resource="nvidia.com/gpu")


def _gpu_resource_of(cluster_queue: Json) -> str:
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        for name in group.get("coveredResources") or []:
            if str(name).startswith("nvidia.com/"):
                return str(name)
    return "nvidia.com/gpu"


def _order(figures: QueueFigures, admitted: Sequence[datetime], now: datetime) -> None:
    """Positions and estimated starts of the pending Workloads; list pending first, then admitted."""
    pending = sorted(
        (w for w in figures.workloads if w.state == WorkloadState.PENDING),
        key=lambda w: (-w.priority, parse_time(w.created_at) or now, w.name),
    )
    rate = admission_rate(admitted, now)
    figures.recent_admissions = sum(1 for t in admitted if now - RATE_WINDOW <= t <= now)
    figures.admission_rate_per_hour = rate * 3600 if rate is not None else None
    for position, row in enumerate(pending, start=1):
        row.position = position
        if rate:
            row.eta = _iso(now + timedelta(seconds=position / rate))
    others = sorted(
        (w for w in figures.workloads if w.state != WorkloadState.PENDING),
        key=lambda w: (w.state != WorkloadState.ADMITTED, w.admitted_at or "", w.name),
    )
    figures.workloads = [*pending, *others]


def _lend(queues: Iterable[QueueFigures]) -> None:
    cohorts: dict[str, list[QueueFigures]] = defaultdict(list)
    for figures in queues:
        if figures.cohort:
            cohorts[figures.cohort].append(figures)
    for members in cohorts.values():
        borrowed = sum(m.borrowed_gpus for m in members)
        parts = _apportion(borrowed, {m.name: m.idle_lendable_gpus for m in members})
        for member in members:
            member.lent_gpus = parts.get(member.name, 0)


def listed(rows: list[WorkloadRow]) -> list[dict[str, Any]]:
    """The rows a queue's page shows: every pending one first, up to LISTED_WORKLOADS in all."""
    return [
        {
            "namespace": r.namespace,
            "name": r.name,
            "job": r.job,
            "state": r.state,
            "gpus": r.gpus,
            "priority": r.priority,
            "position": r.position,
            "queued_at": r.queued_at,
            "waited_seconds": round(r.waited_seconds, 1),
            "eta": r.eta,
            "admitted_at": r.admitted_at,
            "message": r.message[:500],
        }
        for r in rows[:LISTED_WORKLOADS]
    ]
