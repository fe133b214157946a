"""Inventory sync rules (create, update, disable, never break grants), with the cluster's node list
replaced by the testbed's rendered topology: the database side without a cluster."""

import copy
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from pools import services, tasks
from pools.kube.errors import Unreachable
from pools.kube.objects import POOL_LABEL
from pools.models import Accelerator, Cluster, NodePool
from portal.models import AuditEvent
from quotas.models import Grant
from quotas.states import RequestState
from tests import factories
from tests.cluster.test_discovery import expected_pools, nodes_of, whole_gpu_pools
from tests.testbed import load_testbed_module

tb = load_testbed_module()


class FakeCluster:
    """Stands in for pools.kube.ops: serves a node list (and Karpenter NodePools, none unless a test
    sets them), or fails like an unreachable cluster."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.nodepools: list[dict[str, Any]] = []
        self.down = False
        self.calls = 0
        self.kueue_versions: list[str] = []  # what /apis/kueue.x-k8s.io lists; none: no Kueue

    def server_version(self, cluster: Cluster) -> str:
        self.calls += 1
        if self.down:
            raise Unreachable(f"Cluster {cluster.name} is unreachable: the connection was refused.")
        return "v1.36.1"

    def create(self, cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
        assert manifest["kind"] == "SelfSubjectAccessReview"
        return {**manifest, "status": {"allowed": True}}

    def served_versions(self, cluster: Cluster, group: str) -> list[str]:
        assert group == "kueue.x-k8s.io"
        return list(self.kueue_versions)

    def list_objects(self, cluster: Cluster, api_version: str, kind: str, **kw: Any) -> list[dict[str, Any]]:
        if (api_version, kind) == ("karpenter.sh/v1", "NodePool"):
            return copy.deepcopy(self.nodepools)
        assert (api_version, kind) == ("v1", "Node")
        return copy.deepcopy(self.nodes)


@pytest.fixture
def topology() -> dict[str, Any]:
    return tb.load_topology()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, topology: dict[str, Any]) -> FakeCluster:
    fake = FakeCluster(tb.render_nodes(topology))
    monkeypatch.setattr(services.ops, "server_version", fake.server_version)
    monkeypatch.setattr(services.ops, "list_objects", fake.list_objects)
    monkeypatch.setattr(services.ops, "create", fake.create)
    monkeypatch.setattr(services.ops, "served_versions", fake.served_versions)
    return fake


@pytest.fixture
def admin(db: None):
    return factories.user(is_platform_admin=True)


@pytest.fixture
def cluster(db: None) -> Cluster:
    return factories.cluster("inventory")


def pools_as_expected(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {
        p.name: {
            "pool_class": p.pool_class,
            "product": p.accelerator.product,
            "mig_profile": p.accelerator.mig_profile,
            "capacity": p.capacity_gpus,
            "zones": p.zones,
        }
        for p in NodePool.objects.filter(cluster=cluster, enabled=True).select_related("accelerator")
    }


def without_node_counts(expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {k: v for k, v in pool.items() if k != "nodes"} for name, pool in expected.items()}


def test_first_sync_creates_every_gpu_pool_and_the_catalogue(fake, cluster, admin, topology):
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    expected = without_node_counts(expected_pools(topology))
    assert sorted(summary.created) == sorted(expected)
    assert pools_as_expected(cluster) == expected
    # Every accelerator was unknown: created at cost 0, and the summary says so.
    assert summary.catalogue_created and all(
        Accelerator.objects.get(slug=slug).hourly_cost == 0 for slug in summary.catalogue_created
    )
    assert any("hourly cost 0" in note for note in summary.notes)
    pool = NodePool.objects.get(cluster=cluster, name=next(iter(expected)))
    assert pool.node_selector == {POOL_LABEL: pool.name}
    assert (pool.taint_key, pool.taint_value, pool.taint_effect) == (POOL_LABEL, pool.name, "NoSchedule")
    cluster.refresh_from_db()
    assert cluster.server_version == "v1.36.1" and cluster.last_synced_at and cluster.last_error == ""
    assert cluster.zones == sorted({z for p in expected.values() for z in p["zones"]})
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert actions.count("pool.create") == len(expected)
    assert actions.count("accelerator.create") == len(summary.catalogue_created)
    assert all(event.actor == admin for event in AuditEvent.objects.all())


def test_a_second_sync_changes_nothing(fake, cluster, admin):
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    events = AuditEvent.objects.count()
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert not summary.changed and summary.unchanged
    assert AuditEvent.objects.count() == events


def test_existing_catalogue_rows_are_matched_by_product(fake, cluster, admin, topology):
    spec = whole_gpu_pools(topology)[0]
    accel = topology["accelerators"][spec["accelerator"]]
    mine = factories.accelerator("house-name", accel["memoryGiB"], product=accel["product"], hourly_cost=7)
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert NodePool.objects.get(cluster=cluster, name=spec["name"]).accelerator == mine


def test_capacity_change_updates_the_pool_and_lowers_headroom(fake, cluster, admin, topology):
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    spec = whole_gpu_pools(topology)[0]
    pool = NodePool.objects.get(cluster=cluster, name=spec["name"])
    pool.headroom_gpus = pool.capacity_gpus
    pool.save()
    fake.nodes = [n for n in fake.nodes if n not in nodes_of(fake.nodes, spec["name"])[1:]]
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    pool.refresh_from_db()
    assert summary.updated == [spec["name"]]
    assert pool.capacity_gpus == spec["gpus"] == pool.headroom_gpus
    event = AuditEvent.objects.get(action="pool.update", object_id=str(pool.pk))
    assert event.after["capacity_gpus"] == spec["gpus"] and "capacity_gpus" in event.before


def test_a_vanished_pool_is_disabled_not_deleted(fake, cluster, admin, topology):
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    gone = whole_gpu_pools(topology)[0]["name"]
    fake.nodes = [n for n in fake.nodes if n["metadata"]["labels"][POOL_LABEL] != gone]
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert summary.disabled == [gone]
    assert NodePool.objects.get(cluster=cluster, name=gone).enabled is False
    assert AuditEvent.objects.filter(action="pool.disable").count() == 1
    # Back on the cluster, it stays disabled until an admin says otherwise.
    fake.nodes = tb.render_nodes(topology)
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert NodePool.objects.get(cluster=cluster, name=gone).enabled is False
    assert any(gone in note and "stays disabled" in note for note in summary.notes)


def test_accelerator_of_a_pool_with_active_grants_is_left_for_an_admin(fake, cluster, admin, topology):
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    pools = whole_gpu_pools(topology)
    home = pools[0]
    other = next(p for p in pools if p["accelerator"] != home["accelerator"])
    pool = NodePool.objects.get(cluster=cluster, name=home["name"])
    team = factories.team()
    req = factories.request(factories.member(team), team, pool.accelerator, gpus=1)
    req.state = RequestState.ACTIVE
    req.save()
    now = timezone.now()
    Grant.objects.create(
        request=req,
        team=team,
        pool=pool,
        gpus=1,
        namespace="t-grant",
        starts_at=now,
        ends_at=now + timedelta(days=1),
    )
    # Every node of the pool now reports the other accelerator (say, the pool was re-imaged).
    replacement = nodes_of(fake.nodes, other["name"])[0]
    for node in nodes_of(fake.nodes, home["name"]):
        node["metadata"]["labels"] = {**replacement["metadata"]["labels"], POOL_LABEL: home["name"]}
    before = pool.accelerator
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    pool.refresh_from_db()
    assert pool.accelerator == before
    assert any(home["name"] in note and "left unchanged" in note for note in summary.notes)


def test_a_failed_sync_records_the_error_and_changes_nothing(fake, cluster, admin):
    fake.down = True
    with pytest.raises(ValidationError) as caught:
        services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert caught.value.error_dict["api_url"][0].code == "unreachable"
    cluster.refresh_from_db()
    assert "unreachable" in cluster.last_error and cluster.last_synced_at is None
    assert not NodePool.objects.filter(cluster=cluster).exists()


def test_a_cluster_without_gpu_nodes_is_refused(fake, cluster, admin):
    fake.nodes = [n for n in fake.nodes if "nvidia.com/gpu.present" not in n["metadata"]["labels"]]
    with pytest.raises(ValidationError) as caught:
        services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert caught.value.error_dict["__all__"][0].code == "no_gpu_nodes"
    cluster.refresh_from_db()
    assert "no GPU nodes" in cluster.last_error


def test_only_platform_admins_sync(fake, cluster):
    with pytest.raises(PermissionDenied):
        services.cluster_sync_inventory(cluster=cluster, actor=factories.user())


def test_the_sync_task_retries_an_unreachable_cluster_but_not_a_permanent_refusal(fake, cluster):
    fake.down = True
    result = tasks.cluster_sync_inventory.apply(args=[cluster.pk])
    assert result.failed()
    assert fake.calls == 1 + tasks.cluster_sync_inventory.max_retries
    fake.down, fake.calls = False, 0
    fake.nodes = [n for n in fake.nodes if "nvidia.com/gpu.present" not in n["metadata"]["labels"]]
    result = tasks.cluster_sync_inventory.apply(args=[cluster.pk])
    assert result.successful() and fake.calls == 1
    cluster.refresh_from_db()
    assert "no GPU nodes" in cluster.last_error


def test_registration_refuses_a_cluster_without_gpu_nodes(fake, admin):
    fake.nodes = [n for n in fake.nodes if "nvidia.com/gpu.present" not in n["metadata"]["labels"]]
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(name="cpu-only", api_url="https://k8s.example.com", token="t", actor=admin)
    assert caught.value.error_dict["__all__"][0].code == "no_gpu_nodes"
    assert not Cluster.objects.exists()


def test_registration_input_errors_name_their_fields(fake, admin):
    cases = [
        ({"api_url": "https://k8s.example.com"}, {"token": "required"}),
        ({"token": "t"}, {"api_url": "required"}),
        ({"api_url": "not a url", "token": "t"}, {"api_url": "invalid"}),
        ({"kubeconfig": "current-context: [", "token": "t"}, {"__all__": "both"}),
        ({"kubeconfig": "kind: Config"}, {"kubeconfig": "invalid_kubeconfig"}),
    ]
    for arguments, expected in cases:
        with pytest.raises(ValidationError) as caught:
            services.cluster_register(name="c1", actor=admin, **arguments)
        assert {field: errors[0].code for field, errors in caught.value.error_dict.items()} == expected
    services.cluster_register(name="c1", api_url="https://k8s.example.com", token="t", actor=admin)
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(name="c1", api_url="https://k8s.example.com", token="t", actor=admin)
    assert caught.value.error_dict["name"][0].code == "unique"
    with pytest.raises(PermissionDenied):
        services.cluster_register(
            name="c2", api_url="https://k8s.example.com", token="t", actor=factories.user()
        )


# --- elastic pools: Karpenter NodePools ---------------------------------------------------------


def test_nodepools_make_elastic_pools_with_no_node_and_their_limit_as_capacity(
    fake, cluster, admin, topology
):
    fake.nodepools = tb.render_nodepools(topology, bringup_seconds=5)
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    for spec in topology["elasticPools"]:
        assert spec["name"] in summary.created
        pool = NodePool.objects.get(cluster=cluster, name=spec["name"])
        assert pool.node_groups == [spec["name"]] and pool.elastic
        assert pool.capacity_gpus == spec["limits"]["gpus"]
        assert pool.pool_class == spec["class"]
        assert pool.accelerator.product == topology["accelerators"][spec["accelerator"]]["product"]
        assert pool.zones == sorted(spec["zones"])
        assert (pool.taint_key, pool.taint_value) == (POOL_LABEL, spec["name"])
    # Static pools stay static.
    assert NodePool.objects.get(cluster=cluster, name=whole_gpu_pools(topology)[0]["name"]).node_groups == []
    # A larger limit is a larger pool; a NodePool that is gone disables its pool.
    spec = topology["elasticPools"][0]
    grown = copy.deepcopy(next(p for p in fake.nodepools if p["metadata"]["name"] == spec["name"]))
    grown["spec"]["limits"] = {"nvidia.com/gpu": "64"}
    fake.nodepools = [grown]
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert spec["name"] in summary.updated
    assert NodePool.objects.get(cluster=cluster, name=spec["name"]).capacity_gpus == 64
    gone = [p["name"] for p in topology["elasticPools"][1:]]
    assert all(not NodePool.objects.get(cluster=cluster, name=name).enabled for name in gone)


def test_nodepools_the_credentials_may_not_list_are_a_note_not_a_failed_sync(
    fake, cluster, admin, monkeypatch
):
    from pools.kube.errors import Forbidden

    def forbidden(cluster, api_version, kind, **kw):
        if kind == "NodePool":
            raise Forbidden(
                'nodepools.karpenter.sh is forbidden: User "portal" cannot list resource "nodepools"'
            )
        return fake.list_objects(cluster, api_version, kind, **kw)

    monkeypatch.setattr(services.ops, "list_objects", forbidden)
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert summary.created
    assert any(note.startswith("Karpenter NodePools were not read") for note in summary.notes)


def test_sync_records_whether_the_cluster_serves_kueue_and_audits_the_change(
    db: None, fake: FakeCluster
) -> None:
    admin = factories.user("kueue-admin", is_platform_admin=True)
    cluster = factories.cluster()
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    assert cluster.kueue_version == ""
    fake.kueue_versions = ["v1beta1", "v1beta2"]
    services.cluster_sync_inventory(cluster=cluster, actor=admin)
    cluster.refresh_from_db()
    assert cluster.kueue_version == "v1beta2"
    change = AuditEvent.objects.filter(action="cluster.update").latest("pk")
    assert (change.before["kueue_version"], change.after["kueue_version"]) == ("", "v1beta2")
    batch = NodePool.objects.get(cluster=cluster, name="batch-h100")
    assert batch.admission_mode == "kueue"
    assert NodePool.objects.get(cluster=cluster, name="interactive-a100").admission_mode == "quota"
    # Only the older API: the portal cannot use it, says so, and batch pools admit through quota.
    fake.kueue_versions = ["v1beta1"]
    summary = services.cluster_sync_inventory(cluster=cluster, actor=admin)
    cluster.refresh_from_db()
    assert cluster.kueue_version == ""
    assert any("serves Kueue's API only as v1beta1" in note for note in summary.notes)
