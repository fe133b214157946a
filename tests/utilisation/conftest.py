"""Helpers of the utilisation tests: grants for the `world` teams, and published live figures."""

from datetime import timedelta

import pytest
from django.utils import timezone

from pools.kube import ops
from pools.models import CollectorState, NodePool
from pools.utilisation.figures import ClusterFigures, GrantSpec, PoolSpec, compute
from pools.utilisation.services import utilisation_publish
from tests import factories
from tests.testbed import TEST_LABEL, unique_name, wait_until

POOL_LABEL = "accelerator.platform.example.com/pool"


def spec_of(pool: NodePool) -> PoolSpec:
    return PoolSpec(
        pool.pk,
        pool.name,
        pool.node_selector,
        pool.accelerator.resource_name,
        pool.pool_class,
        pool.headroom_gpus,
        pool.pool_class == "interactive-inference",
    )


def gpu_node(name: str, pool: str, gpus: int = 8, resource: str = "nvidia.com/gpu") -> dict:
    return {
        "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
        "spec": {},
        "status": {"allocatable": {resource: str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def gpu_pod(
    name: str, namespace: str, gpus: int, node: str | None = None, pool: str | None = None, age: int = 0
):
    created = (timezone.now() - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {
            "nodeName": node,
            "nodeSelector": {POOL_LABEL: pool} if pool else {},
            "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


@pytest.fixture
def published(world):
    """world.interactive (headroom 8) on two 8-GPU nodes: vision uses 6 in its namespace and has a
    pod waiting; nlp uses 4 in its own. Free 6 < headroom 8."""
    vision_ns, nlp_ns = "vision-interactive-r1", "nlp-interactive-r2"
    vision_grant = factories.active_grant(world.vision, world.interactive, 8, vision_ns)
    nlp_grant = factories.active_grant(world.nlp, world.interactive, 4, nlp_ns)
    pool = world.interactive.name
    nodes = [gpu_node("a100-0", pool), gpu_node("a100-1", pool)]
    pods = [
        gpu_pod("v1", vision_ns, 6, node="a100-0"),
        gpu_pod("n1", nlp_ns, 4, node="a100-1"),
        gpu_pod("v-wait", vision_ns, 8, pool=pool, age=120),
        gpu_pod("n-wait", nlp_ns, 2, pool=pool, age=30),
    ]
    grants = {
        g.namespace: GrantSpec(g.namespace, g.pk, g.team_id, g.team.slug, g.pool_id, g.gpus)
        for g in (vision_grant, nlp_grant)
    }
    now = timezone.now()
    figures = compute(nodes, pods, [spec_of(world.interactive)], grants, now)
    utilisation_publish(
        cluster_id=world.interactive.cluster_id,
        state=CollectorState.LIVE,
        now=now,
        observed_at=now,
        figures=figures,
    )
    return figures


def publish_state(cluster_id: int, state: str, figures: ClusterFigures | None = None, **fields) -> None:
    now = fields.pop("now", timezone.now())
    utilisation_publish(
        cluster_id=cluster_id,
        state=state,
        now=now,
        observed_at=fields.pop("observed_at", now),
        figures=figures,
        **fields,
    )


# ----------------------------------------------------------------------------------------------
# On a real cluster: private fake GPU nodes, so exact figures never depend on what other tests
# run on the shared pools at the same time.

UTIL_TAINT = "utilisation-test.example.com/private"


class PrivatePool:
    """kwok nodes carrying a unique pool label and a taint only this test's pods tolerate."""

    def __init__(self, cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.nodes: list[str] = []

    def add_nodes(self, count: int, gpus: int) -> list[str]:
        names = [f"{self.name}-{i}" for i in range(len(self.nodes), len(self.nodes) + count)]
        for name in names:
            resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
            ops.apply(
                self.cluster,
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": {
                            POOL_LABEL: self.name,
                            "kubernetes.io/hostname": name,
                            "topology.kubernetes.io/zone": "zone-a",
                            "type": "kwok",
                            TEST_LABEL: "true",
                        },
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    },
                    "spec": {"taints": [{"key": UTIL_TAINT, "value": self.name, "effect": "NoSchedule"}]},
                },
            )
            self.nodes.append(name)
            # Status has its own subresource; kwok would fill in allocatable without GPUs otherwise.
            status = {"status": {"capacity": resources, "allocatable": resources}}
            ops.call(
                self.cluster, lambda conn, name=name, status=status: conn.core.patch_node_status(name, status)
            )

        def ready(name: str) -> bool:
            node = ops.get(self.cluster, "v1", "Node", name) or {}
            conditions = (node.get("status") or {}).get("conditions") or []
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            return allocatable.get("nvidia.com/gpu") == str(gpus) and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            )

        for name in names:
            wait_until(f"node {name} Ready with {gpus} GPUs", lambda name=name: ready(name))
        return names

    def pod(self, name: str, gpus: int, node: str | None = None) -> dict:
        selector = {POOL_LABEL: self.name}
        if node:
            selector["kubernetes.io/hostname"] = node
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": selector,
                "tolerations": [
                    {"key": UTIL_TAINT, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}
                ],
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.invalid/sleep:1",
                        "resources": {
                            "limits": {"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": str(gpus)}
                        },
                    }
                ],
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
            },
        }

    def delete_nodes(self) -> None:
        for name in self.nodes:
            ops.delete(self.cluster, "v1", "Node", name)


@pytest.fixture
def private_pool(testbed):
    pool = PrivatePool(testbed.admin, unique_name("util"))
    yield pool
    pool.delete_nodes()
