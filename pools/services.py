"""Writes about clusters and their pools: registration, inventory sync, connection checks.

Cluster I/O never runs inside a database transaction: the checks and listings happen first, then
one short transaction writes the result with its audit rows. Errors are django ValidationErrors with
a field (where one is to blame) and a code: unreachable, unavailable (throttled, 5xx: try later),
unauthorized, tls, invalid_kubeconfig, missing_permissions, no_gpu_nodes, cluster_error.
"""

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from pools import manifests
from pools.holders import holders_count
from pools.kube import client, ops
from pools.kube.discovery import AcceleratorSpec, DiscoveredPool, Inventory, discover
from pools.kube.errors import (
    Forbidden,
    InvalidKubeconfig,
    KubeError,
    NotFound,
    TLSError,
    Unauthorized,
    Unreachable,
)
from pools.kube.nodegroups import (
    NodeGroup,
    PoolAsk,
    discover_node_groups,
    nodegroup_from_autoscaler,
    nodegroup_from_nodepool,
    observed_instance_types,
    preflight_refusal,
)
from pools.kube.objects import (
    KARPENTER_API,
    KUEUE_GROUP,
    KUEUE_VERSION,
    NODEPOOL_KIND,
    managed_selector,
    pool_taint,
    selector_text,
)
from pools.manifests import Manifest
from pools.models import (
    COLLECTOR_SILENT_AFTER,
    Accelerator,
    Cluster,
    ClusterInventory,
    ClusterUtilisation,
    CollectorState,
    NodePool,
    PoolClass,
)
from portal.models import User
from portal.roles import is_admin
from portal.services import audit_event_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}.{self.group}" if self.group else f"{self.verb} {self.resource}"


def _each(verbs: tuple[str, ...], resources: tuple[tuple[str, str], ...]) -> tuple[Permission, ...]:
    return tuple(Permission(verb, resource, group) for resource, group in resources for verb in verbs)


# What the portal does on a cluster: watch nodes and pods for inventory and utilisation, and
# provision grants (namespace, quota, limits, access, serving deployments, priority classes and the
# admission policy that enforces the scheduling contract).
_APPLIED = (
    ("namespaces", ""),
    ("resourcequotas", ""),
    ("limitranges", ""),
    ("rolebindings", "rbac.authorization.k8s.io"),
    ("deployments", "apps"),
    ("priorityclasses", "scheduling.k8s.io"),
    ("validatingadmissionpolicies", "admissionregistration.k8s.io"),
    ("validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
    ("mutatingadmissionpolicies", "admissionregistration.k8s.io"),
    ("mutatingadmissionpolicybindings", "admissionregistration.k8s.io"),
)
# What the collector watches to explain why a grant's workloads are not running.
_WATCHED_WORKLOADS = (
    ("events", ""),
    ("deployments", "apps"),
    ("replicasets", "apps"),
    ("statefulsets", "apps"),
    ("jobs", "batch"),
)
# Kueue's objects for grants that queue (docs/queueing.md): a ResourceFlavor and a Cohort per pool,
# a ClusterQueue per grant (deleted with an ended grant's namespace), a LocalQueue in its namespace.
_QUEUE_APPLIED = (
    ("resourceflavors", KUEUE_GROUP),
    ("cohorts", KUEUE_GROUP),
    ("clusterqueues", KUEUE_GROUP),
    ("localqueues", KUEUE_GROUP),
)
# What the collector, the provisioner and revocation do; registration names whichever is missing.
# Karpenter's NodePools and NodeClaims are watched for elastic pools (a cluster without Karpenter
# simply has none; RBAC rules for an API group the cluster does not serve are valid).
REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    *_each(("list", "watch"), (("nodes", ""), ("pods", ""), ("namespaces", ""))),
    *_each(("list", "watch"), _WATCHED_WORKLOADS),
    *_each(("list", "watch"), (("nodepools", "karpenter.sh"), ("nodeclaims", "karpenter.sh"))),
    *_each(("get", "create", "patch"), _APPLIED),
    *_each(("get", "create", "patch"), _QUEUE_APPLIED),
    # The collector's queue watch (positions, borrowing); ClusterQueues are also deleted with an
    # ended grant's namespace; a dry-run Job probes the queue contract and Kueue's webhook.
    *_each(("list", "watch"), (("workloads", KUEUE_GROUP), ("clusterqueues", KUEUE_GROUP))),
    *_each(("delete",), (("clusterqueues", KUEUE_GROUP),)),
    *_each(("create",), (("jobs", "batch"),)),
    *_each(
        ("delete",),
        (
            ("namespaces", ""),
            ("deployments", "apps"),
            ("validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
        ),
    ),
    *_each(
        ("list",),
        (
            ("validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
            # Warm-headroom placeholders of a pool that no longer keeps any are found by label.
            ("deployments", "apps"),
        ),
    ),
    # The policy probe creates a dry-run pod; team RoleBindings grant the `edit` ClusterRole.
    *_each(("create",), (("pods", ""),)),
    *_each(("bind",), (("clusterroles", "rbac.authorization.k8s.io"),)),
)


@dataclass
class ConnectionCheck:
    server_version: str
    gpu_nodes: int
    gpu_node_groups: int = 0
    kueue_version: str = ""  # the Kueue API version the portal would use, "" without Kueue


def instance_catalogue() -> dict[str, dict[str, int]]:
    """Instance type -> GPU resources per node, as configured (PORTAL_INSTANCE_TYPES)."""
    return {str(k): {str(r): int(n) for r, n in v.items()} for k, v in settings.PORTAL_INSTANCE_TYPES.items()}


def cluster_node_groups(
    cluster: Cluster, nodes: list[dict[str, Any]], notes: list[str] | None = None
) -> list[NodeGroup]:
    """The cluster's node groups: its Karpenter NodePools (none when it does not serve the API) and
    the cluster-autoscaler groups declared on the cluster record. NodePools the credentials may not
    list are left out with a sentence in `notes`; other failures raise KubeError."""
    try:
        nodepools = ops.list_objects(cluster, KARPENTER_API, NODEPOOL_KIND)
    except NotFound:
        nodepools = []
    except Forbidden as exc:
        nodepools = []
        if notes is not None:
            notes.append(f"Karpenter NodePools were not read ({exc.message}); grant list and watch on them.")
    except KubeError as exc:
        if exc.reason != "NoSuchAPI":
            raise
        nodepools = []
    known = {**instance_catalogue(), **observed_instance_types(nodes)}
    groups = [nodegroup_from_nodepool(p, known) for p in nodepools]
    declared = cluster.autoscaler_node_groups if isinstance(cluster.autoscaler_node_groups, dict) else {}
    return groups + [nodegroup_from_autoscaler(name, spec) for name, spec in sorted(declared.items())]


@dataclass
class SyncSummary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    catalogue_created: list[str] = field(default_factory=list)
    # Human sentences: groups that were not proposed, changes left for an admin, things to look at.
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.disabled or self.catalogue_created)


def _require_admin(actor: User | None) -> None:
    # actor None is the system itself (a periodic task).
    if actor is not None and not is_admin(actor):
        raise PermissionDenied("Only platform admins manage clusters.")


def _credentials_field(cluster: Cluster, exc: KubeError) -> str:
    if cluster.in_cluster:
        return "in_cluster"
    if cluster.kubeconfig:
        return "kubeconfig"
    if isinstance(exc, Unauthorized):
        return "token"
    if isinstance(exc, TLSError):
        return "ca_data"
    return "api_url"


def _as_validation_error(cluster: Cluster, exc: KubeError) -> ValidationError:
    """A cluster failure as a form-friendly error; the message is the typed error's (credential-free)."""
    if isinstance(exc, InvalidKubeconfig):
        target = "kubeconfig" if exc.reason == "InvalidKubeconfig" else NON_FIELD_ERRORS
        return ValidationError({target: ValidationError(exc.message, code="invalid_kubeconfig")})
    if isinstance(exc, Unauthorized):
        code = "unauthorized"
    elif isinstance(exc, TLSError):
        code = "tls"
    elif isinstance(exc, Unreachable):
        code = "unreachable"
    else:
        return ValidationError(
            {
                NON_FIELD_ERRORS: ValidationError(
                    f"Cluster {cluster.name}: {exc.message}",
                    code="unavailable" if exc.temporary else "cluster_error",
                )
            }
        )
    return ValidationError({_credentials_field(cluster, exc): ValidationError(exc.message, code=code)})


def _missing_permissions(cluster: Cluster) -> list[Permission]:
    missing = []
    for permission in REQUIRED_PERMISSIONS:
        review = ops.create(
            cluster,
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "verb": permission.verb,
                        "group": permission.group,
                        "resource": permission.resource,
                    }
                },
            },
        )
        if not (review.get("status") or {}).get("allowed"):
            missing.append(permission)
    return missing


def cluster_check_connection(*, cluster: Cluster) -> ConnectionCheck:
    """Check that the portal can work with `cluster` (saved or not): it answers, accepts the
    credentials, grants every permission the portal needs and has GPU nodes.

    Raises ValidationError (codes in the module docstring); writes nothing.
    """
    try:
        version = ops.server_version(cluster)
        missing = _missing_permissions(cluster)
        if missing:
            raise ValidationError(
                {
                    NON_FIELD_ERRORS: ValidationError(
                        "The credentials lack permissions the portal needs: "
                        + ", ".join(str(p) for p in missing)
                        + ". Bind them with a ClusterRole and try again.",
                        code="missing_permissions",
                        params={"missing": [str(p) for p in missing]},
                    )
                }
            )
        nodes = ops.list_objects(cluster, "v1", "Node")
        groups = cluster_node_groups(cluster, nodes)
        kueue_version, _ = kueue_detect(cluster)
    except KubeError as exc:
        raise _as_validation_error(cluster, exc) from exc
    finally:
        if cluster.pk is None:
            # Credentials that were never saved must not linger in the connection cache.
            client.forget(cluster)
    gpu_nodes = discover(nodes, pool_classes=PoolClass.values).gpu_nodes
    # An elastic pool may have no node at all tonight: GPU node groups are enough to offer.
    gpu_groups = sum(1 for g in groups if any(g.resources.values()))
    if not gpu_nodes and not gpu_groups:
        raise ValidationError(
            {
                NON_FIELD_ERRORS: ValidationError(
                    f"Cluster {cluster.name} has no GPU nodes (none advertises nvidia.com/gpu or a MIG "
                    "resource, or carries GPU Feature Discovery labels) and no node group that makes "
                    "them; there is nothing to offer.",
                    code="no_gpu_nodes",
                )
            }
        )
    return ConnectionCheck(
        server_version=version, gpu_nodes=gpu_nodes, gpu_node_groups=gpu_groups, kueue_version=kueue_version
    )


def cluster_register(
    *,
    name: str,
    kubeconfig: str | None = None,
    api_url: str | None = None,
    token: str | None = None,
    ca_data: str | None = None,
    in_cluster: bool = False,
    actor: User,
) -> Cluster:
    """Register a cluster after checking connectivity, credentials, permissions and GPU nodes.

    Give either a kubeconfig (inline credentials only), the API URL with a bearer token (and the CA
    bundle unless the server's certificate is publicly trusted), or `in_cluster` for the cluster the
    portal runs in, reached with its own ServiceAccount (nothing is stored; the token the kubelet
    mounts and rotates is read at each connection). Pools are created by cluster_sync_inventory.
    """
    _require_admin(actor)
    if in_cluster:
        return _register_in_cluster(name=name, given=[kubeconfig, api_url, token, ca_data], actor=actor)
    if kubeconfig and (token or ca_data):
        raise ValidationError(
            {
                NON_FIELD_ERRORS: ValidationError(
                    "Give a kubeconfig, or a URL with a token: not both.", code="both"
                )
            }
        )
    if not kubeconfig and not (api_url and token):
        given = {"api_url": api_url, "token": token}
        raise ValidationError(
            {
                key: ValidationError("Required without a kubeconfig.", code="required")
                for key, value in given.items()
                if not value
            }
        )
    if not kubeconfig and str(api_url).lower().startswith("http://"):
        raise ValidationError(
            {
                "api_url": ValidationError(
                    "Use an https:// address: the token would travel in clear text over http.",
                    code="insecure",
                )
            }
        )
    if kubeconfig:
        # The kubeconfig's own server is the one the client talks to, so it is the one on record.
        try:
            api_url = client.kubeconfig_server(kubeconfig)
        except InvalidKubeconfig as exc:
            raise ValidationError(
                {"kubeconfig": ValidationError(exc.message, code="invalid_kubeconfig")}
            ) from None
    cluster = Cluster(
        name=name,
        api_url=api_url or "",
        kubeconfig=kubeconfig or "",
        token=token or "",
        ca_data=ca_data or "",
    )
    # A kubeconfig's server may be a bare host name (https://k8s-api:6443) that URLField refuses;
    # it is checked by connecting instead.
    cluster.full_clean(exclude=["server_version", "last_error", *(["api_url"] if kubeconfig else [])])
    credentials = "kubeconfig" if kubeconfig else "token"
    return _checked_and_saved(cluster, credentials=credentials, actor=actor)


def _register_in_cluster(*, name: str, given: list[str | None], actor: User) -> Cluster:
    if any(given):
        raise ValidationError(
            {
                NON_FIELD_ERRORS: ValidationError(
                    "The cluster the portal runs in is reached with the pod's own ServiceAccount: give no "
                    "kubeconfig, URL, token or CA with it.",
                    code="both",
                )
            }
        )
    if refusal := client.in_cluster_refusal():
        raise ValidationError({"in_cluster": ValidationError(refusal, code="not_in_cluster")})
    cluster = Cluster(name=name, api_url=client.in_cluster_server(), in_cluster=True)
    # The service address may be a bare IP URLField accepts, or a name it refuses: checked by connecting.
    cluster.full_clean(exclude=["server_version", "last_error", "api_url"])
    return _checked_and_saved(cluster, credentials="in-cluster service account", actor=actor)


def _checked_and_saved(cluster: Cluster, *, credentials: str, actor: User) -> Cluster:
    check = cluster_check_connection(cluster=cluster)
    cluster.server_version, cluster.kueue_version = check.server_version, check.kueue_version
    try:
        with transaction.atomic():
            cluster.save()
            audit_event_record(
                actor=actor,
                action="cluster.register",
                obj=cluster,
                after={
                    "name": cluster.name,
                    "api_url": cluster.api_url,
                    "credentials": credentials,
                    "server_version": cluster.server_version,
                    "kueue_version": cluster.kueue_version,
                },
                message=(
                    f"Registered cluster {cluster.name} ({cluster.server_version}, "
                    f"{check.gpu_nodes} GPU nodes)"
                ),
            )
    except IntegrityError:
        raise ValidationError(
            {"name": ValidationError("A cluster with this name already exists.", code="unique")}
        ) from None
    logger.info("cluster %s registered by %s", cluster.name, actor)
    _queue_policies(cluster)
    return cluster


def _queue_policies(cluster: Cluster) -> None:
    # Imported here: the tasks module imports this one.
    from pools.tasks import cluster_policies_apply

    transaction.on_commit(lambda: cluster_policies_apply.delay(cluster.pk), robust=True)


def _queue_warm_headroom(cluster: Cluster) -> None:
    # Pools may have become elastic or changed shape: their placeholders follow at once.
    from pools.tasks import warm_headroom_reconcile

    ids = list(NodePool.objects.filter(cluster=cluster).values_list("pk", flat=True))
    transaction.on_commit(lambda: [warm_headroom_reconcile.delay(pk) for pk in ids], robust=True)


def _record_failure(cluster: Cluster, message: str) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(last_error=message)
    cluster.last_error = message


def _catalogue_entry(spec: AcceleratorSpec, summary: SyncSummary, actor: User | None) -> Accelerator:
    found = (
        Accelerator.objects.filter(product=spec.product, mig_profile=spec.mig_profile).order_by("pk").first()
        or Accelerator.objects.filter(slug=spec.slug).first()
    )
    if found is not None:
        return found
    accelerator = Accelerator.objects.create(
        slug=spec.slug,
        name=spec.display_name,
        product=spec.product,
        type_label=spec.type_label,
        memory_gib=spec.memory_gib,
        mig_profile=spec.mig_profile,
        hourly_cost=Decimal("0"),
    )
    audit_event_record(
        actor=actor,
        action="accelerator.create",
        obj=accelerator,
        after={
            "slug": accelerator.slug,
            "product": accelerator.product,
            "mig_profile": accelerator.mig_profile,
        },
        message="Created by inventory sync with hourly cost 0",
    )
    summary.catalogue_created.append(accelerator.slug)
    summary.notes.append(
        f"New accelerator {accelerator.slug} ({spec}) added to the catalogue with hourly cost 0: "
        "set its price."
    )
    return accelerator


def _pool_fields(found: DiscoveredPool, accelerator: Accelerator) -> dict[str, Any]:
    # Nodes without any pool taint (reported by the conformance report) get the one they should carry.
    taint = found.taint or pool_taint(found.name)
    return {
        "pool_class": found.pool_class,
        "accelerator": accelerator,
        "node_selector": found.node_selector,
        "taint_key": taint["key"],
        "taint_value": taint["value"],
        "taint_effect": taint["effect"],
        "zones": found.zones,
        "capacity_gpus": found.capacity,
        "node_groups": found.node_groups,
    }


def _audit_value(value: Any) -> Any:
    return value.slug if isinstance(value, Accelerator) else value


def _sync_pool(cluster: Cluster, found: DiscoveredPool, summary: SyncSummary, actor: User | None) -> None:
    accelerator = _catalogue_entry(found.accelerator, summary, actor)
    wanted = _pool_fields(found, accelerator)
    pool = NodePool.objects.select_for_update().filter(cluster=cluster, name=found.name).first()
    if pool is None:
        pool = NodePool.objects.create(
            cluster=cluster,
            name=found.name,
            priority_class_name=f"gpu-{found.pool_class}",
            # A batch pool is all batch; other classes lend nothing until an admin decides.
            batch_fraction=Decimal("1") if found.pool_class == PoolClass.BATCH else Decimal("0"),
            **wanted,
        )
        audit_event_record(
            actor=actor,
            action="pool.create",
            obj=pool,
            after={key: _audit_value(value) for key, value in wanted.items()},
            message=f"Discovered on {cluster.name}: {len(found.nodes)} nodes",
        )
        summary.created.append(pool.name)
        return

    holding = holders_count(pool_id=pool.pk)
    changes = {key: value for key, value in wanted.items() if getattr(pool, key) != value}
    for key in ("pool_class", "accelerator"):
        if key in changes and holding:
            summary.notes.append(
                f"Pool {pool.name}: the cluster now says {key.replace('_', ' ')} "
                f"{_audit_value(changes.pop(key))}, but {holding} grant(s) hold capacity of its current "
                f"{_audit_value(getattr(pool, key))}; left unchanged for an admin to resolve."
            )
    if "capacity_gpus" in changes and pool.headroom_gpus > changes["capacity_gpus"]:
        changes["headroom_gpus"] = changes["capacity_gpus"]
        summary.notes.append(
            f"Pool {pool.name}: capacity fell to {changes['capacity_gpus']}, below its headroom of "
            f"{pool.headroom_gpus}; headroom lowered to match."
        )
    if not pool.enabled:
        summary.notes.append(
            f"Pool {pool.name} is on the cluster again but stays disabled until an admin enables it."
        )
    if not changes:
        summary.unchanged.append(pool.name)
        return
    before = {key: _audit_value(getattr(pool, key)) for key in changes}
    for key, value in changes.items():
        setattr(pool, key, value)
    pool.save(update_fields=list(changes))
    audit_event_record(
        actor=actor,
        action="pool.update",
        obj=pool,
        before=before,
        after={key: _audit_value(value) for key, value in changes.items()},
        message=f"Inventory sync of {cluster.name}",
    )
    summary.updated.append(pool.name)


def cluster_sync_inventory(*, cluster: Cluster, actor: User | None) -> SyncSummary:
    """Discover the cluster's GPU node pools and create or update their NodePool records.

    Pools are never deleted: one that is gone from the cluster is disabled (its grants stay
    readable). Records last_synced_at, or last_error when the cluster cannot be read.
    """
    _require_admin(actor)
    try:
        version = ops.server_version(cluster)
        nodes = ops.list_objects(cluster, "v1", "Node")
        group_notes: list[str] = []
        groups = cluster_node_groups(cluster, nodes, group_notes)
        kueue_version, kueue_note = kueue_detect(cluster)
    except KubeError as exc:
        _record_failure(cluster, exc.message)
        raise _as_validation_error(cluster, exc) from exc
    inventory: Inventory = discover(nodes, pool_classes=PoolClass.values)
    # Elastic pools come from their node groups: a pool that scales from zero has no node to find.
    inventory = discover_node_groups(groups, pool_classes=PoolClass.values, inventory=inventory)
    if not inventory.gpu_nodes and not any(p.node_groups for p in inventory.pools):
        message = f"Cluster {cluster.name} has no GPU nodes and no GPU node groups; pools left as they were."
        _record_failure(cluster, message)
        raise ValidationError({NON_FIELD_ERRORS: ValidationError(message, code="no_gpu_nodes")})

    summary = SyncSummary()
    summary.notes += group_notes
    summary.notes += [f"Pool {name} not offered: {reason}." for name, reason in inventory.skipped.items()]
    summary.notes += inventory.warnings
    if kueue_note:
        summary.notes.append(kueue_note)
    with transaction.atomic():
        # One sync per cluster at a time: a second one waits and then sees the first one's result.
        locked = Cluster.objects.select_for_update().get(pk=cluster.pk)
        for found in inventory.pools:
            _sync_pool(locked, found, summary, actor)
        present = {p.name for p in inventory.pools}
        for pool in (
            NodePool.objects.select_for_update()
            .filter(cluster=locked, enabled=True)
            .exclude(name__in=present)
        ):
            why = inventory.skipped.get(pool.name, "it is no longer on the cluster")
            pool.enabled = False
            pool.save(update_fields=["enabled"])
            audit_event_record(
                actor=actor,
                action="pool.disable",
                obj=pool,
                before={"enabled": True},
                after={"enabled": False},
                message=f"Inventory sync of {locked.name}: {why}",
            )
            summary.disabled.append(pool.name)
            summary.notes.append(f"Pool {pool.name} was disabled: {why}.")
        zones = sorted({zone for p in inventory.pools for zone in p.zones})
        before = {
            "zones": locked.zones,
            "server_version": locked.server_version,
            "kueue_version": locked.kueue_version,
        }
        after = {"zones": zones, "server_version": version, "kueue_version": kueue_version}
        if before != after:
            audit_event_record(
                actor=actor,
                action="cluster.update",
                obj=locked,
                before=before,
                after=after,
                message="Inventory sync",
            )
        locked.zones, locked.server_version, locked.kueue_version = zones, version, kueue_version
        locked.last_synced_at, locked.last_error = timezone.now(), ""
        locked.save(
            update_fields=["zones", "server_version", "kueue_version", "last_synced_at", "last_error"]
        )
        _queue_policies(locked)
        _queue_warm_headroom(locked)
    for key in ("zones", "server_version", "kueue_version", "last_synced_at", "last_error"):
        setattr(cluster, key, getattr(locked, key))
    logger.info(
        "inventory of %s: %d created, %d updated, %d disabled",
        cluster.name,
        len(summary.created),
        len(summary.updated),
        len(summary.disabled),
    )
    return summary


def cluster_policy_objects(cluster: Cluster) -> list[Manifest]:
    names = {manifests.default_priority_class_name(c): str(c) for c in PoolClass.values}
    for pool in cluster.pools.all():
        names.setdefault(pool.priority_class_name, pool.pool_class)
    return [
        *manifests.priority_classes(names),
        manifests.warm_priority_class(settings.PORTAL_WARM_HEADROOM["PRIORITY_CLASS"]),
        manifests.grant_contract_policy(),
        manifests.grant_contract_binding(),
        manifests.grant_injection_policy(),
        manifests.grant_injection_binding(),
        manifests.workload_selector_policy(),
        manifests.workload_selector_binding(),
        manifests.grant_queue_policy(),
        manifests.grant_queue_binding(),
    ]


def kueue_detect(cluster: Cluster) -> tuple[str, str]:
    """The Kueue API version the portal uses if the cluster serves it (its CRDs are installed and
    served: Kueue's own process need not be running), else ""; and a note for an admin when the
    cluster serves only other versions. Batch and experimentation pools of a cluster with Kueue
    queue their grants' Jobs (NodePool.admission_mode)."""
    versions = ops.served_versions(cluster, KUEUE_GROUP)
    if KUEUE_VERSION in versions:
        return KUEUE_VERSION, ""
    if versions:
        return "", (
            f"Cluster {cluster.name} serves Kueue's API only as {', '.join(versions)}; the portal needs "
            f"{KUEUE_GROUP}/{KUEUE_VERSION} (Kueue v0.15 or later), so its batch and experimentation "
            "pools admit through ResourceQuota."
        )
    return "", ""


def cluster_policies_apply(*, cluster: Cluster) -> list[str]:
    """Apply the cluster-wide objects (PriorityClasses, the grant contract policy, the injection and
    workload-selector policies, and their bindings),
    and delete any other policy binding the portal made (it once made one per grant: the one binding
    covers those namespaces now, and two would check every pod twice).

    Registration and every inventory sync queue it, so the periodic sync also heals drift in them.
    Returns what was done, as "Kind/name" (applied) or "deleted Kind/name".
    """
    done = []
    for manifest in cluster_policy_objects(cluster):
        ops.apply(cluster, manifest)
        done.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
    binding = manifests.grant_contract_binding()
    for stale in ops.list_objects(
        cluster,
        binding["apiVersion"],
        binding["kind"],
        label_selector=managed_selector(),
    ):
        name = stale["metadata"]["name"]
        if name != binding["metadata"]["name"] and ops.delete(
            cluster, binding["apiVersion"], binding["kind"], name
        ):
            done.append(f"deleted {binding['kind']}/{name}")
    return done


# --- pre-flight at approval: the collector's live inventory, no cluster round trip ---------------


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f} min"


def pool_preflight_refusal(*, pool: NodePool) -> str | None:
    """Why work granted on `pool` could not run on its cluster now, or None.

    Judged from the collector's live inventory of the cluster (ClusterInventory) and its staleness
    mark (ClusterUtilisation), never by asking the cluster: an approval costs no request, and a cluster
    the collector cannot reach is refused at once with the collector's reason.

    The design document's failure mode "node selectors that match no node group": the pool's selector
    must match Ready nodes that carry the pool's taint (or other workloads could land there) and
    advertise the accelerator's resource, or a node group whose template satisfies the selector,
    carries the pool's taint and offers the resource (pools.kube.nodegroups.preflight_refusal).
    """
    cluster = pool.cluster
    selector = selector_text(pool.node_selector)
    if not selector:
        return f"Pool {pool} has no node selector, so its workloads could land on any node."
    cannot = f"Cannot check pool {pool} on cluster {cluster.name}"
    status = ClusterUtilisation.objects.filter(cluster_id=cluster.pk).first()
    now = timezone.now()
    if status is None:
        return (
            f"{cannot}: the collector has not reported on this cluster yet, so the portal does not know "
            "its nodes. Is the utilisation collector (manage.py collect_utilisation) running?"
        )
    silent = (now - status.heartbeat_at).total_seconds()
    if silent > COLLECTOR_SILENT_AFTER.total_seconds():
        return (
            f"{cannot}: the collector last reported {_age(silent)} ago "
            f"({status.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC), so what the portal knows of the cluster "
            "may be out of date. Is the collector running?"
        )
    if status.state == CollectorState.STALE:
        since = status.stale_since or status.heartbeat_at
        return (
            f"{cannot}: the cluster has not answered the collector since {since:%H:%M:%S} UTC "
            f"({_age((now - since).total_seconds())}): {status.last_error or 'no answer'}"
        )
    inventory = ClusterInventory.objects.filter(cluster_id=cluster.pk).first()
    if status.state != CollectorState.LIVE or inventory is None:
        return f"{cannot}: the collector is still reading the cluster; try again in a few seconds."
    ask = PoolAsk(
        title=str(pool),
        cluster=cluster.name,
        selector=pool.node_selector,
        taint=pool.taint,
        resource=pool.accelerator.resource_name,
    )
    refusal = preflight_refusal(ask, inventory.document)
    if refusal and inventory.node_groups_error:
        why = inventory.node_groups_error
        refusal += f" (The collector could not read the cluster's node groups lately: {why}.)"
    return refusal
