"""Cluster registration and inventory sync through the API, against the real testbed."""

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from pools.models import Cluster, NodePool
from tests import testbed as tb
from tests.api.test_tokens import assert_error

pytestmark = pytest.mark.cluster

Api = Callable[[str], APIClient]


def test_admin_registers_and_syncs_the_testbed(api: Api, testbed: tb.Testbed) -> None:
    name = tb.unique_name("api")
    response = api("admin").post(
        "/api/v1/clusters/", {"name": name, "kubeconfig": testbed.kubeconfig}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == name and body["server_version"].startswith("v1.")
    assert "kubeconfig" not in body and "BEGIN" not in str(body)
    cluster = Cluster.objects.get(name=name)
    assert cluster.kubeconfig == testbed.kubeconfig  # stored (encrypted), never returned

    summary = api("admin").post(f"/api/v1/clusters/{cluster.pk}/sync/")
    assert summary.status_code == 200, summary.content
    created = set(summary.json()["created"])
    assert {"interactive-a100", "batch-h100", "embedding-l4", "experimentation-mig"} <= created
    pools = api("alice").get(f"/api/v1/pools/?cluster={name}").json()["results"]
    assert {p["name"] for p in pools} == set(
        NodePool.objects.filter(cluster=cluster).values_list("name", flat=True)
    )
    interactive = next(p for p in pools if p["name"] == "interactive-a100")
    assert interactive["capacity_gpus"] >= 32 and interactive["figures"]["free_gpus"] > 0


def test_registration_failures_name_the_field(api: Api, testbed: tb.Testbed) -> None:
    before = Cluster.objects.count()
    body = assert_error(
        api("admin").post(
            "/api/v1/clusters/",
            {"name": tb.unique_name("api"), "kubeconfig": "not: [a kubeconfig"},
            format="json",
        ),
        400,
        "invalid_kubeconfig",
    )
    assert list(body["fields"]) == ["kubeconfig"]
    body = assert_error(
        api("admin").post(
            "/api/v1/clusters/",
            {
                "name": tb.unique_name("api"),
                "api_url": testbed.server,
                "token": "wrong",
                "ca_data": testbed.ca_data,
            },
            format="json",
        ),
        400,
        "unauthorized",
    )
    assert list(body["fields"]) == ["token"]
    assert Cluster.objects.count() == before
