"""Reads of an elastic pool's autoscaling for the pool page: its node groups and the autoscaler's
state (from the collector's inventory), its warm headroom on the cluster, its node bring-up times,
and the warm-pool sizing advice.

Every signed-in user who may see the pool page sees these pool-level figures (like the utilisation
figures beside them); nothing here is about one team.

The warm-pool advice (`warm_pool_advice`, pure) sizes the headroom that would have kept queue wait
under the pool's target from what the portal measured:

    T  = time to node, p95 over the pool's last 20 new nodes (autoscaler request -> Ready with GPUs)
    W  = the pool's queue-wait target (NodePool.queue_wait_target_seconds)
    L  = model load time, p95 of its serving deployments (creation -> all replicas Ready)
    r  = new interactive GPU pods per hour, the peak 15-minute rate of the last 7 days
    g  = GPUs per new pod (GPUs arriving / pods arriving over the same samples)

    If T <= W, a new node comes up within the target: no headroom is needed for queue wait.
    Otherwise a pod that finds no warm GPU waits T, and warm GPUs used up are back only after T (the
    replacement node): the headroom must cover the pods that arrive within T. Arrivals are Poisson
    with mean n = r x T / 3600; k = the smallest count with P(N <= k) >= 99%, at least 1:

        H = ceil(k x g), costing H x the accelerator's hourly cost.

    L does not change queue wait, but a cold pod serves only after T + L and a warm one after L; the
    page says when L alone exceeds W (the design document's failure mode "model loading takes longer
    than the user-facing SLO": no warm node helps then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Max

from pools.kube.nodegroups import NodeGroup, bringup_percentile, groups_for, groups_of
from pools.models import (
    AutoscalerState,
    ClusterInventory,
    NodeBringUp,
    NodePool,
    PoolClass,
    PoolSnapshot,
    PoolUtilisation,
    WarmHeadroom,
)
from quotas.models import ServingDeployment

ADVICE_QUANTILE = 0.99
ADVICE_HISTORY = timedelta(days=7)
BRINGUPS = 20


def poisson_quantile(mean: float, quantile: float = ADVICE_QUANTILE) -> int:
    """Smallest k with P(N <= k) >= quantile for N ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    k, term = 0, math.exp(-mean)
    total = term
    while total < quantile and k < 10_000:
        k += 1
        term *= mean / k
        total += term
    return k


@dataclass(frozen=True)
class Advice:
    target_seconds: int
    bringup_p95: float | None
    load_p95: float | None
    arrivals_per_hour: float
    gpus_per_pod: float
    recommended: int | None  # None: not enough measured yet
    reason: str
    hourly_cost: Decimal
    configured: int
    configured_cost: Decimal
    load_exceeds_target: bool = False
    expected_arrivals: float = 0.0
    covered_arrivals: int = 0


def warm_pool_advice(
    *,
    target_seconds: int,
    bringups: list[float],
    loads: list[float],
    arrivals_per_hour: float,
    gpus_per_hour: float,
    unit_cost: Decimal,
    configured: int,
) -> Advice:
    """The headroom that would have kept queue wait under `target_seconds` (module docstring)."""
    bringup = bringup_percentile(bringups) if bringups else None
    load = bringup_percentile(loads) if loads else None
    per_pod = gpus_per_hour / arrivals_per_hour if arrivals_per_hour > 0 else 1.0
    configured_cost = (unit_cost * configured).quantize(Decimal("0.01"))
    common = {
        "target_seconds": target_seconds,
        "bringup_p95": bringup,
        "load_p95": load,
        "arrivals_per_hour": arrivals_per_hour,
        "gpus_per_pod": per_pod,
        "configured": configured,
        "configured_cost": configured_cost,
        "load_exceeds_target": load is not None and load > target_seconds,
    }
    if bringup is None:
        return Advice(
            recommended=None,
            reason="No node of this pool has been brought up yet: the time to node is not known.",
            hourly_cost=Decimal("0"),
            **common,
        )
    if bringup <= target_seconds:
        return Advice(
            recommended=0,
            reason=f"A new node is Ready within {bringup:.0f}s, inside the {target_seconds}s target.",
            hourly_cost=Decimal("0"),
            **common,
        )
    mean = arrivals_per_hour * bringup / 3600
    covered = max(1, poisson_quantile(mean))
    recommended = math.ceil(covered * per_pod)
    return Advice(
        recommended=recommended,
        reason=(
            f"A node takes {bringup:.0f}s, over the {target_seconds}s target: warm GPUs must cover the "
            f"{covered} pod(s) that arrive within {bringup:.0f}s with 99% probability "
            f"({mean:.2f} expected at {arrivals_per_hour:.1f}/h)."
        ),
        hourly_cost=(unit_cost * recommended).quantize(Decimal("0.01")),
        expected_arrivals=mean,
        covered_arrivals=covered,
        **common,
    )


@dataclass
class GroupRow:
    group: NodeGroup
    nodes: int | None
    nodes_ready: int | None
    provisioning: int
    capacity: int | None
    units_per_node: int


@dataclass
class PoolElastic:
    pool: NodePool
    groups: list[GroupRow] = field(default_factory=list)
    autoscaler_state: str = AutoscalerState.UNKNOWN
    autoscaler_message: str = ""
    autoscaler_since: datetime | None = None
    groups_error: str = ""
    inventory_changed_at: datetime | None = None
    warm: WarmHeadroom | None = None
    bringups: list[NodeBringUp] = field(default_factory=list)
    advice: Advice | None = None

    @property
    def elastic(self) -> bool:
        return bool(self.groups) or self.pool.elastic

    @property
    def autoscaling_available(self) -> bool:
        return self.autoscaler_state != AutoscalerState.UNAVAILABLE

    @property
    def capacity_from_groups(self) -> int | None:
        known = [g.capacity for g in self.groups if g.capacity is not None]
        return sum(known) if known else None

    @property
    def warm_conditions(self) -> list[dict[str, Any]]:
        return self.warm.conditions if self.warm is not None else []


def _peak_rates(pool: NodePool, live: PoolUtilisation | None, now: datetime) -> tuple[float, float]:
    """(pods/hour, GPUs/hour): the peak 15-minute arrival rate in the history, or the live one."""
    rows = PoolSnapshot.objects.filter(pool=pool, at__gte=now - ADVICE_HISTORY).aggregate(
        pods=Max("gpu_pod_arrivals_per_hour"), gpus=Max("gpu_arrivals_per_hour")
    )
    pods = max(rows["pods"] or 0.0, live.gpu_pod_arrivals_per_hour if live else 0.0)
    gpus = max(rows["gpus"] or 0.0, live.gpu_arrivals_per_hour if live else 0.0)
    return pods, gpus


def pool_elastic_get(
    *, pool: NodePool, live: PoolUtilisation | None, inventory: ClusterInventory | None, now: datetime
) -> PoolElastic:
    """The pool's autoscaling and warm headroom, for its page. `inventory` is the cluster's, read
    with the pool (selectors.pool_detail_get): its node groups only, as `node_groups`; the document
    also lists every node, for the approval pre-flight."""
    view = PoolElastic(pool=pool)
    if inventory is not None:
        resource = pool.accelerator.resource_name
        document = {"node_groups": inventory.node_groups or []}
        entries = {g["name"]: g for g in document["node_groups"]}
        for group in groups_for(groups_of(document), pool.node_selector):
            entry = entries.get(group.name, {})
            view.groups.append(
                GroupRow(
                    group=group,
                    nodes=entry.get("nodes"),
                    nodes_ready=entry.get("nodes_ready"),
                    provisioning=entry.get("provisioning") or 0,
                    capacity=group.capacity(resource),
                    units_per_node=group.units_per_node(resource),
                )
            )
        view.autoscaler_state = inventory.autoscaler_state
        view.autoscaler_message = inventory.autoscaler_message
        view.autoscaler_since = inventory.autoscaler_since
        view.groups_error = inventory.node_groups_error
        view.inventory_changed_at = inventory.changed_at
    if not view.elastic:
        return view
    view.warm = WarmHeadroom.objects.filter(pool=pool).first()
    names = [g.group.name for g in view.groups] or list(pool.node_groups)
    view.bringups = list(
        NodeBringUp.objects.filter(cluster_id=pool.cluster_id, node_group__in=names)[:BRINGUPS]
    )
    if pool.pool_class == PoolClass.INTERACTIVE:
        loads = list(
            ServingDeployment.objects.filter(grant__pool=pool, load_seconds__isnull=False)
            .order_by("-ready_at")
            .values_list("load_seconds", flat=True)[:BRINGUPS]
        )
        pods, gpus = _peak_rates(pool, live, now)
        view.advice = warm_pool_advice(
            target_seconds=pool.queue_wait_target_seconds,
            bringups=[b.seconds for b in view.bringups],
            loads=[float(x) for x in loads],
            arrivals_per_hour=pods,
            gpus_per_hour=gpus,
            unit_cost=pool.accelerator.hourly_cost,
            configured=pool.headroom_gpus,
        )
    return view
