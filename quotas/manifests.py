"""Pure builders of the objects that carry one grant into its cluster, and of serving deployments.

Every builder takes plain values (a `GrantContract`, a `ServingSpec`) and returns a manifest dict;
nothing here reads the database, settings or a cluster, so each is unit-tested on its own. Names are
deterministic (a re-apply finds the same object) and everything carries the portal's ownership labels.
`quotas.reconcile` computes the contract from a Grant and applies what these functions return.
"""

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pools.kube.objects import (
    APP_NAME_LABEL,
    CONTRACT_ACTIVE,
    CONTRACT_PREFIX,
    CPU_RESOURCE,
    GPU_RESOURCE,
    HOSTNAME_LABEL,
    KUEUE_API_VERSION,
    LOCAL_QUEUE_ANNOTATION,
    MANAGED_BY_LABEL,
    MEMORY_RESOURCE,
    MODEL_ANNOTATION,
    PORTAL_PREFIX,
    QUEUE_NAME_LABEL,
    SIMULATED_LOAD_ANNOTATION,
    ZONE_LABEL,
    AdmissionLabel,
    ContractAnnotation,
    Label,
    managed_labels,
    quota_key,
)
from pools.manifests import Manifest

QUOTA_NAME = "gpu-grant"
LIMIT_RANGE_NAME = "gpu-grant-defaults"
ROLE_BINDING_NAME = "gpu-grant-team"


@dataclass(frozen=True)
class PodSecurity:
    """Pod Security Admission levels of grant namespaces."""

    enforce: str = "baseline"
    warn: str = "restricted"
    audit: str = "restricted"


def kueue_pool_object_name(pool: str) -> str:
    """The name of a pool's ResourceFlavor and Cohort: deterministic, a DNS label, prefixed so it
    cannot take over a flavour someone else made for the same nodes; a pool name that is not a DNS
    label itself (node label values may hold dots, capitals or underscores) gets a hash of it."""
    clean = re.sub(r"[^a-z0-9-]+", "-", pool.lower()).strip("-")
    name = f"gpu-pool-{clean}"
    if clean != pool or len(name) > 63:
        name = f"{name[:54].rstrip('-')}-{hashlib.sha256(pool.encode()).hexdigest()[:8]}"
    return name


# Every queued grant's namespace has one LocalQueue, always of this name, so a team's Job manifests
# are the same in each of its grants: `kueue.x-k8s.io/queue-name: gpu-grant`.
LOCAL_QUEUE_NAME = "gpu-grant"


@dataclass(frozen=True)
class QueueContract:
    """What Kueue must hold for a grant that queues (docs/queueing.md): quantities as the
    ClusterQueue states them, computed by quotas.reconcile from the grant and its pool's policy."""

    cluster_queue: str  # the grant's namespace: unique, and a valid ClusterQueue name
    cohort: str  # one per pool
    flavor: str  # one per pool
    flavor_labels: dict[str, str]
    reclaim_policy: str
    # Nominal quota: the grant's units (0 once it ended) and its CPU and memory.
    gpus: int
    cpu: str
    memory: str
    # Kueue's borrowingLimit and lendingLimit of each resource; a lending limit of None lends all.
    borrow_gpus: int
    borrow_cpu: str
    borrow_memory: str
    lend_gpus: int | None
    lend_cpu: str | None
    lend_memory: str | None
    # The namespace's ResourceQuota: nominal plus borrowing, the most Kueue may ever admit, so pods
    # that bypass the queue are bounded too.
    quota_gpus: int
    quota_cpu: str
    quota_memory: str
    local_queue: str = LOCAL_QUEUE_NAME


@dataclass(frozen=True)
class GrantContract:
    """Everything the cluster must enforce for one grant, as plain values."""

    grant_id: int
    namespace: str
    team: str
    group: str
    pool_class: str
    pool: str
    pool_label_key: str
    node_selector: dict[str, str]
    accelerator: str
    accelerator_type: str
    product: str
    resource: str
    taint_key: str
    taint_value: str
    taint_effect: str
    gpu_taint_key: str
    priority_class_name: str
    zones: tuple[str, ...]
    # What the quota and the policy allow now: the grant's units while it holds them, 0 once it ended.
    gpus: int
    max_gpus_per_pod: int
    pods: int
    cpu: str
    memory: str
    default_request: dict[str, str]
    default_limit: dict[str, str]
    team_cluster_role: str = "edit"
    state: str = CONTRACT_ACTIVE
    pod_security: PodSecurity = field(default_factory=PodSecurity)
    # The PriorityClass's value and preemption policy, which the injection policy sets with its name.
    priority: int = 0
    preemption_policy: str = "PreemptLowerPriority"
    # Set when the grant's Jobs queue through Kueue; None for ResourceQuota admission.
    queue: QueueContract | None = None

    @property
    def title(self) -> str:
        """How every message names the grant."""
        return f"{self.namespace} (grant {self.grant_id})"

    @property
    def active(self) -> bool:
        return self.state == CONTRACT_ACTIVE

    @property
    def quota_gpus(self) -> int:
        """The GPUs of the namespace's ResourceQuota: the grant's, or a queued grant's ceiling."""
        return self.gpus if self.queue is None else self.queue.quota_gpus

    @property
    def labels(self) -> dict[str, str]:
        return managed_labels(
            **{
                Label.TEAM: self.team,
                Label.POOL_CLASS: self.pool_class,
                Label.ACCELERATOR: self.accelerator,
                Label.POOL: self.pool,
                Label.GRANT: str(self.grant_id),
            }
        )


def namespace(c: GrantContract) -> Manifest:
    a = ContractAnnotation
    pss = c.pod_security
    labels = {
        **c.labels,
        "pod-security.kubernetes.io/enforce": pss.enforce,
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": pss.warn,
        "pod-security.kubernetes.io/warn-version": "latest",
        "pod-security.kubernetes.io/audit": pss.audit,
        "pod-security.kubernetes.io/audit-version": "latest",
    }
    if c.queue is not None:
        labels[AdmissionLabel.KEY] = AdmissionLabel.KUEUE
    annotations = {
        a.GRANT: c.title,
        a.STATE: c.state,
        a.RESOURCE: c.resource,
        a.MAX_PER_POD: str(c.max_gpus_per_pod),
        a.POOL_LABEL_KEY: c.pool_label_key,
        a.POOL: c.node_selector.get(c.pool_label_key, c.pool),
        a.ACCELERATOR_TYPE: c.accelerator_type,
        a.PRODUCT: c.product,
        a.TAINT_KEY: c.taint_key,
        a.TAINT_VALUE: c.taint_value,
        a.GPU_TAINT_KEY: c.gpu_taint_key,
        a.PRIORITY_CLASS: c.priority_class_name,
        a.TAINT_EFFECT: c.taint_effect,
        a.PRIORITY: str(c.priority),
        a.PREEMPTION_POLICY: c.preemption_policy,
        a.ZONES: str(len(c.zones)),
    }
    if c.queue is not None:
        annotations[LOCAL_QUEUE_ANNOTATION] = c.queue.local_queue
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": c.namespace, "labels": labels, "annotations": annotations},
    }


def resource_quota(c: GrantContract) -> Manifest:
    """The grant's GPUs plus pods, CPU and memory, counted over every pod of the namespace.

    Deliberately not scoped by PriorityClass: a scoped quota only counts pods of that class, so a pod
    choosing another class would escape it. The class itself is enforced by the admission policy.
    """
    cpu, memory = (c.cpu, c.memory) if c.queue is None else (c.queue.quota_cpu, c.queue.quota_memory)
    hard = {
        quota_key(c.resource): str(c.quota_gpus),
        "pods": str(c.pods),
        "requests.cpu": cpu,
        "requests.memory": memory,
        "limits.memory": memory,
    }
    if c.resource != GPU_RESOURCE:
        # A MIG grant must not fall back to whole GPUs.
        hard[quota_key(GPU_RESOURCE)] = "0"
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": QUOTA_NAME, "namespace": c.namespace, "labels": c.labels},
        "spec": {"hard": hard},
    }


def limit_range(c: GrantContract) -> Manifest:
    """Defaults for containers that name no CPU or memory: the quota counts them instead of refusing."""
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": LIMIT_RANGE_NAME, "namespace": c.namespace, "labels": c.labels},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "defaultRequest": dict(c.default_request),
                    "default": dict(c.default_limit),
                }
            ]
        },
    }


def role_binding(c: GrantContract) -> Manifest:
    """The team's group may run workloads here (`edit`): it cannot change the quota, the limit range,
    role bindings or the namespace's contract annotations."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ROLE_BINDING_NAME, "namespace": c.namespace, "labels": c.labels},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": c.team_cluster_role,
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": c.group}],
    }


# A pool name no grant has: the policy probe selects it, so the injection leaves its placement alone.
PROBE_POOL = "gpu-grant-policy-probe"


def _probe_pod(c: GrantContract, name: str, node_selector: dict[str, str]) -> Manifest:
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "probe",
                "image": "policy-probe:dry-run",
                "resources": {"limits": {c.resource: "1"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": c.namespace, "labels": c.labels},
        "spec": spec,
    }


def policy_probe_pod(c: GrantContract) -> Manifest:
    """A GPU pod that selects a pool other than the grant's: the grant contract refuses it, and the
    injection leaves placement a pod states alone. Only ever created as a dry run: the apiserver
    refusing it proves the policy binding is in force."""
    return _probe_pod(c, "gpu-grant-policy-probe", {c.pool_label_key: PROBE_POOL})


def injection_probe_pod(c: GrantContract) -> Manifest:
    """A GPU pod that states nothing of the contract. Only ever created as a dry run: the apiserver
    admitting it completed (see `injection_missing`) proves the injection policy is in force."""
    return _probe_pod(c, "gpu-grant-injection-probe", {})


def injection_missing(c: GrantContract, pod: Manifest) -> list[str]:
    """What of the contract the admitted `pod` lacks; empty when the injection completed it."""
    spec = pod.get("spec") or {}
    missing = []
    if (spec.get("nodeSelector") or {}).get(c.pool_label_key) != c.node_selector.get(
        c.pool_label_key, c.pool
    ):
        missing.append(f"nodeSelector {c.pool_label_key}")
    keys = {t.get("key") for t in spec.get("tolerations") or []}
    missing += [f"toleration {key}" for key in (c.gpu_taint_key, c.taint_key) if key not in keys]
    if spec.get("priorityClassName") != c.priority_class_name or spec.get("priority") != c.priority:
        missing.append(f"priorityClassName {c.priority_class_name} (priority {c.priority})")
    return missing


def grant_objects(c: GrantContract) -> list[Manifest]:
    """Every object of a grant, in apply order, the namespace first. The namespace's labels put it
    under the cluster-wide policy binding, its annotations are the contract the policy reads.
    A queued grant's Kueue objects are `queue_objects`."""
    return [namespace(c), resource_quota(c), limit_range(c), role_binding(c)]


# --- Kueue: the objects of a grant that queues ------------------------------------------------------


def pool_flavor(c: GrantContract) -> Manifest:
    """The pool's ResourceFlavor: Kueue adds its node labels and tolerations to the pods of the Jobs
    it admits, so they land on the pool (an elastic pool's NodePool too) like the portal's pods."""
    assert c.queue is not None
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "ResourceFlavor",
        "metadata": {
            "name": c.queue.flavor,
            "labels": managed_labels(**{Label.POOL: c.pool, Label.POOL_CLASS: c.pool_class}),
        },
        "spec": {
            "nodeLabels": dict(c.queue.flavor_labels),
            "tolerations": [
                {"key": c.gpu_taint_key, "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                {"key": c.taint_key, "operator": "Equal", "value": c.taint_value, "effect": c.taint_effect},
            ],
        },
    }


def pool_cohort(c: GrantContract) -> Manifest:
    """The pool's Cohort: the ClusterQueues of the pool's queued grants lend it their idle quota and
    borrow from it. No quota of its own, so a cohort never holds more than its members' nominal
    quota, which the capacity rules keep within the pool (and a batch pool's cap)."""
    assert c.queue is not None
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "Cohort",
        "metadata": {
            "name": c.queue.cohort,
            "labels": managed_labels(**{Label.POOL: c.pool, Label.POOL_CLASS: c.pool_class}),
        },
        "spec": {},
    }


def _quota(name: str, nominal: str, borrow: str, lend: str | None) -> dict[str, str]:
    entry = {"name": name, "nominalQuota": nominal, "borrowingLimit": borrow}
    if lend is not None:
        entry["lendingLimit"] = lend
    return entry


def cluster_queue(c: GrantContract) -> Manifest:
    """The grant's ClusterQueue: nominal quota of the grant's GPUs, CPU and memory in the pool's
    flavour, borrowing and lending limits in the pool's cohort, and preemption that reclaims lent
    quota (the pool's reclaim policy) but never preempts to borrow. Only the grant's namespace may
    queue to it. BestEffortFIFO: a Job that does not fit yet does not hold up smaller ones behind it."""
    q = c.queue
    assert q is not None
    lend_gpus = None if q.lend_gpus is None else str(q.lend_gpus)
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": q.cluster_queue, "labels": c.labels},
        "spec": {
            "cohortName": q.cohort,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": c.namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "preemption": {
                "reclaimWithinCohort": q.reclaim_policy,
                "borrowWithinCohort": {"policy": "Never"},
                "withinClusterQueue": "LowerPriority",
            },
            "resourceGroups": [
                {
                    "coveredResources": [CPU_RESOURCE, MEMORY_RESOURCE, c.resource],
                    "flavors": [
                        {
                            "name": q.flavor,
                            "resources": [
                                _quota(CPU_RESOURCE, q.cpu, q.borrow_cpu, q.lend_cpu),
                                _quota(MEMORY_RESOURCE, q.memory, q.borrow_memory, q.lend_memory),
                                _quota(c.resource, str(q.gpus), str(q.borrow_gpus), lend_gpus),
                            ],
                        }
                    ],
                }
            ],
        },
    }


def local_queue(c: GrantContract) -> Manifest:
    assert c.queue is not None
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": c.queue.local_queue, "namespace": c.namespace, "labels": c.labels},
        "spec": {"clusterQueue": c.queue.cluster_queue},
    }


def queue_objects(c: GrantContract) -> list[Manifest]:
    """A queued grant's Kueue objects in apply order: the pool's flavour and cohort (shared by the
    pool's grants), the grant's ClusterQueue, the LocalQueue in its namespace."""
    return [pool_flavor(c), pool_cohort(c), cluster_queue(c), local_queue(c)]


def queue_probe_job(c: GrantContract, *, queued: bool) -> Manifest:
    """A Job only ever created as a dry run. Without the queue label the queue contract must refuse
    it (the policy binding is in force); with it, Kueue's webhook must accept it (Kueue answers)."""
    assert c.queue is not None
    labels = {**c.labels, **({QUEUE_NAME_LABEL: c.queue.local_queue} if queued else {})}
    return probe_job(c.namespace, labels)


def probe_job(namespace: str, labels: dict[str, str]) -> Manifest:
    """The dry-run Job of the probes above and of the collector's check of Kueue's webhook."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "gpu-grant-queue-probe", "namespace": namespace, "labels": labels},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "probe",
                            "image": "queue-probe:dry-run",
                            "resources": {"limits": {CPU_RESOURCE: "100m", MEMORY_RESOURCE: "64Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                }
            },
        },
    }


# --- serving deployments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingSpec:
    deployment_id: int
    name: str
    model_name: str
    image: str
    replicas: int
    gpus_per_replica: int
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cpu_millis_per_gpu: int = 4000
    memory_gib_per_gpu: int = 32
    load_budget_seconds: int = 900
    port: int = 8000
    health_path: str = "/health"
    # Only where the testbed simulates model loading (PORTAL_SIMULATED_MODEL_LOAD): seconds until a
    # replica is Ready. None on real clusters, where the annotation is not set.
    simulated_load_seconds: int | None = None


def serving_deployment(c: GrantContract, s: ServingSpec) -> Manifest:
    """A model server carrying the whole scheduling contract of its grant.

    Replicas are 0 once the grant has ended. Rolling updates replace pods one at a time without a
    surge pod, because a surge pod would need GPUs beyond the grant's quota.
    """
    selector = {Label.DEPLOYMENT: str(s.deployment_id)}
    labels = {
        **c.labels,
        **selector,
        APP_NAME_LABEL: s.name,
        "app.kubernetes.io/component": "model-server",
    }
    period = 10
    startup_failures = max(1, math.ceil(s.load_budget_seconds / period))
    probe_target = {"httpGet": {"path": s.health_path, "port": "http"}}
    spec: dict[str, Any] = {
        "nodeSelector": dict(c.node_selector),
        "tolerations": [
            {"key": c.gpu_taint_key, "operator": "Equal", "value": "true", "effect": "NoSchedule"},
            {"key": c.taint_key, "operator": "Equal", "value": c.taint_value, "effect": c.taint_effect},
        ],
        "priorityClassName": c.priority_class_name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "server",
                "image": s.image,
                "args": list(s.args),
                "env": [
                    {"name": "MODEL_NAME", "value": s.model_name},
                    # The root filesystem is read-only: model downloads and caches go to the volume.
                    {"name": "HF_HOME", "value": "/cache"},
                    *({"name": k, "value": v} for k, v in s.env),
                ],
                "ports": [{"name": "http", "containerPort": s.port, "protocol": "TCP"}],
                "resources": {
                    "requests": {
                        "cpu": f"{s.cpu_millis_per_gpu * s.gpus_per_replica}m",
                        "memory": f"{s.memory_gib_per_gpu * s.gpus_per_replica}Gi",
                    },
                    "limits": {
                        c.resource: str(s.gpus_per_replica),
                        "memory": f"{s.memory_gib_per_gpu * s.gpus_per_replica}Gi",
                    },
                },
                # Loading weights may take the whole budget; liveness and readiness wait for it.
                "startupProbe": {
                    **probe_target,
                    "periodSeconds": period,
                    "timeoutSeconds": 5,
                    "failureThreshold": startup_failures,
                },
                "readinessProbe": {
                    **probe_target,
                    "periodSeconds": 5,
                    "timeoutSeconds": 3,
                    "failureThreshold": 3,
                },
                "livenessProbe": {
                    **probe_target,
                    "periodSeconds": 20,
                    "timeoutSeconds": 5,
                    "failureThreshold": 3,
                },
                "securityContext": {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "cache", "mountPath": "/cache"},
                    # Mount points of emptyDir volumes, not temporary files of this process.
                    {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                    {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108
                ],
            }
        ],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            # Tensor-parallel NCCL traffic goes through shared memory; the container default is 64 MiB.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    replicas = s.replicas if c.active else 0
    if replicas > 1:
        spread: list[dict[str, Any]] = [
            {
                "maxSkew": 1,
                "topologyKey": ZONE_LABEL,
                "whenUnsatisfiable": "DoNotSchedule" if len(c.zones) > 1 else "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
                "nodeAffinityPolicy": "Honor",
                "nodeTaintsPolicy": "Honor",
            },
            {
                "maxSkew": 1,
                "topologyKey": HOSTNAME_LABEL,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
            },
        ]
        if len(c.zones) > 1:
            # Without it a pool whose other zone has no free GPU yet would stack every replica in one.
            spread[0]["minDomains"] = len(c.zones)
        spec["topologySpreadConstraints"] = spread
    pod_annotations = {MODEL_ANNOTATION: s.model_name}
    if s.simulated_load_seconds is not None:
        pod_annotations[SIMULATED_LOAD_ANNOTATION] = str(s.simulated_load_seconds)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": s.name,
            "namespace": c.namespace,
            "labels": labels,
            "annotations": {MODEL_ANNOTATION: s.model_name},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": s.load_budget_seconds,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": spec,
            },
        },
    }


# --- what a team needs to reach its namespace -----------------------------------------------------


def _own_marks(values: dict[str, str]) -> dict[str, str]:
    """`values` without the portal's own labels and annotations: an object a team applies is the
    team's, and must not look like one the portal manages."""
    return {
        k: v
        for k, v in values.items()
        if k != MANAGED_BY_LABEL and not k.startswith((f"{PORTAL_PREFIX}/", f"{CONTRACT_PREFIX}/"))
    }


def example_deployment(c: GrantContract, s: ServingSpec) -> Manifest:
    """A model server the team can apply to its namespace itself: the serving deployments' own
    builder (the whole contract written out: pool selector, tolerations, GPU limits, priority class,
    spread, probes and a restricted security context), with the team's labels instead of the
    portal's and a selector on its name."""
    manifest = serving_deployment(c, s)
    selector = {APP_NAME_LABEL: s.name}
    for meta in (manifest["metadata"], manifest["spec"]["template"]["metadata"]):
        meta["labels"] = {**_own_marks(meta["labels"]), **selector}
        meta["annotations"] = _own_marks(meta.get("annotations") or {})
        if not meta["annotations"]:
            del meta["annotations"]
    manifest["spec"]["selector"] = {"matchLabels": selector}
    for spread in manifest["spec"]["template"]["spec"].get("topologySpreadConstraints") or []:
        spread["labelSelector"] = {"matchLabels": selector}
    return manifest


def team_kubeconfig(
    *, cluster: str, server: str, certificate_authority: str, namespace: str, user: str
) -> Manifest:
    """A kubeconfig for the grant's namespace that holds no secret: the cluster's address, its CA
    bundle (public) when the portal knows it, the namespace as the context's default, and an empty
    user for the team member's own cluster identity (a token, a client certificate or an exec
    plugin their platform gives them; the portal hands out none)."""
    entry = {"server": server}
    if certificate_authority:
        entry["certificate-authority-data"] = certificate_authority
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": entry}],
        "contexts": [
            {"name": namespace, "context": {"cluster": cluster, "namespace": namespace, "user": user}}
        ],
        "current-context": namespace,
        "users": [{"name": user, "user": {}}],
    }
