"""Pure builders of the cluster-wide objects the portal owns: one PriorityClass per pool class, the
ValidatingAdmissionPolicy that makes the apiserver enforce every grant's scheduling contract, and the
two MutatingAdmissionPolicies that complete what plain manifests leave out (the contract's placement
and priority on GPU pods, a selector on Deployments and StatefulSets that give none).

Nothing here talks to a cluster or the database; the functions return plain manifests that
`pools.kube.ops.apply` server-side applies. Per-grant objects live in `quotas.manifests`.
"""

from dataclasses import dataclass
from typing import Any

from pools.kube.objects import (
    APP_NAME_LABEL,
    CONTRACT_ACTIVE,
    CONTROLLER_REVISION_HASH_LABEL,
    GPU_TAINT,
    HOSTNAME_LABEL,
    INJECTED_ANNOTATION,
    LABEL_PREFIX,
    LOCAL_QUEUE_ANNOTATION,
    POD_TEMPLATE_HASH_LABEL,
    PRODUCT_LABEL,
    QUEUE_NAME_LABEL,
    TYPE_LABEL,
    ZONE_LABEL,
    AdmissionLabel,
    ContractAnnotation,
    Label,
    managed_labels,
)
from pools.models import PoolClass

Manifest = dict[str, Any]

POLICY_NAME = "gpu-capacity-portal-grant-contract"
# Mutation runs before validation: this one completes GPU pods, then POLICY_NAME checks them.
INJECTION_POLICY_NAME = "gpu-capacity-portal-grant-injection"
SELECTOR_POLICY_NAME = "gpu-capacity-portal-workload-selector"


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


def priority_of(pool_class: str) -> Priority:
    return PRIORITIES[PoolClass(pool_class)]


def priority_class(name: str, pool_class: str) -> Manifest:
    priority = priority_of(pool_class)
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


def _grant_namespaces() -> Manifest:
    """The namespaces every binding selects: the portal's, and only those that belong to a grant."""
    return {
        "matchLabels": managed_labels(),
        "matchExpressions": [{"key": Label.GRANT, "operator": "Exists"}],
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
            "matchResources": {"namespaceSelector": _grant_namespaces()},
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


# --- injection: what the grant implies, added to what the pod left out --------------------------


def _mutating_binding(policy: str) -> Manifest:
    """One binding per mutating policy and cluster, for the reason given at grant_contract_binding."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": policy, "labels": managed_labels()},
        "spec": {"policyName": policy, "matchResources": {"namespaceSelector": _grant_namespaces()}},
    }


def _json_pointer(cel_key: str) -> str:
    return f"jsonpatch.escapeKey({cel_key})"


def grant_injection_policy() -> Manifest:
    """The MutatingAdmissionPolicy that completes a GPU pod with what its grant implies.

    For a pod the grant admits (only the granted resource, at most the grant's units per pod, the
    grant active), it adds what the pod left out and never changes what it states: the pool's node
    selector unless the pod constrains the pool itself (or names an accelerator type or GPU product
    in its node affinity that the grant does not cover), a toleration of the GPU taint and one of the
    pool's taint unless the pod tolerates a taint with that key already, the grant's PriorityClass
    (name, value and preemption policy) unless the pod names a class, and for pods of a Deployment,
    ReplicaSet or StatefulSet without any topology spread the zone and host spread of the serving
    deployments. What it added is listed in the pod's INJECTED_ANNOTATION.

    A pod the grant does not admit is left as it is, so the contract policy (which runs after every
    mutation) refuses it with its own message. Pods without GPUs are never touched. The policy
    fails open (Ignore): a pod it could not complete is still checked by the contract policy, and
    grant reconciles notice (the ContractInjected condition) when injection is not in force.
    """
    a = ContractAnnotation
    required = (
        a.RESOURCE,
        a.MAX_PER_POD,
        a.POOL_LABEL_KEY,
        a.POOL,
        a.ACCELERATOR_TYPE,
        a.PRODUCT,
        a.TAINT_KEY,
        a.TAINT_VALUE,
        a.TAINT_EFFECT,
        a.GPU_TAINT_KEY,
        a.PRIORITY_CLASS,
        a.PRIORITY,
        a.PREEMPTION_POLICY,
        a.ZONES,
    )

    def ann(key: str) -> str:
        return f"variables.contract[{_cel_quote(key)}]"

    limits = "(has(c.resources) && has(c.resources.limits) ? c.resources.limits : {})"
    spread_selector = (
        "Object.spec.topologySpreadConstraints.labelSelector{matchLabels: "
        "{variables.spreadKey: variables.labels[variables.spreadKey]}}"
    )

    def zone_spread(when: str, min_domains: str = "") -> str:
        return (
            "Object.spec.topologySpreadConstraints{maxSkew: 1, "
            f"topologyKey: {_cel_quote(ZONE_LABEL)}, whenUnsatisfiable: {_cel_quote(when)}, "
            f"{min_domains}labelSelector: {spread_selector}, "
            "nodeAffinityPolicy: 'Honor', nodeTaintsPolicy: 'Honor'}"
        )

    host_spread = (
        "Object.spec.topologySpreadConstraints{maxSkew: 1, "
        f"topologyKey: {_cel_quote(HOSTNAME_LABEL)}, whenUnsatisfiable: 'ScheduleAnyway', "
        f"labelSelector: {spread_selector}}}"
    )
    gpu_taint = _cel_quote(GPU_TAINT["value"])
    gpu_effect = _cel_quote(GPU_TAINT["effect"])
    injected = _cel_quote(INJECTED_ANNOTATION)
    variables = [
        {"name": "contract", "expression": "namespaceObject.metadata.?annotations.orValue({})"},
        {
            "name": "containers",
            "expression": (
                "object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : [])"
            ),
        },
        {
            "name": "gpuResources",
            "expression": (
                f"variables.containers.map(c, {limits}.filter(k, k.startsWith('nvidia.com/'))).flatten()"
            ),
        },
        {
            "name": "complete",
            "expression": f"[{', '.join(_cel_quote(k) for k in required)}].all(k, k in variables.contract)",
        },
        {
            # The same count as the contract policy's (init containers counted alongside).
            "name": "gpus",
            "expression": (
                f"!variables.complete ? 0 : variables.containers.map(c, {ann(a.RESOURCE)} in {limits} ? "
                f"quantity(string({limits}[{ann(a.RESOURCE)}])).asInteger() : 0).sum()"
            ),
        },
        {
            "name": "admitted",
            "expression": (
                "variables.complete && "
                f"variables.contract[?{_cel_quote(a.STATE)}].orValue('') == {_cel_quote(CONTRACT_ACTIVE)} && "
                f"variables.gpuResources.all(r, r == {ann(a.RESOURCE)}) && "
                f"variables.gpus > 0 && variables.gpus <= int({ann(a.MAX_PER_POD)})"
            ),
        },
        {"name": "selector", "expression": "object.spec.?nodeSelector.orValue({})"},
        {
            "name": "affinity",
            "expression": (
                "object.spec.?affinity.?nodeAffinity.?requiredDuringSchedulingIgnoredDuringExecution"
                ".?nodeSelectorTerms.orValue([]).map(t, t.?matchExpressions.orValue([])).flatten()"
            ),
        },
        {
            # Placement the pod states itself is left alone: a pod that names the pool key (any
            # value) or an accelerator type or product the grant does not cover in its affinity
            # is refused by the contract policy, or kept off the pool, as its author wrote it.
            "name": "injectPool",
            "expression": (
                f"!({ann(a.POOL_LABEL_KEY)} in variables.selector) && "
                f"!variables.affinity.exists(e, e.key == {ann(a.POOL_LABEL_KEY)}) && "
                "variables.affinity.all(e, "
                f"(e.key != {_cel_quote(TYPE_LABEL)} || (e.operator == 'In' && "
                f"e.?values.orValue([]).all(v, v == {ann(a.ACCELERATOR_TYPE)}))) && "
                f"(e.key != {_cel_quote(PRODUCT_LABEL)} || (e.operator == 'In' && "
                f"e.?values.orValue([]).all(v, v == {ann(a.PRODUCT)}))))"
            ),
        },
        {"name": "tolerations", "expression": "object.spec.?tolerations.orValue([])"},
        {
            "name": "missingTolerations",
            "expression": (
                f"(variables.tolerations.exists(t, t.?key.orValue('') == {ann(a.GPU_TAINT_KEY)}) ? [] : "
                f"[{{'key': {ann(a.GPU_TAINT_KEY)}, 'operator': 'Equal', "
                f"'value': {gpu_taint}, 'effect': {gpu_effect}}}]) + "
                f"(variables.tolerations.exists(t, t.?key.orValue('') == {ann(a.TAINT_KEY)}) || "
                f"{ann(a.TAINT_KEY)} == {ann(a.GPU_TAINT_KEY)} ? [] : "
                f"[{{'key': {ann(a.TAINT_KEY)}, 'operator': 'Equal', "
                f"'value': {ann(a.TAINT_VALUE)}, 'effect': {ann(a.TAINT_EFFECT)}}}])"
            ),
        },
        {"name": "injectPriority", "expression": "object.spec.?priorityClassName.orValue('') == ''"},
        {"name": "labels", "expression": "object.metadata.?labels.orValue({})"},
        {
            "name": "spreadKey",
            "expression": (
                f"{_cel_quote(POD_TEMPLATE_HASH_LABEL)} in variables.labels ? "
                f"{_cel_quote(POD_TEMPLATE_HASH_LABEL)} : "
                f"({_cel_quote(CONTROLLER_REVISION_HASH_LABEL)} in variables.labels ? "
                f"{_cel_quote(CONTROLLER_REVISION_HASH_LABEL)} : '')"
            ),
        },
        {
            "name": "injectSpread",
            "expression": (
                "variables.spreadKey != '' && size(object.spec.?topologySpreadConstraints.orValue([])) == 0"
            ),
        },
        {
            "name": "added",
            "expression": (
                "(variables.injectPool ? ['nodeSelector'] : []) + "
                "(size(variables.missingTolerations) > 0 ? ['tolerations'] : []) + "
                "(variables.injectPriority ? ['priorityClassName'] : []) + "
                "(variables.injectSpread ? ['topologySpreadConstraints'] : [])"
            ),
        },
    ]
    pool_key = ann(a.POOL_LABEL_KEY)
    patches = " + ".join(
        [
            "(!variables.injectPool ? [] : size(variables.selector) > 0 ? "
            f"[JSONPatch{{op: 'add', path: '/spec/nodeSelector/' + {_json_pointer(pool_key)}, "
            f"value: {ann(a.POOL)}}}] : "
            f"[JSONPatch{{op: 'add', path: '/spec/nodeSelector', value: {{{pool_key}: {ann(a.POOL)}}}}}])",
            # Lists are created empty and filled one item at a time: the apiserver (v1.36) cannot turn
            # a CEL list of maps into a patch value.
            "(size(variables.missingTolerations) == 0 || size(variables.tolerations) > 0 ? [] : "
            "[JSONPatch{op: 'add', path: '/spec/tolerations', value: []}]) + "
            "variables.missingTolerations.map(t, "
            "JSONPatch{op: 'add', path: '/spec/tolerations/-', value: t})",
            # The Priority admission plugin has already resolved the empty class to priority 0.
            "(!variables.injectPriority ? [] : ["
            f"JSONPatch{{op: 'add', path: '/spec/priorityClassName', value: {ann(a.PRIORITY_CLASS)}}}, "
            f"JSONPatch{{op: 'add', path: '/spec/priority', value: int({ann(a.PRIORITY)})}}, "
            f"JSONPatch{{op: 'add', path: '/spec/preemptionPolicy', value: {ann(a.PREEMPTION_POLICY)}}}])",
            "(!variables.injectSpread ? [] : ["
            "JSONPatch{op: 'add', path: '/spec/topologySpreadConstraints', value: []}, "
            "JSONPatch{op: 'add', path: '/spec/topologySpreadConstraints/-', "
            f"value: int({ann(a.ZONES)}) > 1 ? "
            f"{zone_spread('DoNotSchedule', f'minDomains: int({ann(a.ZONES)}), ')} : "
            f"{zone_spread('ScheduleAnyway')}}}, "
            f"JSONPatch{{op: 'add', path: '/spec/topologySpreadConstraints/-', value: {host_spread}}}])",
            "(size(variables.added) == 0 ? [] : size(object.metadata.?annotations.orValue({})) > 0 ? "
            f"[JSONPatch{{op: 'add', path: '/metadata/annotations/' + {_json_pointer(injected)}, "
            "value: variables.added.join(',')}] : "
            f"[JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{injected}: "
            "variables.added.join(',')}}])",
        ]
    )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": INJECTION_POLICY_NAME, "labels": managed_labels()},
        "spec": {
            "failurePolicy": "Ignore",
            # Every patch adds only what is still missing, so running again after a webhook changed
            # the pod is harmless.
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": managed_labels()},
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
            },
            "matchConditions": [
                {
                    "name": "gpu-pod",
                    "expression": (
                        "(object.spec.containers + (has(object.spec.initContainers) ? "
                        f"object.spec.initContainers : [])).exists(c, {limits}.exists(k, "
                        "k.startsWith('nvidia.com/')))"
                    ),
                }
            ],
            "variables": variables,
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {"expression": f"!variables.admitted ? [] : {patches}"},
                }
            ],
        },
    }


def grant_injection_binding() -> Manifest:
    return _mutating_binding(INJECTION_POLICY_NAME)


def workload_selector_policy() -> Manifest:
    """The MutatingAdmissionPolicy that gives a Deployment, ReplicaSet or StatefulSet created without a
    selector the one apps/v1 used to default: its template's labels, or `app.kubernetes.io/name:
    <its name>` on both when the template has none. Hand-written manifests (the design document's
    own example among them) often leave both out, which apps/v1 refuses. A selector the workload
    states is never touched; the policy fails open, leaving the apiserver's own refusal."""
    template_labels = "object.spec.?template.?metadata.?labels.orValue({})"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": SELECTOR_POLICY_NAME, "labels": managed_labels()},
        "spec": {
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": managed_labels()},
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["deployments", "replicasets", "statefulsets"],
                    }
                ],
            },
            "matchConditions": [
                {
                    # The apiserver hands an absent selector over as an empty one.
                    "name": "no-selector",
                    "expression": (
                        "size(object.spec.?selector.?matchLabels.orValue({})) == 0 && "
                        "size(object.spec.?selector.?matchExpressions.orValue([])) == 0"
                    ),
                }
            ],
            "variables": [
                {"name": "templateLabels", "expression": template_labels},
                {
                    "name": "name",
                    "expression": (
                        "object.metadata.?name.orValue('') != '' ? object.metadata.name : "
                        "object.metadata.?generateName.orValue('')"
                    ),
                },
                {
                    "name": "labels",
                    "expression": (
                        "size(variables.templateLabels) > 0 ? variables.templateLabels : "
                        f"{{{_cel_quote(APP_NAME_LABEL)}: variables.name}}"
                    ),
                },
            ],
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {
                        "expression": (
                            "(size(variables.templateLabels) > 0 ? [] : [JSONPatch{op: 'add', "
                            "path: '/spec/template/metadata/labels', value: variables.labels}]) + "
                            "[JSONPatch{op: 'add', path: '/spec/selector', "
                            "value: Object.spec.selector{matchLabels: variables.labels}}]"
                        )
                    },
                }
            ],
        },
    }


def workload_selector_binding() -> Manifest:
    return _mutating_binding(SELECTOR_POLICY_NAME)


# --- warm headroom: placeholder pods that keep an interactive pool's GPUs warm ----------------------

# Below every workload class (the gpu-* classes, and 0 for pods without one), so any pod may preempt
# a placeholder; -1 stays above the cluster-autoscaler's expendable cutoff (-10), so it still scales
# up for placeholders. They never preempt anything themselves.
WARM_PRIORITY = -1


@dataclass(frozen=True)
class WarmSpec:
    """The warm headroom of one pool, as plain values."""

    pool: str
    namespace: str
    image: str
    priority_class: str
    node_selector: dict[str, str]
    taint: dict[str, str]
    gpu_taint: dict[str, str]
    resource: str
    gpus: int
    # Units one node of the pool's node groups has (0: unknown, one placeholder holds everything).
    gpus_per_node: int = 0


def warm_chunks(gpus: int, per_node: int) -> dict[int, int]:
    """Placeholder sizes -> how many: `gpus` split into pods of one node's units (the last one holds
    the rest). A pod no bigger than a node always fits a new node, and an interactive pod that needs a
    whole node finds one by preempting a single placeholder."""
    if gpus <= 0:
        return {}
    if per_node <= 0 or per_node >= gpus:
        return {gpus: 1}
    chunks = {per_node: gpus // per_node}
    if gpus % per_node:
        chunks[gpus % per_node] = 1
    return chunks


def warm_deployment_name(pool: str, size: int) -> str:
    return f"warm-{pool}-{size}g"[:253]


def warm_namespace(name: str) -> Manifest:
    """The portal's own namespace for placeholders on each cluster: no grant label, so the grant
    contract does not apply; Pod Security `restricted`, which the pause containers meet."""
    labels = {
        **managed_labels(**{Label.WARM_HEADROOM: "true"}),
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def warm_priority_class(name: str) -> Manifest:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name, "labels": managed_labels(**{Label.WARM_HEADROOM: "true"})},
        "value": WARM_PRIORITY,
        "preemptionPolicy": "Never",
        "globalDefault": False,
        "description": "Warm headroom placeholders: any workload preempts them, the autoscaler keeps nodes.",
    }


def warm_placeholders(spec: WarmSpec) -> list[Manifest]:
    """One Deployment per placeholder size (deterministic names `warm-<pool>-<size>g`). A Deployment,
    not bare pods: a placeholder preempted by an interactive pod is replaced by the ReplicaSet within
    a moment, and the replacement, pending, makes the autoscaler bring up the next warm node while
    the interactive pod already runs. Recreate, never surge: a surge pod would ask for another node."""
    manifests = []
    for size, replicas in sorted(warm_chunks(spec.gpus, spec.gpus_per_node).items(), reverse=True):
        name = warm_deployment_name(spec.pool, size)
        selector = {Label.WARM_HEADROOM: spec.pool, f"{Label.WARM_HEADROOM}-size": str(size)}
        labels = managed_labels(**selector, **{Label.POOL: spec.pool})
        manifests.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": spec.namespace, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": selector},
                    "strategy": {"type": "Recreate"},
                    "revisionHistoryLimit": 1,
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "priorityClassName": spec.priority_class,
                            "terminationGracePeriodSeconds": 0,
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "nodeSelector": dict(spec.node_selector),
                            "tolerations": [{**t, "operator": "Equal"} for t in (spec.gpu_taint, spec.taint)],
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 65535,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "containers": [
                                {
                                    "name": "placeholder",
                                    "image": spec.image,
                                    # Exactly the GPUs it holds; a token of CPU and memory.
                                    "resources": {
                                        "requests": {
                                            spec.resource: str(size),
                                            "cpu": "10m",
                                            "memory": "16Mi",
                                        },
                                        "limits": {spec.resource: str(size), "memory": "16Mi"},
                                    },
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]},
                                    },
                                }
                            ],
                        },
                    },
                },
            }
        )
    return manifests
