"""The collector's view of a cluster's autoscaling: Karpenter NodePools and NodeClaims, node bring-up
times, the autoscaler's health, and the live inventory the approval pre-flight reads.

A NodeGroupWatch belongs to one ClusterCollector (pools.utilisation.collector registers it): its own
list+watch caches of NodePools and NodeClaims (a cluster without Karpenter answers 404, which only
means "no NodePools"), and a thread probing the autoscaler's health endpoint when the cluster names
one. At every publish of live figures it

- writes the cluster's inventory (ClusterInventory: nodes summarised, node groups), when it changed;
- records each node a NodeClaim brought up, with its time to node (NodeBringUp);
- fills in the elastic figures of each pool: nodes provisioning, bring-up times (last, p95), and the
  arrival rate of new GPU pods (for the warm-pool advice).

These rows are observations, not decisions: like the other collector writes they carry no audit event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from pools.kube.nodegroups import (
    CLUSTER_AUTOSCALER,
    KARPENTER,
    NodeGroup,
    bringup_percentile,
    claim_state,
    groups_for,
    groups_of,
    inventory_document,
)
from pools.kube.objects import (
    KARPENTER_API,
    NODECLAIM_PLURAL,
    NODEPOOL_PLURAL,
    condition_of,
)
from pools.kube.watch import ApiSource, ResourceCache
from pools.models import AutoscalerState, Cluster, ClusterInventory, NodeBringUp
from pools.services import instance_catalogue
from pools.utilisation.figures import ClusterFigures, PoolSpec
from pools.utilisation.leases import LeaseToken, collector_lease_fence
from pools.utilisation.watching import watch_cache

logger = logging.getLogger(__name__)

Json = dict[str, Any]

# How often the autoscaler's health endpoint is asked, and how long an answer may take.
HEALTH_INTERVAL = 5.0
HEALTH_TIMEOUT = 2.0
# Without a health endpoint: a pod that has waited this long for a node of an elastic pool, with no
# node being brought up for it and room under the group's limit, means the autoscaler is not acting.
REACTION_SECONDS = 30.0
# The arrival rate is counted over this trailing window (and over at least a minute after a start).
ARRIVAL_WINDOW = timedelta(minutes=15)
# Bring-up percentiles are over this many of a pool's newest nodes.
BRINGUPS_KEPT = 20


def trim_nodepool(nodepool: Json) -> Json:
    meta, spec = nodepool.get("metadata") or {}, nodepool.get("spec") or {}
    ready = condition_of(nodepool, "Ready")
    return {
        "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},
        "spec": {"template": spec.get("template") or {}, "limits": spec.get("limits") or {}},
        "status": {"conditions": [ready] if ready else []},
    }


def trim_nodeclaim(claim: Json) -> Json:
    meta, status = claim.get("metadata") or {}, claim.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": meta.get("labels") or {},
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "status": {
            "nodeName": status.get("nodeName"),
            "allocatable": status.get("allocatable") or {},
            "conditions": [
                c for c in status.get("conditions") or [] if c.get("type") in ("Launched", "Initialized")
            ],
        },
    }


# ----------------------------------------------------------------------------------------------
# The autoscaler's health endpoint


@dataclass(frozen=True)
class Health:
    ok: bool | None  # None: not asked yet
    message: str
    since: datetime | None


class HealthProbe:
    """Asks `url` every HEALTH_INTERVAL seconds on its own thread; 2xx is healthy."""

    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self.url = url
        self._on_change = on_change
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._health = Health(None, "", None)
        self._thread: threading.Thread | None = None
        # Straight to the cluster's endpoint: an HTTP proxy of the environment is not in its path.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def health(self) -> Health:
        with self._lock:
            return self._health

    def check(self) -> Health:
        try:
            with self._opener.open(self.url, timeout=HEALTH_TIMEOUT) as response:
                ok, message = 200 <= response.status < 300, f"{self.url} answered {response.status}"
        except urllib.error.HTTPError as exc:
            ok, message = False, f"{self.url} answered {exc.code}"
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            ok, message = False, f"{self.url} did not answer ({reason})"
        with self._lock:
            changed = self._health.ok != ok
            if changed or self._health.message != message:
                since = datetime.now(UTC) if changed else self._health.since
                self._health = Health(ok, message, since)
        if changed:
            self._on_change()
        return self.health

    def run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(HEALTH_INTERVAL)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"autoscaler health {self.url}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HEALTH_TIMEOUT + 1)


# ----------------------------------------------------------------------------------------------
# Writes (observations: no audit)


def _digest(document: Json) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


@transaction.atomic
def cluster_inventory_publish(
    *,
    cluster_id: int,
    document: Json | None,
    now: datetime,
    served: bool,
    error: str,
    autoscaler: tuple[str, str],
    lease: LeaseToken | None = None,
) -> bool:
    """Record the cluster's inventory `document` (None: keep the last one), whether it serves node
    groups, and the autoscaler's state; writes only what changed. True when anything was written.
    With `lease`, only while it holds the cluster (LeaseLost otherwise, and nothing is written)."""
    if lease is not None:
        collector_lease_fence(lease=lease)
    row = ClusterInventory.objects.select_for_update().filter(cluster_id=cluster_id).first()
    state, message = autoscaler
    if row is None:
        if document is None:
            return False
        ClusterInventory.objects.create(
            cluster_id=cluster_id,
            document=document,
            digest=_digest(document),
            changed_at=now,
            node_groups_served=served,
            node_groups_error=error,
            autoscaler_state=state,
            autoscaler_message=message,
            autoscaler_since=now,
        )
        return True
    fields = []
    if document is not None:
        digest = _digest(document)
        if digest != row.digest:
            row.document, row.digest, row.changed_at = document, digest, now
            fields += ["document", "digest", "changed_at"]
    if (row.node_groups_served, row.node_groups_error) != (served, error):
        row.node_groups_served, row.node_groups_error = served, error
        fields += ["node_groups_served", "node_groups_error"]
    if row.autoscaler_state != state:
        row.autoscaler_since = now
        fields.append("autoscaler_since")
    if (row.autoscaler_state, row.autoscaler_message) != (state, message):
        row.autoscaler_state, row.autoscaler_message = state, message
        fields += ["autoscaler_state", "autoscaler_message"]
    if fields:
        row.save(update_fields=fields)
    return bool(fields)


@transaction.atomic
def node_bringups_record(
    *, cluster_id: int, rows: Sequence[NodeBringUp], lease: LeaseToken | None = None
) -> None:
    """Record bring-ups; one already recorded (a collector restarted) is left as it is."""
    if lease is not None:
        collector_lease_fence(lease=lease)
    NodeBringUp.objects.bulk_create(rows, ignore_conflicts=True)


# ----------------------------------------------------------------------------------------------
# The watch


class NodeGroupWatch:
    """NodePools and NodeClaims of one cluster, its autoscaler's health, and the elastic figures."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        on_change: Callable[[], None],
        backoff_max: float,
        watch_timeout: int,
        lease: LeaseToken | None = None,
    ) -> None:
        self.cluster = cluster
        self._on_change = on_change
        # The collector's lease: these writes are fenced like its figures.
        self.lease = lease

        def cache(plural: str, transform: Callable[[Json], Json]) -> ResourceCache:
            return watch_cache(
                ApiSource(cluster, KARPENTER_API, plural),
                transform,
                on_change=on_change,
                backoff_max=max(backoff_max, 1.0),
                watch_timeout=watch_timeout,
            )

        self.nodepools = cache(NODEPOOL_PLURAL, trim_nodepool)
        self.nodeclaims = cache(NODECLAIM_PLURAL, trim_nodeclaim)
        self.caches = (self.nodepools, self.nodeclaims)
        self._probe: HealthProbe | None = None
        self._started = time.monotonic()
        self._seen_pods: dict[str, float] = {}
        self._arrivals: dict[int, deque[tuple[float, int, int]]] = defaultdict(deque)
        self._recorded: set[str] = set()
        self._bringups: dict[str, list[tuple[datetime, float]]] | None = None
        # The last inventory built, what it was built from, and what was last written.
        self._document: Json | None = None
        self._groups: list[NodeGroup] = []
        self._document_key: tuple[Any, ...] | None = None
        self._published: tuple[Any, ...] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for c in self.caches:
            c.start()
        self._configure_probe(self.cluster.autoscaler_health_url)

    def stop(self) -> None:
        for c in self.caches:
            c.stop()
        if self._probe is not None:
            self._probe.stop()

    def _configure_probe(self, url: str) -> None:
        if self._probe is not None and self._probe.url == url:
            return
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if url:
            self._probe = HealthProbe(url, self._on_change)
            self._probe.start()

    # -- state -----------------------------------------------------------------------------

    def groups_state(self) -> tuple[bool, bool, str]:
        """(ready, served, error): whether the node groups are known (listed at least once: a cluster
        without Karpenter lists none), whether the cluster serves NodePools, and why they could not be
        read lately (the last known ones are kept)."""
        status = self.nodepools.status()
        served = bool(self.nodepools.source.served)
        # A list that failed (forbidden, say) still leaves the nodes to judge by: ready, with the error.
        return status.synced or status.stale, served, status.last_error if status.stale else ""

    # -- one publish -----------------------------------------------------------------------

    def update(
        self,
        *,
        figures: ClusterFigures,
        pools: Sequence[PoolSpec],
        nodes: list[Json],
        now: datetime,
        nodes_version: str | None = None,
    ) -> None:
        """Called by the collector with live figures, before it writes them: writes the inventory
        and new bring-ups, and fills in the pools' elastic figures. The inventory is rebuilt only when
        the nodes (`nodes_version`, their cache's resourceVersion), node groups or declarations moved,
        and written only when something in it changed: pods churning cost it nothing."""
        fresh = Cluster.objects.filter(pk=self.cluster.pk).values(
            "autoscaler_health_url", "autoscaler_node_groups"
        )
        config = fresh.first() or {"autoscaler_health_url": "", "autoscaler_node_groups": {}}
        self._configure_probe(config["autoscaler_health_url"] or "")
        ready, served, error = self.groups_state()
        nodepools = self.nodepools.snapshot() if served else []
        claims = self.nodeclaims.snapshot() if served else []
        declared = (
            config["autoscaler_node_groups"] if isinstance(config["autoscaler_node_groups"], dict) else {}
        )
        key = (
            nodes_version,
            self.nodepools.status().resource_version,
            self.nodeclaims.status().resource_version,
            json.dumps(declared, sort_keys=True, default=str),
            served,
        )
        rebuilt = nodes_version is None or key != self._document_key or self._document is None
        if rebuilt:
            self._document = inventory_document(
                nodes=nodes,
                nodepools=nodepools,
                nodeclaims=claims,
                declared=declared,
                instance_catalogue=instance_catalogue(),
            )
            self._groups = groups_of(self._document)
            self._document_key = key
        groups = self._groups
        autoscaler = self._autoscaler(groups, figures, pools, claims, served=served)
        state = (ready, served, error, autoscaler)
        if rebuilt or state != self._published:
            cluster_inventory_publish(
                cluster_id=self.cluster.pk,
                document=self._document if ready else None,
                now=now,
                served=served,
                error=error,
                autoscaler=autoscaler,
                lease=self.lease,
            )
            self._published = state if ready else None
        self._record_bringups(claims)
        self._fill(figures, pools, groups, claims, now)

    def _autoscaler(
        self,
        groups: list[NodeGroup],
        figures: ClusterFigures,
        pools: Sequence[PoolSpec],
        claims: list[Json],
        *,
        served: bool,
    ) -> tuple[str, str]:
        if not groups and not served:
            return AutoscalerState.NONE, "The cluster has no Karpenter NodePools and no declared node groups."
        if self._probe is not None:
            health = self._probe.health
            if health.ok is None:
                return AutoscalerState.UNKNOWN, f"Asking {self._probe.url}..."
            if not health.ok:
                return AutoscalerState.UNAVAILABLE, f"The autoscaler's health endpoint: {health.message}."
        # Pods waiting for a node of an elastic pool while nothing is brought up for it.
        in_flight = {claim_state(c).nodepool for c in claims if claim_state(c).provisioning}
        for spec in pools:
            members = groups_for(groups, spec.node_selector)
            if not members or any(g.name in in_flight for g in members):
                continue
            pool = figures.pools.get(spec.id)
            if pool is None:
                continue
            waited = [
                p for p in pool.pending if p.wait_seconds > REACTION_SECONDS and p.reason != "SchedulingGated"
            ]
            room = any(
                (g.capacity(spec.resource) or 10**9) > pool.gpus_allocatable and g.ready is not False
                for g in members
            )
            if waited and room:
                return AutoscalerState.UNAVAILABLE, (
                    f"{len(waited)} pod(s) of pool {spec.name} have waited over {REACTION_SECONDS:.0f}s "
                    "for a node and no node is being brought up for them."
                )
        if self._probe is not None:
            return (
                AutoscalerState.AVAILABLE,
                f"The autoscaler's health endpoint: {self._probe.health.message}.",
            )
        return AutoscalerState.UNKNOWN, (
            "No health endpoint is configured for the autoscaler; pending pods are watched for nodes instead."
        )

    def _record_bringups(self, claims: list[Json]) -> None:
        rows = []
        for claim in claims:
            state = claim_state(claim)
            seconds = state.bringup_seconds
            if seconds is None or state.name in self._recorded or state.created_at is None:
                continue
            rows.append(
                NodeBringUp(
                    cluster_id=self.cluster.pk,
                    node_group=state.nodepool,
                    name=state.name,
                    instance_type=state.instance_type,
                    created_at=state.created_at,
                    ready_at=state.initialized_at,
                    seconds=seconds,
                )
            )
        if not rows:
            return
        node_bringups_record(cluster_id=self.cluster.pk, rows=rows, lease=self.lease)
        history = self._history()
        for row in rows:
            self._recorded.add(row.name)
            history[row.node_group].append((row.ready_at, row.seconds))
            history[row.node_group].sort()
            del history[row.node_group][:-BRINGUPS_KEPT]

    def _history(self) -> dict[str, list[tuple[datetime, float]]]:
        if self._bringups is None:
            self._bringups = defaultdict(list)
            for row in NodeBringUp.objects.filter(cluster_id=self.cluster.pk).order_by("-ready_at")[:2000]:
                kept = self._bringups[row.node_group]
                if len(kept) < BRINGUPS_KEPT:
                    kept.append((row.ready_at, row.seconds))
                self._recorded.add(row.name)
            for kept in self._bringups.values():
                kept.sort()
        return self._bringups

    def _fill(
        self,
        figures: ClusterFigures,
        pools: Sequence[PoolSpec],
        groups: list[NodeGroup],
        claims: list[Json],
        now: datetime,
    ) -> None:
        history = self._history()
        in_flight: dict[str, int] = defaultdict(int)
        for claim in claims:
            state = claim_state(claim)
            if state.provisioning:
                in_flight[state.nodepool] += 1
        tick = time.monotonic()
        for key, seen in list(self._seen_pods.items()):
            if tick - seen > 120:
                del self._seen_pods[key]
        window = min(ARRIVAL_WINDOW.total_seconds(), max(60.0, tick - self._started))
        for spec in pools:
            pool = figures.pools.get(spec.id)
            if pool is None:
                continue
            members = groups_for(groups, spec.node_selector)
            provisioning = sum(in_flight.get(g.name, 0) for g in members if g.kind == KARPENTER)
            if any(g.kind == CLUSTER_AUTOSCALER for g in members):
                provisioning += sum(1 for n in pool.nodes if not n.ready)
            pool.nodes_provisioning = provisioning
            samples = sorted(s for g in members for s in history.get(g.name, []))[-BRINGUPS_KEPT:]
            if samples:
                pool.node_bringup_last_seconds = samples[-1][1]
                pool.node_bringup_p95_seconds = bringup_percentile([s for _, s in samples])
            arrived = {k: g for k, g in pool.new_pods.items() if k not in self._seen_pods}
            for key in arrived:
                self._seen_pods[key] = tick
            arrivals = self._arrivals[spec.id]
            if arrived:
                arrivals.append((tick, len(arrived), sum(arrived.values())))
            while arrivals and tick - arrivals[0][0] > ARRIVAL_WINDOW.total_seconds():
                arrivals.popleft()
            pool.gpu_pod_arrivals_per_hour = 3600 * sum(a[1] for a in arrivals) / window
            pool.gpu_arrivals_per_hour = 3600 * sum(a[2] for a in arrivals) / window
