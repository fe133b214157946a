"""Helpers for tests against the testbed: private fake GPU node pools and pods.

Tests never rely on the free capacity of the shared topology pools (other tests use them at the
same time): they create their own uniquely labelled kwok nodes, rendered by the testbed's own code
so they look exactly like topology nodes, and delete them afterwards.
"""

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pools.kube import ops
from pools.kube.errors import KubeError
from pools.kube.objects import POOL_LABEL
from portal.models import User
from tests import factories
from tests.testbed import TEST_LABEL, Testbed, load_testbed_module, unique_name, wait_until

Obj = dict[str, Any]
GPU_TAINT_KEY = "accelerator.platform.example.com/gpu"
MANAGED_BY = "app.kubernetes.io/managed-by"


def pool_spec(testbed: Testbed, accelerator: str, gpus: int = 8, mig: Obj | None = None, **extra: Any) -> Obj:
    """A topology pool entry for one of the topology's accelerators."""
    spec = {
        "name": unique_name("tp"),
        "class": extra.pop("pool_class", "embedding-reranking"),
        "accelerator": accelerator,
        "gpus": gpus,
        "lifecycle": "on-demand",
        "instanceType": "test.large",
        "cpu": "16",
        "memory": "64Gi",
        "nodes": {"zone-a": 1},
        **extra,
    }
    if mig:
        spec["mig"] = mig
    return spec


def render(testbed: Testbed, spec: Obj) -> list[Obj]:
    """Node manifests for `spec`, by the testbed's renderer; not managed by testbed.py, so its
    `up` (which deletes managed nodes it does not know) leaves them alone."""
    topology = {**copy.deepcopy(testbed.topology), "pools": [spec]}
    nodes = load_testbed_module().render_nodes(topology)
    for node in nodes:
        node["metadata"]["labels"][MANAGED_BY] = "gpu-portal-tests"
        node["metadata"]["labels"][TEST_LABEL] = "true"
    return nodes


def node_ready(node: Obj | None, wanted: Obj) -> bool:
    if not node:
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    gpus_set = all(
        allocatable.get(k) == v for k, v in wanted["status"]["allocatable"].items() if "nvidia" in k
    )
    # The node lifecycle controller taints a new node not-ready and lifts the taint a moment after
    # Ready; a pod tried in between is refused for the taint, not for what the test is about.
    taints = {(t["key"], t["effect"]) for t in (node.get("spec") or {}).get("taints") or []}
    settled = taints == {(t["key"], t["effect"]) for t in wanted["spec"].get("taints") or []}
    return ready and gpus_set and settled


@pytest.fixture
def fake_nodes(testbed: Testbed) -> Iterator[Callable[[list[Obj]], list[str]]]:
    """Create node manifests (as `render` makes them), wait until kwok reports them Ready with their
    GPUs and only their own taints, and delete them after the test. Returns their names."""
    cluster = testbed.admin
    created: list[str] = []

    def create(nodes: list[Obj]) -> list[str]:
        for node in nodes:
            name = node["metadata"]["name"]
            ops.apply(cluster, node)
            created.append(name)
            # Status goes through its own subresource once the node exists; kwok fills in default
            # allocatable (without GPUs) when it sees a node without one first.
            ops.call(
                cluster,
                lambda conn, name=name, node=node: conn.core.patch_node_status(
                    name, {"status": node["status"]}
                ),
            )
        for node in nodes:
            name = node["metadata"]["name"]
            wait_until(
                f"node {name} to be Ready with its GPUs",
                lambda name=name, node=node: node_ready(ops.get(cluster, "v1", "Node", name), node),
            )
        return [n["metadata"]["name"] for n in nodes]

    yield create
    for name in created:
        try:
            ops.delete(cluster, "v1", "Node", name)
        except KubeError as exc:  # one failed delete must not leave the others behind
            print(f"could not delete test node {name}: {exc.message}")


def pod(
    name: str,
    *,
    pool: str | None = None,
    gpus: int = 0,
    resource: str = "nvidia.com/gpu",
    tolerate: bool = True,
    node_name: str | None = None,
    affinity_pools: list[str] | None = None,
) -> Obj:
    """A pod that runs forever (kwok never starts containers); the scheduling contract as the portal
    writes it: node selector on the pool label, tolerations for the GPU and pool taints."""
    spec: Obj = {
        "containers": [
            {
                "name": "main",
                "image": "registry.invalid/sleep:1",
                "resources": {
                    "limits": {"cpu": "100m", "memory": "64Mi", **({resource: str(gpus)} if gpus else {})}
                },
            }
        ],
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 0,
    }
    if pool:
        spec["nodeSelector"] = {POOL_LABEL: pool}
    if pool and tolerate:
        spec["tolerations"] = [
            {"key": GPU_TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"},
            {"key": POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"},
        ]
    if node_name:
        spec["nodeName"] = node_name
    if affinity_pools:
        term = {"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": affinity_pools}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def condition(obj: Obj | None, kind: str) -> Obj | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


@pytest.fixture
def platform_admin(db: None) -> User:
    return factories.user(is_platform_admin=True, is_staff=True, is_superuser=True)


@pytest.fixture
def sa_token(testbed, k8s_namespace) -> Iterator[Callable[[list[dict]], str]]:
    """A bearer token of a new service account bound to a new ClusterRole with `rules`."""
    cluster = testbed.admin
    cluster_scoped: list[tuple[str, str]] = []

    def make(rules: list[dict]) -> str:
        name = unique_name("portal-sa")
        ops.apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": k8s_namespace},
            },
        )
        rbac = "rbac.authorization.k8s.io/v1"
        ops.apply(
            cluster, {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules}
        )
        ops.apply(
            cluster,
            {
                "apiVersion": rbac,
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": k8s_namespace}],
            },
        )
        cluster_scoped.extend([("ClusterRoleBinding", name), ("ClusterRole", name)])
        request = {"spec": {"expirationSeconds": 600}}
        return ops.call(
            cluster,
            lambda conn: conn.core.create_namespaced_service_account_token(name, k8s_namespace, request),
        ).status.token

    yield make
    for kind, name in cluster_scoped:
        ops.delete(cluster, "rbac.authorization.k8s.io/v1", kind, name)
