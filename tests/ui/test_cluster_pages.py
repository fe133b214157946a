"""Cluster administration pages against the real testbed: register, test, sync, conformance."""

import secrets

import pytest

from pools.models import Cluster, NodePool
from tests.ui.conftest import htmx

READ_ONLY = "Auditors can read everything but change nothing."


def test_only_admins_manage_clusters(world, login):
    cluster_id = world.interactive.cluster_id
    auditor = login(world.auditor)
    assert auditor.get(f"/clusters/{cluster_id}/").status_code == 200
    assert "Sync inventory" not in auditor.get(f"/clusters/{cluster_id}/").content.decode()
    for url in ["/clusters/new/", f"/clusters/{cluster_id}/test/", f"/clusters/{cluster_id}/sync/"]:
        response = auditor.post(url, {"name": "x"})
        assert response.status_code == 403 and READ_ONLY in response.content.decode(), url
    alice = login(world.alice)
    for url in ["/clusters/new/", f"/clusters/{cluster_id}/conformance/"]:
        assert alice.get(url).status_code == 404, url
    assert alice.post(f"/clusters/{cluster_id}/sync/").status_code == 404


def test_a_cluster_that_cannot_be_read_says_why(world, login):
    admin = login(world.admin)
    cluster_id = world.interactive.cluster_id
    report = admin.get(f"/clusters/{cluster_id}/conformance/", **htmx("conformance")).content.decode()
    assert "Could not read cluster local:" in report and "No violations" not in report
    synced = admin.post(f"/clusters/{cluster_id}/sync/", **htmx("cluster-action-result")).content.decode()
    assert 'role="alert"' in synced and "Inventory synced" not in synced


@pytest.mark.cluster
def test_admin_registers_tests_and_syncs_the_testbed(world, login, testbed):
    admin = login(world.admin)
    name = f"ui-{secrets.token_hex(3)}"
    response = admin.post("/clusters/new/", {"name": name, "kubeconfig": testbed.kubeconfig}, follow=True)
    cluster = Cluster.objects.get(name=name)
    page = response.content.decode()
    assert f"Cluster {name} registered (v1.36" in page
    assert "kubeconfig stored, encrypted" in page
    assert "client-key-data" not in page and testbed.kubeconfig[-40:] not in page

    tested = admin.post(f"/clusters/{cluster.pk}/test/", **htmx("cluster-action-result")).content.decode()
    assert f"Connected to {name}: Kubernetes v1.36" in tested and "GPU nodes" in tested

    synced = admin.post(f"/clusters/{cluster.pk}/sync/", **htmx("cluster-action-result")).content.decode()
    assert "Inventory synced: pools" in synced
    for pool in ["interactive-a100", "batch-h100", "embedding-l4", "experimentation-mig"]:
        assert NodePool.objects.filter(cluster=cluster, name=pool).exists()
        assert pool in synced  # the out-of-band pool table
    assert 'id="cluster-facts" aria-labelledby="cluster-facts-title" hx-swap-oob="true"' in synced

    report = admin.get(f"/clusters/{cluster.pk}/conformance/", **htmx("conformance")).content.decode()
    assert 'class="conformance-report"' in report and "Could not read" not in report
    assert "Pool local" not in report


@pytest.mark.cluster
def test_bad_credentials_are_refused_inline_and_never_echoed(world, login, testbed):
    admin = login(world.admin)
    token = f"not-a-real-token-{secrets.token_hex(8)}"
    response = admin.post(
        "/clusters/new/",
        {"name": "badtoken", "api_url": testbed.server, "token": token, "ca_data": testbed.ca_data},
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert 'id="id_token_error"><li>The cluster refused the credentials (401 Unauthorized)' in body
    assert token not in body
    assert not Cluster.objects.filter(name="badtoken").exists()

    garbage = f"apiVersion: v1\nclusters: []\nusers: [{{name: x, user: {{token: {token}}}}}]\n"
    response = admin.post("/clusters/new/", {"name": "badconfig", "kubeconfig": garbage})
    assert response.status_code == 422
    body = response.content.decode()
    assert 'id="id_kubeconfig_error"><li>The kubeconfig has no current-context.' in body
    assert token not in body


def test_an_unreachable_api_server_is_named(world, login):
    response = login(world.admin).post(
        "/clusters/new/", {"name": "nowhere", "api_url": "https://127.0.0.1:9", "token": "abc"}
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert 'id="id_api_url_error"><li>Cluster nowhere is unreachable' in body
