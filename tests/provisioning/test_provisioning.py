"""Approval to enforcement on the real testbed, through a real Celery worker (not eager mode)."""

from typing import Any

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from pools.kube import ops
from pools.kube.client import connect
from pools.kube.errors import Invalid
from pools.kube.objects import GPU_TAINT_KEY, POOL_LABEL
from pools.manifests import POLICY_NAME
from pools.services import cluster_policies_apply
from portal.models import AuditEvent
from quotas import services
from quotas.models import Grant, ServingDeployment
from quotas.states import RequestState
from tests.provisioning.conftest import Org
from tests.provisioning.support import PROVISIONED, conditions, settled
from tests.testbed import unique_name

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

ZONE_KEY = "topology.kubernetes.io/zone"
IMAGE = "registry.example.com/llm/vllm:v0.6.3"


def gpu_pod(
    namespace: str,
    *,
    gpus: int = 1,
    pool: str = "interactive-a100",
    selector: dict[str, str] | None = None,
    tolerate: tuple[str, ...] = ("interactive-a100",),
    priority: str = "gpu-interactive-inference",
    resource: str = "nvidia.com/gpu",
) -> dict[str, Any]:
    tolerations = [{"key": GPU_TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    tolerations += [
        {"key": POOL_LABEL, "operator": "Equal", "value": p, "effect": "NoSchedule"} for p in tolerate
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": unique_name("pod"), "namespace": namespace},
        "spec": {
            "nodeSelector": selector if selector is not None else {POOL_LABEL: pool},
            "tolerations": tolerations,
            "priorityClassName": priority,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example.com/llm/probe:v1",
                    "resources": {"limits": {resource: str(gpus)}},
                }
            ],
        },
    }


def test_approval_applies_exactly_the_specified_objects(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=2)
    ns = grant.namespace
    grant = wait_for(f"grant {ns} to become active", lambda: settled(grant))

    namespace = org.read("Namespace", ns)
    labels = namespace["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k != "kubernetes.io/metadata.name"} == {
        "app.kubernetes.io/managed-by": "gpu-capacity-portal",
        "capacity.platform.example.com/team": org.team.slug,
        "capacity.platform.example.com/pool-class": "interactive-inference",
        "capacity.platform.example.com/accelerator": "a100-80gb",
        "capacity.platform.example.com/pool": "interactive-a100",
        "capacity.platform.example.com/grant": str(grant.pk),
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
    }
    quota = org.read("ResourceQuota", "gpu-grant", ns)
    expected_hard = {
        "requests.nvidia.com/gpu": "2",
        "pods": "22",
        "requests.cpu": "16",
        "requests.memory": "128Gi",
        "limits.memory": "128Gi",
    }
    assert quota["spec"] == {"hard": expected_hard}
    assert quota["status"]["hard"] == expected_hard
    limit_range = org.read("LimitRange", "gpu-grant-defaults", ns)
    assert limit_range["spec"] == {
        "limits": [
            {
                "type": "Container",
                "default": {"memory": "4Gi"},
                "defaultRequest": {"cpu": "500m", "memory": "1Gi"},
            }
        ]
    }
    binding = org.read("RoleBinding", "gpu-grant-team", ns, "rbac.authorization.k8s.io/v1")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "edit",
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": f"team:{org.team.slug}"}
    ]
    # The one cluster-wide binding selects the namespace through its labels.
    policy_binding = org.read(
        "ValidatingAdmissionPolicyBinding", POLICY_NAME, api_version="admissionregistration.k8s.io/v1"
    )
    assert policy_binding["spec"]["policyName"] == POLICY_NAME
    assert policy_binding["spec"]["validationActions"] == ["Deny"]
    selector = policy_binding["spec"]["matchResources"]["namespaceSelector"]
    namespace_labels = org.read("Namespace", ns)["metadata"]["labels"]
    assert all(namespace_labels.get(k) == v for k, v in selector["matchLabels"].items())
    assert all(e["key"] in namespace_labels for e in selector["matchExpressions"])
    priority = org.read("PriorityClass", "gpu-interactive-inference", api_version="scheduling.k8s.io/v1")
    assert (priority["value"], priority["preemptionPolicy"]) == (100000, "PreemptLowerPriority")

    assert conditions(grant) == PROVISIONED
    assert all(c["observedGeneration"] == grant.generation for c in grant.conditions)
    assert org.audit_actions(grant) == ["grant.created", "grant.provisioning", "grant.active"]


def test_the_apiserver_enforces_the_grant(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=2)
    ns = grant.namespace
    wait_for(f"grant {ns} to become active", lambda: settled(grant))
    title = f"grant {ns} (grant {grant.pk})"

    refused = {
        "another GPU type": gpu_pod(
            ns,
            selector={
                POOL_LABEL: "interactive-a100",
                "accelerator.platform.example.com/type": "nvidia-h100",
            },
        ),
        "another pool": gpu_pod(ns, pool="batch-h100", tolerate=("batch-h100",)),
        "another pool's taint": gpu_pod(ns, tolerate=("interactive-a100", "batch-h100")),
        "another priority": gpu_pod(ns, priority="gpu-batch-inference"),
        "a MIG slice": gpu_pod(ns, resource="nvidia.com/mig-1g.10gb"),
        "more than the grant per pod": gpu_pod(ns, gpus=3),
    }
    messages = {}
    for case, pod in refused.items():
        with pytest.raises(Invalid) as exc:
            ops.create(org.k8s, pod)
        assert f"ValidatingAdmissionPolicy '{POLICY_NAME}'" in exc.value.message, case
        assert title in exc.value.message, case
        messages[case] = exc.value.message
    assert (
        "it covers accelerator type nvidia-a100, the pod selects nvidia-h100" in messages["another GPU type"]
    )
    assert "must select node pool interactive-a100" in messages["another pool"]
    assert "not other pools' taints" in messages["another pool's taint"]

    within = ops.create(org.k8s, gpu_pod(ns, gpus=2))
    name = within["metadata"]["name"]

    def running() -> dict[str, Any] | None:
        pod = org.read("Pod", name, ns)
        return pod if pod and pod["status"].get("phase") == "Running" else None

    pod = wait_for(f"pod {name} to run", running)
    node = org.read("Node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"][POOL_LABEL] == "interactive-a100"

    # Updates pass unless they change tolerations, the one scheduling field a pod can still change.
    core = CoreV1Api(connect(org.k8s).api)
    core.patch_namespaced_pod(name, ns, {"metadata": {"labels": {"team-note": "updated"}}})
    other = {"key": POOL_LABEL, "operator": "Equal", "value": "batch-h100", "effect": "NoSchedule"}
    with pytest.raises(ApiException) as update:
        core.patch_namespaced_pod(name, ns, {"spec": {"tolerations": [*pod["spec"]["tolerations"], other]}})
    assert title in update.value.body and "not other pools' taints" in update.value.body

    with pytest.raises(Invalid) as exc:
        ops.create(org.k8s, gpu_pod(ns, gpus=1))
    assert "exceeded quota: gpu-grant" in exc.value.message
    assert "limited: requests.nvidia.com/gpu=2" in exc.value.message


def test_serving_deployment_lands_on_the_pool_spreads_and_records_load_time(
    org: Org, worker, wait_for
) -> None:
    grant = org.approve(gpus=2)
    wait_for("the grant to become active", lambda: settled(grant))
    deployment = services.serving_deployment_create(
        grant=grant, actor=org.member, name="chat", model_name="llama-3-8b", image=IMAGE, replicas=2
    )

    def ready() -> ServingDeployment | None:
        fresh = ServingDeployment.objects.get(pk=deployment.pk)
        return fresh if fresh.ready_at is not None else None

    deployment = wait_for("the model servers to become Ready", ready)
    assert deployment.ready_replicas == 2
    assert deployment.load_seconds is not None and deployment.load_seconds >= 0
    assert conditions(deployment)["Ready"] == ("True", "AllReplicasReady")
    assert org.audit_actions(deployment) == ["serving_deployment.created", "serving_deployment.ready"]

    pods = ops.list_objects(
        org.k8s,
        "v1",
        "Pod",
        namespace=grant.namespace,
        label_selector=f"capacity.platform.example.com/serving-deployment={deployment.pk}",
    )
    nodes = [org.read("Node", p["spec"]["nodeName"]) for p in pods]
    assert len(nodes) == 2
    assert {n["metadata"]["labels"][POOL_LABEL] for n in nodes} == {"interactive-a100"}
    assert {n["metadata"]["labels"][ZONE_KEY] for n in nodes} == {"zone-a", "zone-b"}
    container = pods[0]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_revoke_scales_serving_to_zero_removes_the_gpu_quota_and_audits_each_step(
    org: Org, worker, wait_for
) -> None:
    grant = org.approve(gpus=2)
    ns = grant.namespace
    wait_for("the grant to become active", lambda: settled(grant))
    deployment = services.serving_deployment_create(
        grant=grant, actor=org.member, name="chat", model_name="llama-3-8b", image=IMAGE, replicas=2
    )
    wait_for(
        "the model servers to become Ready", lambda: ServingDeployment.objects.get(pk=deployment.pk).ready_at
    )

    services.grant_revoke(grant=grant, actor=org.admin, reason="the project ended")
    grant = wait_for("the revocation to be applied", lambda: settled(grant, RequestState.REVOKED))

    assert org.read("Deployment", "chat", ns, "apps/v1")["spec"]["replicas"] == 0
    quota = org.read("ResourceQuota", "gpu-grant", ns)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"
    assert org.read("Namespace", ns) is not None  # kept until an admin deletes it
    assert conditions(grant)["Ready"] == ("False", "Revoked")
    assert conditions(grant)["QuotaEnforced"] == ("True", "QuotaRemoved")

    assert org.audit_actions(grant) == [
        "grant.created",
        "grant.provisioning",
        "grant.active",
        "grant.revoked",
        "grant.quota_removed",
    ]
    removed = AuditEvent.objects.get(action="grant.quota_removed", object_id=str(grant.pk))
    assert (removed.before, removed.after) == (
        {"requests.nvidia.com/gpu": "2"},
        {"requests.nvidia.com/gpu": "0"},
    )
    scaled = AuditEvent.objects.get(action="serving_deployment.scaled_to_zero", object_id=str(deployment.pk))
    assert (scaled.before, scaled.after) == ({"replicas": 2}, {"replicas": 0})

    with pytest.raises(Invalid) as exc:
        ops.create(org.k8s, gpu_pod(ns))
    assert "the grant is revoked; GPU pods are refused" in exc.value.message


def drift_messages(grant: Grant) -> str:
    return " | ".join(
        AuditEvent.objects.filter(action="grant.drift_corrected", object_id=str(grant.pk)).values_list(
            "message", flat=True
        )
    )


def test_resync_restores_a_hand_edited_quota_and_audits_the_drift(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=2)
    ns = grant.namespace
    wait_for("the grant to become active", lambda: settled(grant))

    core = CoreV1Api(connect(org.k8s).api)
    core.patch_namespaced_resource_quota(
        "gpu-grant", ns, {"spec": {"hard": {"requests.nvidia.com/gpu": "10"}}}
    )
    ops.delete(org.k8s, "rbac.authorization.k8s.io/v1", "RoleBinding", "gpu-grant-team", ns)

    wanted = (
        f"ResourceQuota {ns}/gpu-grant: spec.hard.requests.nvidia.com/gpu: 10 -> 2",
        f"RoleBinding {ns}/gpu-grant-team was missing; recreated",
    )
    wait_for("the resync to audit both drifts", lambda: all(w in drift_messages(grant) for w in wanted))
    assert org.read("ResourceQuota", "gpu-grant", ns)["spec"]["hard"]["requests.nvidia.com/gpu"] == "2"
    assert org.read("RoleBinding", "gpu-grant-team", ns, "rbac.authorization.k8s.io/v1") is not None
    assert settled(grant) is not None


def test_resync_recreates_a_deleted_namespace(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=1)
    ns = grant.namespace
    wait_for("the grant to become active", lambda: settled(grant))
    uid = org.read("Namespace", ns)["metadata"]["uid"]
    ops.delete(org.k8s, "v1", "Namespace", ns)

    def recreated() -> bool:
        namespace = org.read("Namespace", ns)
        quota = org.read("ResourceQuota", "gpu-grant", ns)
        return bool(namespace and namespace["metadata"]["uid"] != uid and quota)

    wait_for("the namespace and its quota to come back", recreated, timeout=60)
    wait_for("the drift audit", lambda: f"Namespace {ns} was missing; recreated" in drift_messages(grant))
    assert org.read("ResourceQuota", "gpu-grant", ns)["spec"]["hard"]["requests.nvidia.com/gpu"] == "1"


def test_cluster_policies_apply_deletes_other_bindings_the_portal_made(org: Org) -> None:
    stale = unique_name("gpu-grant-stale")
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": stale, "labels": {"app.kubernetes.io/managed-by": "gpu-capacity-portal"}},
        "spec": {"policyName": POLICY_NAME, "validationActions": ["Deny"]},
    }
    ops.apply(org.k8s, binding)
    try:
        done = cluster_policies_apply(cluster=org.cluster)
        assert f"deleted ValidatingAdmissionPolicyBinding/{stale}" in done
        assert org.read("ValidatingAdmissionPolicyBinding", stale, api_version=binding["apiVersion"]) is None
        kept = org.read("ValidatingAdmissionPolicyBinding", POLICY_NAME, api_version=binding["apiVersion"])
        assert kept is not None
    finally:
        ops.delete(org.k8s, binding["apiVersion"], binding["kind"], stale)
