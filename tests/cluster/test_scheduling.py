"""The scheduling contract on the real apiserver and scheduler (kwok only plays the kubelets).

Each test brings its own GPU node pool (fake nodes rendered like the topology's, with a unique pool
label), so the shared topology pools' free capacity never matters.
"""

import pytest

from pools.kube import ops
from pools.kube.discovery import node_accelerator
from pools.kube.errors import Invalid
from pools.kube.objects import POOL_LABEL
from tests.cluster.conftest import condition, pod, pool_spec, render
from tests.testbed import unique_name, wait_until

pytestmark = pytest.mark.cluster


def whole_gpu_accelerator(testbed) -> str:
    return next(
        p["accelerator"] for p in testbed.topology["pools"] if "accelerator" in p and not p.get("mig")
    )


def mig_pool(testbed) -> dict:
    return next(p for p in testbed.topology["pools"] if p.get("mig"))


def running(cluster, namespace: str, name: str) -> dict | None:
    live = ops.get(cluster, "v1", "Pod", name, namespace)
    return live if live and live["status"].get("phase") == "Running" else None


def unschedulable(cluster, namespace: str, name: str) -> dict | None:
    cond = condition(ops.get(cluster, "v1", "Pod", name, namespace), "PodScheduled")
    return cond if cond and cond["status"] == "False" and cond["reason"] == "Unschedulable" else None


@pytest.mark.parametrize("partitioned", [False, True], ids=["whole-gpu", "mig"])
def test_a_pod_with_the_contract_runs_on_its_pool(testbed, k8s_namespace, fake_nodes, partitioned):
    if partitioned:
        source = mig_pool(testbed)
        spec = pool_spec(
            testbed, source["accelerator"], gpus=1, mig=source["mig"], pool_class=source["class"]
        )
        resource = f"nvidia.com/mig-{source['mig']['profile']}"
    else:
        spec = pool_spec(testbed, whole_gpu_accelerator(testbed), gpus=2)
        resource = "nvidia.com/gpu"
    names = fake_nodes(render(testbed, spec))
    cluster = testbed.admin
    ops.apply(
        cluster,
        {
            **pod("model", pool=spec["name"], gpus=1, resource=resource),
            "metadata": {"name": "model", "namespace": k8s_namespace},
        },
    )
    live = wait_until("the pod to be Running", lambda: running(cluster, k8s_namespace, "model"))
    assert live["spec"]["nodeName"] in names
    assert condition(live, "PodScheduled")["status"] == "True"


def test_a_pod_without_the_toleration_never_lands_on_a_gpu_node(testbed, k8s_namespace, fake_nodes):
    spec = pool_spec(testbed, whole_gpu_accelerator(testbed))
    fake_nodes(render(testbed, spec))
    cpu_pool = next(p["name"] for p in testbed.topology["pools"] if "accelerator" not in p)
    cluster = testbed.admin

    # Allowed on the GPU pool or the CPU pool, tolerating nothing: the scheduler must pick CPU.
    either = pod("either", affinity_pools=[spec["name"], cpu_pool])
    ops.apply(cluster, {**either, "metadata": {"name": "either", "namespace": k8s_namespace}})
    live = wait_until("the pod to be Running", lambda: running(cluster, k8s_namespace, "either"))
    node = ops.get(cluster, "v1", "Node", live["spec"]["nodeName"])
    assert node["metadata"]["labels"][POOL_LABEL] == cpu_pool
    assert node_accelerator(node) is None

    # Only the GPU pool, still tolerating nothing: it waits, and the scheduler says why.
    only_gpu = pod("only-gpu", pool=spec["name"], gpus=1, tolerate=False)
    ops.apply(cluster, {**only_gpu, "metadata": {"name": "only-gpu", "namespace": k8s_namespace}})
    cond = wait_until("PodScheduled=False", lambda: unschedulable(cluster, k8s_namespace, "only-gpu"))
    assert "untolerated taint" in cond["message"]
    assert not ops.get(cluster, "v1", "Pod", "only-gpu", k8s_namespace)["spec"].get("nodeName")


def test_a_pod_asking_for_more_gpus_than_any_node_has_stays_pending(testbed, k8s_namespace, fake_nodes):
    spec = pool_spec(testbed, whole_gpu_accelerator(testbed))
    fake_nodes(render(testbed, spec))
    cluster = testbed.admin
    largest = max(
        int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
        for n in ops.list_objects(cluster, "v1", "Node")
    )
    greedy = pod("greedy", pool=spec["name"], gpus=largest + 1)
    ops.apply(cluster, {**greedy, "metadata": {"name": "greedy", "namespace": k8s_namespace}})
    cond = wait_until("PodScheduled=False", lambda: unschedulable(cluster, k8s_namespace, "greedy"))
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    live = ops.get(cluster, "v1", "Pod", "greedy", k8s_namespace)
    assert live["status"]["phase"] == "Pending" and not live["spec"].get("nodeName")


def test_a_gpu_quota_rejects_an_over_quota_pod_with_the_apiservers_message(testbed, k8s_namespace):
    cluster = testbed.admin
    quota = unique_name("gpu-quota")
    ops.apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": quota, "namespace": k8s_namespace},
            "spec": {"hard": {"requests.nvidia.com/gpu": "1"}},
        },
    )
    # Admission enforces a quota only once the controller-manager has computed its status.
    wait_until(
        "the quota's status",
        lambda: (ops.get(cluster, "v1", "ResourceQuota", quota, k8s_namespace).get("status") or {}).get(
            "hard"
        ),
    )
    greedy = pod("greedy", pool="any", gpus=2)
    with pytest.raises(Invalid) as caught:
        ops.create(cluster, {**greedy, "metadata": {"name": "greedy", "namespace": k8s_namespace}})
    assert caught.value.status == 403 and caught.value.reason == "Forbidden"
    assert caught.value.message == (
        f'pods "greedy" is forbidden: exceeded quota: {quota}, requested: requests.nvidia.com/gpu=2, '
        "used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=1"
    )
    # Within the quota the same pod is admitted.
    fits = pod("fits", pool="any", gpus=1)
    ops.create(cluster, {**fits, "metadata": {"name": "fits", "namespace": k8s_namespace}})
