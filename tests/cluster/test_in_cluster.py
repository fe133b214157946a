"""Registering the cluster the portal runs in, from the pod's own ServiceAccount (no kubeconfig upload).

Against the testbed: a ServiceAccount's token and the cluster CA are written where the kubelet would
mount them (PORTAL_SERVICE_ACCOUNT_DIR points there) and KUBERNETES_SERVICE_HOST/PORT name the
testbed's apiserver, as a pod's environment would. The permission checks are the same as for any
registration.
"""

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from pools import services
from pools.kube import client, ops
from pools.kube.errors import Unauthorized
from pools.models import Cluster
from portal.api.services import api_token_issue
from portal.models import AuditEvent
from tests import factories
from tests.testbed import unique_name

pytestmark = pytest.mark.cluster

EVERYTHING = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
NODES_ONLY = [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list", "watch"]}]


@pytest.fixture
def pod_environment(testbed, sa_token, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make this process look like a pod whose ServiceAccount is bound to `rules`."""

    def mount(rules: list[dict]) -> Path:
        folder = tmp_path / "serviceaccount"
        folder.mkdir(exist_ok=True)
        (folder / "token").write_text(sa_token(rules))
        (folder / "ca.crt").write_text(testbed.ca_data)
        server = urlsplit(testbed.server)
        monkeypatch.setenv(client.SERVICE_ACCOUNT_DIR_ENV, str(folder))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname or "")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        return folder

    return mount


def test_outside_a_pod_the_option_is_refused_with_the_reason(db, platform_admin, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(name="home", in_cluster=True, actor=platform_admin)
    error = caught.value.error_dict["in_cluster"][0]
    assert error.code == "not_in_cluster"
    assert "not running inside a Kubernetes pod" in error.message
    assert not Cluster.objects.exists()


def test_in_cluster_registration_checks_the_service_accounts_permissions(db, platform_admin, pod_environment):
    pod_environment(NODES_ONLY)
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(name="home", in_cluster=True, actor=platform_admin)
    assert caught.value.error_dict["__all__"][0].code == "missing_permissions"
    assert not Cluster.objects.exists()


def test_in_cluster_registration_stores_no_credentials_and_follows_the_rotated_token(
    db, testbed, platform_admin, pod_environment, sa_token
):
    folder = pod_environment(EVERYTHING)
    cluster = services.cluster_register(name=unique_name("home"), in_cluster=True, actor=platform_admin)
    stored = Cluster.objects.get(pk=cluster.pk)
    assert stored.in_cluster and (stored.kubeconfig, stored.token, stored.ca_data) == ("", "", "")
    assert stored.api_url == testbed.server and stored.server_version
    audit = AuditEvent.objects.get(action="cluster.register", object_id=str(cluster.pk))
    assert audit.after["credentials"] == "in-cluster service account"
    assert ops.list_objects(stored, "v1", "Node")
    # The kubelet rotates the mounted token: a revoked one is not kept in a cached connection.
    (folder / "token").write_text("not-a-token")
    with pytest.raises(Unauthorized):
        ops.list_objects(stored, "v1", "Node")
    (folder / "token").write_text(sa_token(EVERYTHING))
    assert ops.list_objects(stored, "v1", "Node")


def test_in_cluster_takes_no_other_credentials(db, platform_admin, pod_environment):
    pod_environment(EVERYTHING)
    with pytest.raises(ValidationError, match="give no kubeconfig, URL, token or CA"):
        services.cluster_register(name="home", in_cluster=True, token="t", actor=platform_admin)


def test_only_platform_admins_register_it_in_the_api_and_the_browser_alike(
    db, platform_admin, pod_environment, client
):
    pod_environment(EVERYTHING)
    member = factories.user("member")
    with pytest.raises(PermissionDenied):
        services.cluster_register(name="home", in_cluster=True, actor=member)

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=member, name='t').raw}")
    assert (
        api.post("/api/v1/clusters/", {"name": "home", "in_cluster": True}, format="json").status_code == 403
    )

    # A superuser who is not flagged platform admin is an admin all the same, in the API too.
    root = factories.user("root", is_superuser=True, is_staff=True)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=root, name='t').raw}")
    answer = api.post("/api/v1/clusters/", {"name": "home", "in_cluster": True}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["in_cluster"] is True and "token" not in answer.json()

    client.force_login(platform_admin)
    page = client.get(reverse("pools:cluster_register")).content.decode()
    assert "The cluster this portal runs in" in page
    posted = client.post(reverse("pools:cluster_register"), {"name": "home-2", "in_cluster": "on"})
    assert posted.status_code == 302, posted.content.decode()[:2000]
    assert Cluster.objects.get(name="home-2").in_cluster
