"""Pure builders of the cluster-wide objects the portal owns: one PriorityClass per pool class and the
ValidatingAdmissionPolicy that makes the apiserver enforce every grant's scheduling contract.

Nothing here talks to a cluster or the database; the functions return plain manifests that
`pools.kube.ops.apply` server-side applies. Per-grant objects live in `quotas.manifests`.
"""

from dataclasses import dataclass
from typing import Any

from pools.kube.objects import (
    CONTRACT_ACTIVE,
    LABEL_PREFIX,
    LOCAL_QUEUE_ANNOTATION,
    PRODUCT_LABEL,
    QUEUE_NAME_LABEL,
    TYPE_LABEL,
    AdmissionLabel,
    ContractAnnotation,
    Label,
    managed_labels,
)
from pools.models import PoolClass

Manifest = dict[str, Any]

POLICY_NAME = "gpu-capacity-portal-grant-contract"


@dataclass(frozen=True)
class Priority:
    value: int
    preemption_policy: str
    description: str


# Interactive serving must recover first under contention, so it is highest and may preempt; embedding
# and reranking sit behind user-facing RAG requests and may preempt too. Batch and experiments never
# preempt anyone: they wait for free GPUs, and batch jobs borrowing an interactive pool are the first
# to be preempted when interactive traffic arrives (the seed's "batch consumes all accelerators"
# failure mode). Values stay far below the system classes (2e9) and the 1e9 user maximum.
PRIORITIES: dict[str, Priority] = {
    PoolClass.INTERACTIVE: Priority(
        100000, "PreemptLowerPriority", "Interactive inference: user-facing serving, recovers first."
    ),
    PoolClass.EMBEDDING: Priority(
        90000, "PreemptLowerPriority", "Embedding and reranking: retrieval behind user-facing requests."
    ),
    PoolClass.BATCH: Priority(
        50000, "Never", "Batch inference: waits for free GPUs, preempted by serving on borrowed pools."
    ),
    PoolClass.EXPERIMENTATION: Priority(
        10000, "Never", "Experimentation: model trials and benchmarks, never displaces production."
    ),
}


def default_priority_class_name(pool_class: str) -> str:
    return f"gpu-{pool_class}"


def priority_class(name: str, pool_class: str) -> Manifest:
    priority = PRIORITIES[PoolClass(pool_class)]
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name, "labels": managed_labels(**{Label.POOL_CLASS: pool_class})},
        "value": priority.value,
        "preemptionPolicy": priority.preemption_policy,
        "globalDefault": False,
        "description": priority.description,
    }


def priority_classes(names: dict[str, str]) -> list[Manifest]:
    """One PriorityClass per name, `names` mapping each name to its pool class."""
    return [priority_class(name, pool_class) for name, pool_class in sorted(names.items())]


def _cel_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def grant_contract_policy() -> Manifest:
    """The ValidatingAdmissionPolicy every grant namespace is bound to (by `grant_contract_binding`).

    It checks pods on creation (and on updates that change tolerations, the only scheduling field a
    pending pod can still change): a pod asking for GPUs must ask only for the granted resource, no
    more per pod than the grant, must select the granted pool, may tolerate only that pool's taint and
    the generic GPU taint, and must use the grant's PriorityClass; a pod without GPUs may not tolerate
    GPU taints at all, so general workloads stay off GPU nodes. Every message names the grant.
    """
    a = ContractAnnotation
    prefix = _cel_quote(f"{LABEL_PREFIX}/")

    def ann(key: str) -> str:
        return f"variables.contract[{_cel_quote(key)}]"

    grant = f"'grant ' + {ann(a.GRANT)} + ': '"
    variables = [
        {"name": "contract", "expression": "namespaceObject.metadata.annotations"},
        {
            "name": "containers",
            "expression": (
                "object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : [])"
            ),
        },
        {
            # Every GPU resource any container names. Limits suffice: the apiserver refuses an extended
            # resource request without an equal limit, and fills in the request from the limit.
            "name": "gpuResources",
            "expression": (
                "variables.containers.map(c, has(c.resources) && has(c.resources.limits) ? "
                "c.resources.limits.filter(k, k.startsWith('nvidia.com/')) : []).flatten()"
            ),
        },
        {"name": "gpuPod", "expression": "size(variables.gpuResources) > 0"},
        {
            # Init containers are counted as if they ran alongside: stricter than the scheduler's
            # max(init, sum) but never lets a pod through that the quota would count higher.
            "name": "gpus",
            "expression": (
                "variables.containers.map(c, has(c.resources) && has(c.resources.limits) && "
                f"{ann(a.RESOURCE)} in c.resources.limits ? "
                f"quantity(string(c.resources.limits[{ann(a.RESOURCE)}])).asInteger() : 0).sum()"
            ),
        },
        {
            "name": "tolerations",
            "expression": "has(object.spec.tolerations) ? object.spec.tolerations : []",
        },
        {
            "name": "selector",
            "expression": "has(object.spec.nodeSelector) ? object.spec.nodeSelector : {}",
        },
        {
            "name": "selectsPool",
            "expression": (
                f"({ann(a.POOL_LABEL_KEY)} in variables.selector && "
                f"variables.selector[{ann(a.POOL_LABEL_KEY)}] == {ann(a.POOL)}) || "
                "(has(object.spec.affinity) && has(object.spec.affinity.nodeAffinity) && "
                "has(object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution) && "
                "object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                ".nodeSelectorTerms.all(t, has(t.matchExpressions) && t.matchExpressions.exists(e, "
                f"e.key == {ann(a.POOL_LABEL_KEY)} && e.operator == 'In' && has(e.values) && "
                f"size(e.values) > 0 && e.values.all(v, v == {ann(a.POOL)}))))"
            ),
        },
    ]
    gpu_taint = ann(a.GPU_TAINT_KEY)
    taint_key = ann(a.TAINT_KEY)
    key = "(has(t.key) ? t.key : '')"
    validations = [
        {
            "expression": f"!variables.gpuPod || {ann(a.STATE)} == {_cel_quote(CONTRACT_ACTIVE)}",
            "reason": "Forbidden",
            "message": "The grant of this namespace has ended; GPU pods are refused.",
            "messageExpression": f"{grant} + 'the grant is ' + {ann(a.STATE)} + '; GPU pods are refused'",
        },
        {
            "expression": f"variables.gpuResources.all(r, r == {ann(a.RESOURCE)})",
            "reason": "Forbidden",
            "message": "The pod asks for a GPU resource the grant does not cover.",
            "messageExpression": (
                f"{grant} + 'it covers ' + {ann(a.RESOURCE)} + ' only, the pod asks for ' + "
                f"variables.gpuResources.filter(r, r != {ann(a.RESOURCE)}).join(', ')"
            ),
        },
        {
            "expression": f"variables.gpus <= int({ann(a.MAX_PER_POD)})",
            "reason": "Forbidden",
            "message": "The pod asks for more GPUs than the grant allows per pod.",
            "messageExpression": (
                f"{grant} + 'at most ' + {ann(a.MAX_PER_POD)} + ' ' + {ann(a.RESOURCE)} + "
                "' per pod, the pod asks for ' + string(variables.gpus)"
            ),
        },
        {
            "expression": "!variables.gpuPod || variables.selectsPool",
            "reason": "Forbidden",
            "message": "GPU pods must select the granted node pool.",
            "messageExpression": (
                f"{grant} + 'GPU pods must select node pool ' + {ann(a.POOL)} + ' with nodeSelector ' + "
                f"{ann(a.POOL_LABEL_KEY)} + '=' + {ann(a.POOL)} + ' or an equivalent required node affinity'"
            ),
        },
        {
            "expression": (
                f"!({_cel_quote(TYPE_LABEL)} in variables.selector) || "
                f"variables.selector[{_cel_quote(TYPE_LABEL)}] == {ann(a.ACCELERATOR_TYPE)}"
            ),
            "reason": "Forbidden",
            "message": "The pod selects an accelerator type the grant does not cover.",
            "messageExpression": (
                f"{grant} + 'it covers accelerator type ' + {ann(a.ACCELERATOR_TYPE)} + "
                f"', the pod selects ' + variables.selector[{_cel_quote(TYPE_LABEL)}]"
            ),
        },
        {
            "expression": (
                f"!({_cel_quote(PRODUCT_LABEL)} in variables.selector) || "
                f"variables.selector[{_cel_quote(PRODUCT_LABEL)}] == {ann(a.PRODUCT)}"
            ),
            "reason": "Forbidden",
            "message": "The pod selects a GPU product the grant does not cover.",
            "messageExpression": (
                f"{grant} + 'it covers GPU product ' + {ann(a.PRODUCT)} + ', the pod selects ' + "
                f"variables.selector[{_cel_quote(PRODUCT_LABEL)}]"
            ),
        },
        {
            # An empty key with operator Exists tolerates every taint, so it is never allowed; the
            # pool taint must be matched by value, or it would tolerate every pool.
            "expression": (
                "!variables.gpuPod || variables.tolerations.all(t, "
                f"{key} == {taint_key} ? "
                "((!has(t.operator) || t.operator == 'Equal') && "
                f"has(t.value) && t.value == {ann(a.TAINT_VALUE)})"
                f" : ({key} == {gpu_taint} || ({key} != '' && !{key}.startsWith({prefix}))))"
            ),
            "reason": "Forbidden",
            "message": "GPU pods may tolerate only the granted pool's taint and the GPU taint.",
            "messageExpression": (
                f"{grant} + 'GPU pods may tolerate only ' + {taint_key} + '=' + {ann(a.TAINT_VALUE)} + "
                f"' (pool ' + {ann(a.POOL)} + ') and ' + {gpu_taint} + ', not other pools\\' taints'"
            ),
        },
        {
            "expression": (
                "variables.gpuPod || variables.tolerations.all(t, "
                f"{key} != '' && {key} != {gpu_taint} && {key} != {taint_key} && !{key}.startsWith({prefix}))"
            ),
            "reason": "Forbidden",
            "message": "Pods without GPUs may not tolerate GPU node taints.",
            "messageExpression": (
                f"{grant} + 'pods without GPUs may not tolerate GPU node taints; "
                "GPU nodes are kept for GPU workloads'"
            ),
        },
        {
            "expression": (
                "!variables.gpuPod || (has(object.spec.priorityClassName) && "
                f"object.spec.priorityClassName == {ann(a.PRIORITY_CLASS)})"
            ),
            "reason": "Forbidden",
            "message": "GPU pods must use the grant's PriorityClass.",
            "messageExpression": (
                f"{grant} + 'GPU pods must use priorityClassName ' + {ann(a.PRIORITY_CLASS)}"
            ),
        },
        {
            # nodeName bypasses the scheduler, and with it every taint and selector check.
            "expression": (
                "request.operation != 'CREATE' || !has(object.spec.nodeName) || object.spec.nodeName == ''"
            ),
            "reason": "Forbidden",
            "message": "Pods may not set spec.nodeName.",
            "messageExpression": f"{grant} + 'pods may not set spec.nodeName; let the scheduler place them'",
        },
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME, "labels": managed_labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                # Only portal namespaces, whatever a binding says.
                "namespaceSelector": {"matchLabels": managed_labels()},
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods"],
                    }
                ],
            },
            "matchConditions": [
                {
                    "name": "creation-or-toleration-change",
                    "expression": (
                        "request.operation == 'CREATE' || "
                        "(has(object.spec.tolerations) ? object.spec.tolerations : []) != "
                        "(has(oldObject.spec.tolerations) ? oldObject.spec.tolerations : [])"
                    ),
                }
            ],
            "variables": variables,
            "validations": validations,
        },
    }


def grant_contract_binding() -> Manifest:
    """The one binding of the grant contract policy: every portal namespace that belongs to a grant.

    One binding per cluster rather than one per grant: the apiserver loads new bindings on a refresh
    loop (about a second), whereas a namespace that matches an existing binding is under the policy as
    soon as it exists, so a new grant is enforced at once. The policy reads each namespace's own
    contract from its annotations, so one binding serves every grant.
    """
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME, "labels": managed_labels()},
        "spec": {
            "policyName": POLICY_NAME,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {
                    "matchLabels": managed_labels(),
                    "matchExpressions": [{"key": Label.GRANT, "operator": "Exists"}],
                }
            },
        },
    }


# --- the queue contract: Jobs in namespaces whose grant queues through Kueue ---------------------
# Part of the grant contract, kept in a ValidatingAdmissionPolicy of its own because it checks
# another kind: the apiserver type-checks every expression of a policy against every kind the policy
# matches, so the pod rules above would warn on (and fail for) Jobs, and the other way round.

QUEUE_POLICY_NAME = "gpu-capacity-portal-queue-contract"


def grant_queue_policy() -> Manifest:
    """Jobs in a queued grant's namespace must name its LocalQueue with QUEUE_NAME_LABEL, on creation
    and on every update: Kueue only manages a Job that names a queue, and one that does not would
    run beside the queue (bounded only by the namespace's ResourceQuota), unseen by the cohort."""
    grant = f"namespaceObject.metadata.annotations[{_cel_quote(ContractAnnotation.GRANT)}]"
    queue = f"namespaceObject.metadata.annotations[{_cel_quote(LOCAL_QUEUE_ANNOTATION)}]"
    label = _cel_quote(QUEUE_NAME_LABEL)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": QUEUE_POLICY_NAME, "labels": managed_labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": managed_labels()},
                "resourceRules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["jobs"],
                    }
                ],
            },
            "validations": [
                {
                    "expression": (
                        f"has(object.metadata.labels) && {label} in object.metadata.labels && "
                        f"object.metadata.labels[{label}] == {queue}"
                    ),
                    "reason": "Forbidden",
                    "message": "Jobs in this namespace must name its LocalQueue with the label "
                    f"{QUEUE_NAME_LABEL}.",
                    "messageExpression": (
                        f"'grant ' + {grant} + ': Jobs here are queued by Kueue; label the Job "
                        f"{QUEUE_NAME_LABEL}=' + {queue} + ' (LocalQueue ' + {queue} + "
                        "' of namespace ' + namespaceObject.metadata.name + ')'"
                    ),
                }
            ],
        },
    }


def grant_queue_binding() -> Manifest:
    """One binding per cluster, like grant_contract_binding: the namespaces of queued grants, which
    alone carry the admission label."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": QUEUE_POLICY_NAME, "labels": managed_labels()},
        "spec": {
            "policyName": QUEUE_POLICY_NAME,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {
                    "matchLabels": managed_labels(**{AdmissionLabel.KEY: AdmissionLabel.KUEUE}),
                    "matchExpressions": [{"key": Label.GRANT, "operator": "Exists"}],
                }
            },
        },
    }
