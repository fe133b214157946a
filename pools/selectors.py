"""Reads about accelerators, clusters and pools."""

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.utils import timezone

from pools.kube import ops
from pools.kube.conformance import Allowlist, Finding, conformance_report
from pools.kube.errors import KubeError
from pools.models import Accelerator, Cluster, NodePool, PoolClass
from pools.services import cluster_node_groups
from portal import statements
from portal.models import User


def pools_offering(*, pool_class: str, accelerator: Accelerator | None = None) -> QuerySet[NodePool]:
    """Enabled pools that accept work of `pool_class` (batch may borrow pools with a batch fraction)."""
    qs = NodePool.objects.filter(enabled=True, cluster__enabled=True).select_related("cluster", "accelerator")
    if pool_class == PoolClass.BATCH:
        qs = qs.filter(Q(pool_class=pool_class) | Q(batch_fraction__gt=0))
    else:
        qs = qs.filter(pool_class=pool_class)
    if accelerator is not None:
        qs = qs.filter(accelerator=accelerator)
    return qs


def pool_candidates(*, pool_class: str, accelerator: Accelerator) -> list[NodePool]:
    """pools_offering() of one accelerator as a list, compiled once per pool class (every create
    reads it): each pool with `accelerator` and its cluster's id and name (its other columns, the
    credentials among them, load only if read)."""
    fields = [f.name for f in NodePool._meta.concrete_fields]

    def build(accelerator_id: int) -> QuerySet[NodePool]:
        # pool_class stays out of the bound values: pools_offering() branches on it.
        offering = pools_offering(pool_class=pool_class).filter(accelerator_id=accelerator_id)
        return offering.select_related(None).select_related("cluster").only(*fields, "cluster__name")

    pools = statements.bound_instances(("pool candidates", pool_class), build, accelerator_id=accelerator.pk)
    for pool in pools:
        pool.accelerator = accelerator
    return pools


def accelerator_list() -> QuerySet[Accelerator]:
    """The accelerator catalogue: public to every signed-in user, like a price list."""
    return Accelerator.objects.all()


def cluster_list(*, user: User) -> QuerySet[Cluster]:
    """Pools name their cluster, so everyone sees enabled clusters; disabled ones only admins and auditors."""
    qs = Cluster.objects.all()
    if not user.sees_everything:
        qs = qs.filter(enabled=True)
    return qs


def node_pool_list(*, user: User) -> QuerySet[NodePool]:
    """Pools on offer (every requester chooses among them); disabled ones only admins and auditors."""
    qs = NodePool.objects.select_related("cluster", "accelerator")
    if not user.sees_everything:
        qs = qs.filter(enabled=True, cluster__enabled=True)
    return qs


@dataclass
class ConformanceReport:
    cluster: Cluster
    checked_at: datetime
    findings: list[Finding] = field(default_factory=list)
    # Set when the cluster could not be read; findings are then empty, not "all clear".
    error: str = ""


def cluster_conformance_report(
    *, user: User, cluster: Cluster, only_pools: Collection[str] | None = None
) -> ConformanceReport:
    """The scheduling-contract report of a cluster, from its live nodes and pods (admins and auditors)."""
    if not user.sees_everything:
        raise PermissionDenied("Only platform admins and auditors see cluster conformance.")
    report = ConformanceReport(cluster=cluster, checked_at=timezone.now())
    try:
        nodes = ops.list_objects(cluster, "v1", "Node")
        pods = ops.list_objects(
            cluster, "v1", "Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed"
        )
        groups = cluster_node_groups(cluster, nodes)
    except KubeError as exc:
        report.error = exc.message
        return report
    report.findings = conformance_report(
        nodes=nodes,
        pods=pods,
        pools=list(NodePool.objects.filter(cluster=cluster)),
        allowlist=Allowlist.from_setting(settings.PORTAL_GPU_NODE_ALLOWLIST),
        only_pools=only_pools,
        node_groups=groups,
    )
    return report
