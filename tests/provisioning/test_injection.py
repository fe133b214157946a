"""Plain manifests just work: the apiserver completes GPU pods with their grant's contract
(MutatingAdmissionPolicy), then checks them (ValidatingAdmissionPolicy). On the real testbed, through
a real worker, applied with kubectl as a member of the team."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pools.kube import ops
from pools.kube.errors import Invalid
from pools.kube.objects import GPU_TAINT_KEY, INJECTED_ANNOTATION, POOL_LABEL
from pools.manifests import POLICY_NAME
from quotas import services
from quotas.models import Grant
from quotas.states import RequestState
from tests.provisioning.conftest import Org
from tests.provisioning.support import settled
from tests.testbed import load_testbed_module, unique_name

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

SEED = Path(__file__).parent / "manifests" / "llama-vllm.yaml"
TYPE_LABEL = "accelerator.platform.example.com/type"


def kubectl(org: Org, grant: Grant, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl in the grant's namespace as a member of the team: the team's group and nothing else."""
    binary = load_testbed_module().binaries().kubectl
    return subprocess.run(
        [
            str(binary),
            f"--kubeconfig={org.testbed.kubeconfig_path}",
            f"--namespace={grant.namespace}",
            f"--as={org.member.username}",
            f"--as-group={grant.team.group_name}",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def pods_of(org: Org, grant: Grant, selector: str) -> list[dict[str, Any]]:
    return ops.list_objects(org.k8s, "v1", "Pod", namespace=grant.namespace, label_selector=selector)


def plain_pod(namespace: str, *, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": unique_name("plain"), "namespace": namespace},
        "spec": {
            **spec,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example.com/llm/probe:v1",
                    **({"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}} if gpus else {}),
                }
            ],
        },
    }


def test_the_design_documents_example_deployment_runs_unchanged(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=2)
    grant = wait_for("the grant to become active", lambda: settled(grant))
    applied = kubectl(org, grant, "apply", "-f", str(SEED))
    assert applied.returncode == 0, applied.stderr
    # Baseline is enforced; restricted only warns (docs/provisioning.md, Pod Security).
    assert 'would violate PodSecurity "restricted:latest"' in applied.stderr

    deployment = ops.get(org.k8s, "apps/v1", "Deployment", "llama-vllm", grant.namespace)
    assert deployment["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "llama-vllm"}}

    def running() -> list[dict[str, Any]]:
        pods = pods_of(org, grant, "app.kubernetes.io/name=llama-vllm")
        return pods if pods and all(p["status"].get("phase") == "Running" for p in pods) else []

    (pod,) = wait_for("the example's pod to run", running, timeout=30)
    spec = pod["spec"]
    node = ops.get(org.k8s, "v1", "Node", spec["nodeName"])
    assert node["metadata"]["labels"][POOL_LABEL] == "interactive-a100"
    assert (spec["priorityClassName"], spec["priority"], spec["preemptionPolicy"]) == (
        "gpu-interactive-inference",
        100000,
        "PreemptLowerPriority",
    )
    # What the pod stated is kept; what the grant implies is added.
    assert spec["nodeSelector"] == {TYPE_LABEL: "nvidia-a100", POOL_LABEL: "interactive-a100"}
    tolerations = {(t.get("key"), t.get("value"), t.get("effect")) for t in spec["tolerations"]}
    assert {
        (GPU_TAINT_KEY, "true", "NoSchedule"),
        (POOL_LABEL, "interactive-a100", "NoSchedule"),
    } <= tolerations
    spread = {(t["topologyKey"], t["whenUnsatisfiable"]) for t in spec["topologySpreadConstraints"]}
    assert spread == {
        ("topology.kubernetes.io/zone", "DoNotSchedule"),
        ("kubernetes.io/hostname", "ScheduleAnyway"),
    }
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == (
        "nodeSelector,tolerations,priorityClassName,topologySpreadConstraints"
    )


def test_what_the_contract_refuses_stays_refused_with_the_grant_named(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=2)
    grant = wait_for("the grant to become active", lambda: settled(grant))
    ns = grant.namespace
    title = f"grant {ns} (grant {grant.pk})"
    refused = {
        "another accelerator": (
            plain_pod(ns, nodeSelector={TYPE_LABEL: "nvidia-h100"}),
            "it covers accelerator type nvidia-a100, the pod selects nvidia-h100",
        ),
        "another pool": (
            plain_pod(ns, nodeSelector={POOL_LABEL: "batch-h100"}),
            "GPU pods must select node pool interactive-a100",
        ),
        "another pool by affinity": (
            plain_pod(
                ns,
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": POOL_LABEL, "operator": "In", "values": ["batch-h100"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
            ),
            "GPU pods must select node pool interactive-a100",
        ),
        "more GPUs than the grant allows per pod": (
            plain_pod(ns, gpus=3),
            "at most 2 nvidia.com/gpu per pod, the pod asks for 3",
        ),
        "another priority class": (
            plain_pod(ns, priorityClassName="gpu-batch-inference"),
            "GPU pods must use priorityClassName gpu-interactive-inference",
        ),
    }
    for case, (pod, words) in refused.items():
        with pytest.raises(Invalid) as exc:
            ops.create(org.k8s, pod, dry_run=True)
        assert f"ValidatingAdmissionPolicy '{POLICY_NAME}'" in exc.value.message, case
        assert title in exc.value.message, case
        assert words in exc.value.message, case

    # The same pod without the contradiction is completed and admitted.
    admitted = ops.create(org.k8s, plain_pod(ns), dry_run=True)
    assert admitted["spec"]["nodeSelector"] == {POOL_LABEL: "interactive-a100"}

    # Once the grant has ended nothing is completed, and every GPU pod is refused.
    services.grant_revoke(grant=grant, actor=org.admin, reason="test")
    wait_for("the grant to be revoked", lambda: settled(grant, RequestState.REVOKED))
    with pytest.raises(Invalid) as exc:
        ops.create(org.k8s, plain_pod(ns), dry_run=True)
    assert f"{title}: the grant is revoked; GPU pods are refused" in exc.value.message


def test_pods_without_gpus_get_nothing_and_run_off_the_gpu_nodes(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=1)
    grant = wait_for("the grant to become active", lambda: settled(grant))
    ns = grant.namespace
    created = ops.create(org.k8s, plain_pod(ns, gpus=0))
    name = created["metadata"]["name"]
    assert INJECTED_ANNOTATION not in (created["metadata"].get("annotations") or {})
    assert not created["spec"].get("nodeSelector")
    assert not created["spec"].get("priorityClassName")
    assert not {t.get("key") for t in created["spec"]["tolerations"]} & {GPU_TAINT_KEY, POOL_LABEL}

    def placed() -> dict[str, Any] | None:
        pod = ops.get(org.k8s, "v1", "Pod", name, ns)
        return pod if pod and pod["spec"].get("nodeName") else None

    node = ops.get(org.k8s, "v1", "Node", wait_for("the CPU pod to be scheduled", placed)["spec"]["nodeName"])
    assert node["metadata"]["labels"][POOL_LABEL] == "general-cpu"
    assert not any(t["key"] == GPU_TAINT_KEY for t in node["spec"].get("taints") or [])

    # Tolerating the GPU taint is still refused: GPU nodes are kept for GPU workloads.
    gpu_tolerant = plain_pod(
        ns,
        gpus=0,
        tolerations=[{"key": GPU_TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    )
    with pytest.raises(Invalid) as exc:
        ops.create(org.k8s, gpu_tolerant, dry_run=True)
    assert "pods without GPUs may not tolerate GPU node taints" in exc.value.message


def test_a_workload_that_states_its_contract_is_left_as_written(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=1)
    grant = wait_for("the grant to become active", lambda: settled(grant))
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "explicit"},
        "spec": {
            "selector": {"matchLabels": {"app": "explicit"}},
            "template": {
                "metadata": {"labels": {"app": "explicit"}},
                "spec": {
                    "nodeSelector": {POOL_LABEL: "interactive-a100"},
                    "priorityClassName": "gpu-interactive-inference",
                    "tolerations": [
                        {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                        {"key": POOL_LABEL, "operator": "Equal", "value": "interactive-a100"},
                    ],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 2,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app": "explicit"}},
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.example.com/llm/vllm:stable",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }
    applied = kubectl(org, grant, "apply", "-f", "-", stdin=json.dumps(manifest))
    assert applied.returncode == 0, applied.stderr
    (pod,) = wait_for("the pod", lambda: pods_of(org, grant, "app=explicit"), timeout=30)
    assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    assert (
        pod["spec"]["topologySpreadConstraints"]
        == manifest["spec"]["template"]["spec"]["topologySpreadConstraints"]
    )
    tolerations = [t for t in pod["spec"]["tolerations"] if t["key"] in (GPU_TAINT_KEY, POOL_LABEL)]
    assert tolerations == [
        {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
        {"key": POOL_LABEL, "operator": "Equal", "value": "interactive-a100"},
    ]
    deployment = ops.get(org.k8s, "apps/v1", "Deployment", "explicit", grant.namespace)
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "explicit"}}
