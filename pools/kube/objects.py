"""The cluster vocabulary: the one spelling of every label, annotation, resource name and taint the
portal reads or writes, and the pure readers of objects as the apiserver serves them (camelCase JSON
dicts).

No client and no Django here: manifest builders, discovery, conformance, the approval pre-flight and
the utilisation figures all read nodes and pods through these functions, so they agree on what a GPU
node, a Ready node, a pool's taint or a pod's GPU request is.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

Json = dict[str, Any]

# --- node labels and taints (set by the platform's node provisioning and GPU Feature Discovery) -----

LABEL_PREFIX = "accelerator.platform.example.com"
POOL_LABEL = f"{LABEL_PREFIX}/pool"
POOL_CLASS_LABEL = f"{LABEL_PREFIX}/pool-class"
TYPE_LABEL = f"{LABEL_PREFIX}/type"
MEMORY_LABEL = f"{LABEL_PREFIX}/memory"
MIG_PROFILE_LABEL = f"{LABEL_PREFIX}/mig-profile"
# Every GPU node carries GPU_TAINT_KEY=true:NoSchedule besides its pool's own taint.
GPU_TAINT_KEY = f"{LABEL_PREFIX}/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Set by the workload controllers on the pods they create: the hash names the template revision, so
# the pods of one revision of one Deployment (or StatefulSet) share it and nobody else's pods do.
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
CONTROLLER_REVISION_HASH_LABEL = "controller-revision-hash"
# The recommended label naming an application; the selector of a Deployment that gave none.
APP_NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
ARCH_LABEL = "kubernetes.io/arch"
OS_LABEL = "kubernetes.io/os"
# GPU Feature Discovery's count of whole GPUs, and of MIG slices per profile (`nvidia.com/mig-<p>.count`).
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
# Effects that keep pods without a matching toleration off a node.
REPELLING_EFFECTS = ("NoSchedule", "NoExecute")

# --- resources ----------------------------------------------------------------------------------

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


def is_gpu_resource(name: str) -> bool:
    return name == GPU_RESOURCE or name.startswith(MIG_RESOURCE_PREFIX)


def gpu_resource_name(mig_profile: str = "") -> str:
    """The extended resource the device plugin advertises: a whole GPU, or one MIG profile."""
    return f"{MIG_RESOURCE_PREFIX}{mig_profile}" if mig_profile else GPU_RESOURCE


def quota_key(resource: str) -> str:
    # Extended resources can only be limited by their request in a ResourceQuota.
    return f"requests.{resource}"


# --- the portal's own labels and annotations on the objects it makes --------------------------------

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "gpu-capacity-portal"
# The one field manager the portal applies with: every field it owns is attributed to it, so a hand
# edit shows up as a conflict and a re-apply restores the portal's value.
FIELD_MANAGER = MANAGED_BY
# The portal's own prefix, kept apart from the node-label prefix so nobody can mistake a namespace
# label for a node property.
PORTAL_PREFIX = "capacity.platform.example.com"
CONTRACT_PREFIX = f"contract.{PORTAL_PREFIX}"


# --- node groups: Karpenter and the cluster-autoscaler -------------------------------------------

KARPENTER_GROUP = "karpenter.sh"
KARPENTER_VERSION = "v1"
KARPENTER_API = f"{KARPENTER_GROUP}/{KARPENTER_VERSION}"
NODEPOOL_KIND, NODEPOOL_PLURAL = "NodePool", "nodepools"
NODECLAIM_KIND, NODECLAIM_PLURAL = "NodeClaim", "nodeclaims"
# On every node and NodeClaim Karpenter makes: the NodePool it belongs to.
NODEPOOL_LABEL = f"{KARPENTER_GROUP}/nodepool"
CAPACITY_TYPE_LABEL = f"{KARPENTER_GROUP}/capacity-type"
# Labels a node gets from its NodePool's requirements and its instance type even though no template
# label names them: a pod selecting one of these is judged by the requirement alone.
WELL_KNOWN_NODE_LABELS = frozenset(
    {
        ZONE_LABEL,
        REGION_LABEL,
        HOSTNAME_LABEL,
        INSTANCE_TYPE_LABEL,
        ARCH_LABEL,
        OS_LABEL,
        CAPACITY_TYPE_LABEL,
        NODEPOOL_LABEL,
    }
)
# Karpenter's AWS provider states an instance type's GPUs as requirement labels.
AWS_GPU_COUNT_LABEL = "karpenter.k8s.aws/instance-gpu-count"
# The cluster-autoscaler's node-template tags of a cloud node group (scale from zero): the labels,
# taints ("value:Effect") and resources its nodes will have.
CA_TEMPLATE_PREFIX = "k8s.io/cluster-autoscaler/node-template/"
CA_TEMPLATE_LABEL = f"{CA_TEMPLATE_PREFIX}label/"
CA_TEMPLATE_TAINT = f"{CA_TEMPLATE_PREFIX}taint/"
CA_TEMPLATE_RESOURCE = f"{CA_TEMPLATE_PREFIX}resources/"


class Label:
    """Labels on the namespaces and objects the portal makes. Every grant namespace carries GRANT
    (the value is the grant's id): the one policy binding selects namespaces by it, so a namespace is
    under the contract the moment it exists."""

    TEAM = f"{PORTAL_PREFIX}/team"
    POOL_CLASS = f"{PORTAL_PREFIX}/pool-class"
    ACCELERATOR = f"{PORTAL_PREFIX}/accelerator"
    POOL = f"{PORTAL_PREFIX}/pool"
    GRANT = f"{PORTAL_PREFIX}/grant"
    DEPLOYMENT = f"{PORTAL_PREFIX}/serving-deployment"
    # Placeholder pods holding a pool's warm headroom (the value is the pool's name); their namespace
    # carries it with the value "true".
    WARM_HEADROOM = f"{PORTAL_PREFIX}/warm-headroom"
    # Declares cluster-autoscaler node groups to the portal: a ConfigMap in the warm-headroom namespace.
    NODE_GROUPS = f"{PORTAL_PREFIX}/node-groups"


MODEL_ANNOTATION = f"{PORTAL_PREFIX}/model"
# On pods the injection policy completed: what it added (nodeSelector, tolerations, ...), comma-separated.
INJECTED_ANNOTATION = f"{PORTAL_PREFIX}/injected"
# Read by the local testbed's kwok Stages only (testbed/README.md): the pod becomes Ready this many
# seconds after its container starts. The portal sets it only where a setting asks for simulated model
# loads (PORTAL_SIMULATED_MODEL_LOAD); real clusters ignore it and load for real.
SIMULATED_LOAD_ANNOTATION = "gpu-portal.example.com/simulated-load-seconds"


class ContractAnnotation:
    """Namespace annotations the contract policy reads through `namespaceObject`.

    Annotations on the namespace rather than a params ConfigMap inside it: the team's `edit` role can
    change ConfigMaps in its namespace but not the namespace itself, so the contract stays the portal's.
    """

    GRANT = f"{CONTRACT_PREFIX}/grant"
    STATE = f"{CONTRACT_PREFIX}/state"
    RESOURCE = f"{CONTRACT_PREFIX}/resource"
    MAX_PER_POD = f"{CONTRACT_PREFIX}/max-gpus-per-pod"
    POOL_LABEL_KEY = f"{CONTRACT_PREFIX}/pool-label-key"
    POOL = f"{CONTRACT_PREFIX}/pool"
    ACCELERATOR_TYPE = f"{CONTRACT_PREFIX}/accelerator-type"
    PRODUCT = f"{CONTRACT_PREFIX}/gpu-product"
    TAINT_KEY = f"{CONTRACT_PREFIX}/taint-key"
    TAINT_VALUE = f"{CONTRACT_PREFIX}/taint-value"
    GPU_TAINT_KEY = f"{CONTRACT_PREFIX}/gpu-taint-key"
    PRIORITY_CLASS = f"{CONTRACT_PREFIX}/priority-class"
    # Read only by the injection policy, which completes pods with what the grant implies: the
    # pool taint's effect, the PriorityClass's value and preemption policy (the Priority admission
    # plugin runs before any admission policy, so whoever sets the class name must set these too),
    # and the number of zones of the pool (the zone spread of serving deployments).
    TAINT_EFFECT = f"{CONTRACT_PREFIX}/taint-effect"
    PRIORITY = f"{CONTRACT_PREFIX}/priority"
    PREEMPTION_POLICY = f"{CONTRACT_PREFIX}/preemption-policy"
    ZONES = f"{CONTRACT_PREFIX}/zones"


# The value the STATE annotation has while the grant may run GPU pods.
CONTRACT_ACTIVE = "active"


def managed_labels(**extra: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, **extra}


def managed_selector() -> str:
    """A label selector for every object the portal made."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY}"


# --- reading objects ----------------------------------------------------------------------------


def name_of(obj: Json) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def labels_of(obj: Json) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def key_of(obj: Json) -> str:
    """namespace/name, as messages and pod lists name pods."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _quantity(text: str) -> Decimal:
    try:
        return parse_quantity(text)
    except ValueError:
        return Decimal(0)


def quantity(value: object) -> Decimal:
    """A Kubernetes quantity ("8", "500m", "1Ki"); 0 for anything unreadable, so one malformed object
    cannot stop the figures of a whole cluster. The same few strings recur across thousands of pods,
    hence the cache."""
    return _quantity(str(value).strip())


def same_quantity(a: object, b: object) -> bool:
    """Whether two quantities are equal ("1000m" and "1"); False when either is unreadable."""
    try:
        return parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return False


def selector_text(selector: Mapping[str, str]) -> str:
    """A label selector (and its human spelling): k1=v1,k2=v2, sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# Nodes


def node_ready(node: Json) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def node_cordoned(node: Json) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def node_schedulable(node: Json) -> bool:
    """Ready and not cordoned: only such a node takes new pods, so only it has free GPUs."""
    return node_ready(node) and not node_cordoned(node)


def node_taints(node: Json) -> list[Json]:
    return (node.get("spec") or {}).get("taints") or []


def node_zone(node: Json) -> str:
    return labels_of(node).get(ZONE_LABEL, "")


def node_pool_label(node: Json) -> str:
    return labels_of(node).get(POOL_LABEL, "")


def node_allocatable(node: Json) -> dict[str, str]:
    return (node.get("status") or {}).get("allocatable") or {}


def node_gpu_allocatable(node: Json) -> dict[str, int]:
    return {name: int(quantity(v)) for name, v in node_allocatable(node).items() if is_gpu_resource(name)}


def carries_taint(node: Json, taint: Mapping[str, str]) -> bool:
    """Whether the node carries exactly `taint` (key, value and effect). The effect must match too: the
    pool's pods tolerate the pool's effect only, so a node tainted NoExecute instead of NoSchedule would
    keep them off as well as everybody else."""
    return any(
        t.get("key") == taint["key"]
        and (t.get("value") or "") == (taint.get("value") or "")
        and t.get("effect") == taint["effect"]
        for t in node_taints(node)
    )


def has_repelling_taint(node: Json, key: str) -> bool:
    """Whether any taint with `key` keeps untolerating pods off the node."""
    return any(t.get("key") == key and t.get("effect") in REPELLING_EFFECTS for t in node_taints(node))


def toleration_for(taint: Mapping[str, str]) -> Json:
    return {
        "key": taint["key"],
        "operator": "Equal",
        "value": taint.get("value", ""),
        "effect": taint["effect"],
    }


def pool_taint(pool: str) -> dict[str, str]:
    """The taint a pool's nodes carry when nobody said otherwise."""
    return {"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}


GPU_TAINT = {"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}


# Pods


def _container_requests(container: Json) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    # Extended resources cannot be overcommitted: a request, when given, equals the limit, and the
    # apiserver copies a lone limit into the request. Hand-written specs often carry only limits.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: quantity(v) for name, v in merged.items() if is_gpu_resource(name)}


# Where a pod cache keeps each pod's GPU requests, worked out once when the pod arrives
# (with_gpu_requests), instead of on every recompute of the figures: at 50,000 pods parsing their
# quantities was half of each recompute.
GPU_REQUESTS = "gpuRequests"


def pod_gpu_requests(pod: Json) -> dict[str, int]:
    """The GPU resources the scheduler reserves for `pod`, by resource name: max(largest init
    container, sum of containers), with restartable init containers (sidecars) counted alongside the
    containers, plus pod overhead. A request of 0 is none. Read-only: a cached pod's is shared."""
    if (known := pod.get(GPU_REQUESTS)) is not None:
        return known
    spec = pod.get("spec") or {}
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for container in spec.get("containers") or []:
        for name, value in _container_requests(container).items():
            totals[name] += value
    # Init containers run one after another, each next to the sidecars started before it; sidecars
    # (restartPolicy Always) then keep running next to the containers.
    sidecars: dict[str, Decimal] = defaultdict(Decimal)
    init_peak: dict[str, Decimal] = defaultdict(Decimal)
    for container in spec.get("initContainers") or []:
        requests = _container_requests(container)
        if container.get("restartPolicy") == "Always":
            for name, value in requests.items():
                sidecars[name] += value
                init_peak[name] = max(init_peak[name], sidecars[name])
        else:
            for name, value in requests.items():
                init_peak[name] = max(init_peak[name], value + sidecars[name])
    result: dict[str, int] = {}
    overhead = {k: quantity(v) for k, v in (spec.get("overhead") or {}).items() if is_gpu_resource(k)}
    for name in set(totals) | set(init_peak) | set(sidecars) | set(overhead):
        value = max(totals[name] + sidecars[name], init_peak[name]) + overhead.get(name, Decimal(0))
        if value > 0:
            result[name] = int(value)
    return result


_SHARED_REQUESTS: dict[tuple[tuple[str, int], ...], dict[str, int]] = {}


def with_gpu_requests(trim: Callable[[Json], Json]) -> Callable[[Json], Json]:
    """A pod cache's transform: what `trim` keeps, plus the pod's GPU requests under GPU_REQUESTS
    (computed from the whole pod). Pods asking for the same GPUs share one dict, so thousands of
    pods keep a handful."""

    def transform(pod: Json) -> Json:
        requests = pod_gpu_requests(pod)
        key = tuple(sorted(requests.items()))
        shared = _SHARED_REQUESTS.get(key)
        if shared is None:
            # Bounded: the distinct request shapes of a cluster are few; past that, no sharing.
            shared = _SHARED_REQUESTS.setdefault(key, requests) if len(_SHARED_REQUESTS) < 1024 else requests
        return {**trim(pod), GPU_REQUESTS: shared}

    return transform


def requests_gpu(pod: Json) -> bool:
    return bool(pod_gpu_requests(pod))


TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def pod_finished(pod: Json) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def pod_unschedulable_reason(pod: Json) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("reason") or ""
    return ""


# Node selection: a pod's nodeSelector and required node affinity against a node's labels.


def expression_matches(expression: Json, labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if operator == "Gt" else have < want
    return False


def required_affinity_terms(pod: Json) -> list[list[Json]]:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return [term.get("matchExpressions") or [] for term in required.get("nodeSelectorTerms") or []]


def pod_selects(pod: Json, labels: Mapping[str, str], keys: frozenset[str] | None = None) -> bool:
    """Whether a node with `labels` satisfies the pod's nodeSelector and required node affinity,
    judging only constraints on `keys` when given."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    for key, value in selector.items():
        if (keys is None or key in keys) and labels.get(key) != value:
            return False
    terms = required_affinity_terms(pod)
    if not terms:
        return True
    # Terms are ORed, expressions inside a term ANDed.
    return any(
        all(expression_matches(e, labels) for e in term if keys is None or e.get("key") in keys)
        for term in terms
    )


def constrained_keys(pod: Json) -> set[str]:
    """The label keys the pod's placement constrains."""
    keys = set(((pod.get("spec") or {}).get("nodeSelector") or {}).keys())
    for term in required_affinity_terms(pod):
        keys |= {e.get("key", "") for e in term}
    return keys


def condition_of(obj: Json, kind: str) -> Json | None:
    """The status condition `kind` of any object as the apiserver serves it, or None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def condition_true(obj: Json, kind: str) -> bool:
    return (condition_of(obj, kind) or {}).get("status") == "True"


def pod_scheduling_gated(pod: Json) -> bool:
    """Held back before scheduling by a gate (a queue or quota admission such as Kueue's)."""
    return pod_unschedulable_reason(pod) == "SchedulingGated" or bool(
        (pod.get("spec") or {}).get("schedulingGates")
    )


def is_warm_placeholder(pod: Json) -> bool:
    return bool(labels_of(pod).get(Label.WARM_HEADROOM))


def taint_text(taint: Mapping[str, str]) -> str:
    value = taint.get("value") or ""
    return f"{taint.get('key', '')}{'=' + value if value else ''}:{taint.get('effect', '')}"


def names_listed(objects: Iterable[Json], limit: int = 5) -> str:
    """ "a, b, c and 4 more": object names for a message."""
    names = sorted(name_of(o) for o in objects)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# Workloads: controllers, readiness, container troubles and the events that explain them.

# Event reasons the diagnosis reads (pools.utilisation.workloads watches each with a field selector).
FAILED_CREATE_REASON = "FailedCreate"  # a controller's pod create was refused (quota, policy, ...)
NOMINATED_REASON = "Nominated"  # Karpenter: a node is being brought up for the pod
SCALE_UP_REASON = "TriggeredScaleUp"  # cluster-autoscaler: a node group is growing for the pod
NODE_BRING_UP_REASONS = (NOMINATED_REASON, SCALE_UP_REASON)

# Container waiting reasons, by what the team has to do about them.
IMAGE_PULL_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
        "SignatureValidationFailed",
    }
)
CRASH_LOOP_REASON = "CrashLoopBackOff"
CONTAINER_ERROR_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreStartHookError"}
)


def controller_of(obj: Json) -> Json | None:
    """The owner reference marked as controller (kind, name, uid), or None for a bare object."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return {"kind": ref.get("kind", ""), "name": ref.get("name", ""), "uid": ref.get("uid", "")}
    return None


def pod_ready(pod: Json) -> bool:
    return condition_true(pod, "Ready")


def container_troubles(pod: Json) -> list[Json]:
    """Containers (init ones included) waiting for a reason the team must act on: the image cannot be
    pulled, the container keeps crashing, or it cannot be created or started. Each with the kubelet's
    message, its restart count and how it last ended."""
    status = pod.get("status") or {}
    troubles = []
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason not in IMAGE_PULL_REASONS | CONTAINER_ERROR_REASONS | {CRASH_LOOP_REASON}:
            continue
        last = ((container.get("lastState") or {}).get("terminated")) or {}
        ended = ""
        if last:
            ended = f"{last.get('reason') or 'terminated'} (exit code {last.get('exitCode', '?')})"
        troubles.append(
            {
                "container": container.get("name", ""),
                "reason": reason,
                "message": waiting.get("message") or "",
                "restarts": int(container.get("restartCount") or 0),
                "last": ended,
            }
        )
    return troubles


# --- Kueue: batch and experimentation queueing ----------------------------------------------------
# The portal writes Kueue objects of this API version only (the CRDs of Kueue v0.17 also serve
# v1beta1, without a conversion webhook): a cluster that does not serve it is one without Kueue.

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
KUEUE_API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
# Kueue manages a Job only when it names a LocalQueue of its namespace with this label.
QUEUE_NAME_LABEL = f"{KUEUE_GROUP}/queue-name"
CPU_RESOURCE = "cpu"
MEMORY_RESOURCE = "memory"


class AdmissionLabel:
    """How a grant namespace admits GPU work: its value is an AdmissionMode of pools.models
    ("kueue" namespaces only carry it, so the queue contract's binding selects them by it)."""

    KEY = f"{PORTAL_PREFIX}/admission"
    KUEUE = "kueue"


# Namespace annotation the queue contract reads: the LocalQueue every Job must name.
LOCAL_QUEUE_ANNOTATION = f"{CONTRACT_PREFIX}/local-queue"


def kueue_webhook_failure(message: str) -> bool:
    """Whether an apiserver refusal is Kueue's fail-closed webhook not answering (Kueue down or
    unreachable), rather than Kueue or a policy deciding against the object. On a cluster the hook
    is called through Kueue's Service (kueue-webhook-service); on the testbed its name says kueue."""
    text = message.lower()
    return "failed calling webhook" in text and "kueue" in text
