"""Helpers for the engine tests: a raw Kubernetes client on the testbed, private elastic pools
(NodePools rendered by the testbed's own code under unique names) and grant-labelled namespaces.

These tests talk to the cluster with the kubernetes client directly, not through the portal's
code: they check the testbed itself (Karpenter, Kueue, the kwok Stages), which the portal's own
tests then build on.
"""

import copy
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.testbed import TEST_LABEL, Testbed, load_testbed_module, unique_name, wait_until

Obj = dict[str, Any]
KARPENTER = ("karpenter.sh", "v1")
KUEUE = ("kueue.x-k8s.io", "v1beta2")
# Generous: the machine is shared with other builds and test runs.
PROVISION_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def kube(testbed: Testbed) -> client.ApiClient:
    return config.new_client_from_config_dict(yaml.safe_load(testbed.kubeconfig))


@pytest.fixture(scope="session")
def core(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture(scope="session")
def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


def seconds_between(start: str | datetime, end: str | datetime) -> float:
    def parse(value: str | datetime) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def condition(obj: Any, kind: str) -> Any:
    """The condition `kind` of a client model or a dict, or None."""
    if isinstance(obj, dict):
        conditions = (obj.get("status") or {}).get("conditions") or []
    else:
        conditions = (obj.status and obj.status.conditions) or []
    for cond in conditions:
        if (cond["type"] if isinstance(cond, dict) else cond.type) == kind:
            return cond
    return None


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[Callable[..., str]]:
    """Make a namespace (labelled as a grant namespace with `grant=True`); deleted afterwards."""
    made: list[str] = []

    def make(grant: bool = False) -> str:
        name = unique_name("te")
        labels = {TEST_LABEL: "true"}
        if grant:
            labels[load_testbed_module().GRANT_LABEL] = "test"
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        made.append(name)
        # Pods are refused until the controller-manager has made the default service account.
        wait_until(
            f"the service account of {name}", lambda: _exists(core.read_namespaced_service_account, name)
        )
        return name

    yield make
    for name in made:
        core.delete_namespace(name)


def _exists(read: Callable[..., Any], namespace: str) -> bool:
    try:
        read("default", namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def elastic_spec(testbed: Testbed, **overrides: Any) -> Obj:
    """An elastic pool entry like the topology's first one, under a unique name; its instance type
    is one Karpenter knows (the instance types come from the topology's elastic pools)."""
    spec = copy.deepcopy(testbed.topology["elasticPools"][0])
    spec.update(name=unique_name("ep"), zones=["zone-a"], limits={"gpus": 16}, consolidateAfter="30s")
    spec.update(overrides)
    return spec


@pytest.fixture
def elastic_pool(
    testbed: Testbed, custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> Iterator[Callable]:
    """Create a private NodePool for an elastic pool entry; afterwards delete it and wait until
    Karpenter has removed its nodes, so no test leaves nodes behind in the shared cluster."""
    made: list[str] = []

    def make(spec: Obj) -> Obj:
        nodepool = testbed.render_nodepool(spec)
        nodepool["metadata"]["labels"][TEST_LABEL] = "true"
        # Not the testbed's: `up` deletes NodePools it manages and no longer describes.
        nodepool["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "gpu-portal-tests"
        custom.create_cluster_custom_object(*KARPENTER, "nodepools", nodepool)
        made.append(spec["name"])
        return nodepool

    yield make
    label = load_testbed_module().NODEPOOL_LABEL
    for name in made:
        try:
            custom.delete_cluster_custom_object(*KARPENTER, "nodepools", name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    for name in made:
        wait_until(
            f"Karpenter to remove the nodes of NodePool {name}",
            lambda name=name: not core.list_node(label_selector=f"{label}={name}").items,
            timeout=PROVISION_TIMEOUT,
        )


def gpu_pod(name: str, pool: str, gpus: int = 1, resource: str = "nvidia.com/gpu", **spec: Any) -> Obj:
    """A pod following a pool's contract as the portal writes it: nodeSelector on the pool label,
    tolerations of the GPU and pool taints, the GPUs in its limits."""
    prefix = "accelerator.platform.example.com/"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}},
        "spec": {
            "nodeSelector": {f"{prefix}pool": pool},
            "tolerations": [
                {"key": f"{prefix}gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                {"key": f"{prefix}pool", "operator": "Equal", "value": pool, "effect": "NoSchedule"},
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/sleep:1",
                    "resources": {"limits": {"cpu": "100m", "memory": "64Mi", resource: str(gpus)}},
                }
            ],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            **spec,
        },
    }
