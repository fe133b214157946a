"""Pre-flight at approval against the real testbed: the pool's selector must match Ready nodes that
carry the pool's taint (the seed's failure mode "selectors that match no node group")."""

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from pools.kube import ops
from pools.kube.objects import POOL_LABEL
from pools.models import Accelerator, Cluster, NodePool, PoolClass
from pools.services import pool_preflight_refusal
from portal.models import AuditEvent
from quotas import services
from quotas.models import Grant
from quotas.states import RequestState
from tests import factories
from tests.provisioning.conftest import Org
from tests.provisioning.support import free_port

pytestmark = pytest.mark.cluster


def l4_pool(org: Org, name: str, taint_value: str | None = None) -> NodePool:
    l4 = Accelerator.objects.create(
        slug="l4-24gb",
        name="NVIDIA L4",
        product="NVIDIA-L4",
        type_label="nvidia-l4",
        memory_gib=24,
        hourly_cost=1,
    )
    pool = factories.pool(name, PoolClass.EMBEDDING, l4, capacity=8, cluster=org.cluster)
    if taint_value is not None:
        pool.taint_value = taint_value
        pool.save()
    return pool


def test_pool_on_ready_tainted_nodes_passes(org: Org) -> None:
    assert pool_preflight_refusal(pool=org.interactive) is None
    assert pool_preflight_refusal(pool=org.batch) is None


def test_selector_matching_no_node_refuses_the_approval(org: Org) -> None:
    name = f"prv-nowhere-{secrets.token_hex(3)}"
    l4_pool(org, name)
    req = factories.request(
        org.member, org.team, Accelerator.objects.get(slug="l4-24gb"), gpus=2, pool_class=PoolClass.EMBEDDING
    )
    with pytest.raises(ValidationError) as exc:
        services.capacity_request_approve(capacity_request=req, actor=org.admin)
    assert exc.value.code == "preflight"
    assert (
        f"no node of cluster {org.cluster.name} matches its selector {POOL_LABEL}={name}" in exc.value.message
    )
    req.refresh_from_db()
    assert req.state == RequestState.PENDING_PLATFORM
    assert not Grant.objects.filter(request=req).exists()


def test_nodes_without_the_pool_taint_refuse(org: Org) -> None:
    # The real embedding nodes, but a pool record expecting another taint value.
    pool = l4_pool(org, "embedding-l4", taint_value="embedding-l4-dedicated")
    refusal = pool_preflight_refusal(pool=pool)
    assert refusal is not None
    assert "embedding-l4-zone-a-0, embedding-l4-zone-b-0 lack the pool taint" in refusal
    assert f"{POOL_LABEL}=embedding-l4-dedicated:NoSchedule" in refusal


@pytest.fixture
def cordoned_node(org: Org) -> Iterator[str]:
    """The only node of its pool, cordoned (kwok keeps every node of the testbed Ready)."""
    pool = f"prv-cordoned-{secrets.token_hex(3)}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": pool, "labels": {POOL_LABEL: pool, "gpu-portal.example.com/test": "true"}},
        "spec": {
            "unschedulable": True,
            "taints": [{"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}],
        },
    }
    ops.apply(org.k8s, node)
    yield pool
    ops.delete(org.k8s, "v1", "Node", pool)


def test_pool_without_schedulable_nodes_refuses(org: Org, cordoned_node: str) -> None:
    pool = l4_pool(org, cordoned_node)
    assert pool_preflight_refusal(pool=pool) == (
        f"Pool {pool}: none of the 1 nodes matching {POOL_LABEL}={cordoned_node} is Ready and schedulable."
    )


def test_cluster_without_credentials_or_answer_refuses(org: Org) -> None:
    bare = Cluster.objects.create(name="bare", api_url="https://127.0.0.1:6443")
    refusal = pool_preflight_refusal(
        pool=factories.pool("interactive-a100", PoolClass.INTERACTIVE, org.a100, cluster=bare)
    )
    assert refusal is not None
    assert "Cannot check pool bare/interactive-a100 on cluster bare" in refusal
    assert "no credentials" in refusal

    silent = Cluster.objects.create(name="silent", api_url=f"http://127.0.0.1:{free_port()}", token="t")
    refusal = pool_preflight_refusal(
        pool=factories.pool("interactive-a100", PoolClass.INTERACTIVE, org.a100, cluster=silent)
    )
    assert refusal is not None
    assert "Cannot check pool silent/interactive-a100 on cluster silent" in refusal
    assert "unreachable" in refusal


def test_auto_approval_falls_back_to_a_human_when_the_pre_flight_fails(org: Org, settings) -> None:
    settings.PORTAL_AUTO_APPROVAL = {PoolClass.EMBEDDING.value: {"max_gpus": 4, "max_days": 7}}
    l4_pool(org, f"prv-nowhere-{secrets.token_hex(3)}")
    now = timezone.now()
    req = factories.request(
        org.member,
        org.team,
        Accelerator.objects.get(slug="l4-24gb"),
        gpus=1,
        pool_class=PoolClass.EMBEDDING,
        starts_at=now,
        ends_at=now + timedelta(days=2),
    )
    assert req.state == RequestState.PENDING_PLATFORM
    note = AuditEvent.objects.get(action="capacity_request.submitted", object_id=str(req.pk)).message
    assert note.startswith("Not auto-approved: Pool ")
    assert "matches its selector" in note
