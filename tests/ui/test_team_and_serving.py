"""The team page (grants against their use) and the serving deployment form on a grant."""

import pytest
from django.utils import timezone

from pools.models import PoolUtilisation
from quotas import services
from quotas.models import ServingDeployment
from quotas.states import RequestState
from tests import factories
from tests.ui.conftest import htmx

IMAGE = "registry.example.com/llm/vllm:v0.6.3"


@pytest.fixture
def grant(world):
    return factories.approved_grant(
        factories.request(world.bob, world.vision, world.a100, gpus=4), world.admin
    )


def test_team_page_shows_each_grant_against_its_measured_use(world, login, grant):
    services.serving_deployment_create(
        grant=grant, actor=world.alice, name="chat", model_name="llama", image=IMAGE, replicas=2
    )
    PoolUtilisation.objects.create(
        pool=world.interactive,
        computed_at=timezone.now(),
        detail={"namespaces": [{"namespace": grant.namespace, "gpus": 3, "pending_gpus": 1}]},
    )
    page = login(world.alice).get("/team/vision/").content.decode()
    row = page[page.index(grant.namespace) : page.index("</tr>", page.index(grant.namespace))]
    assert "3 / 4" in row and "(+1 pending)" in row
    assert '<td class="num">2</td>' in row  # two replicas of one GPU asked by serving
    assert "chat" in page and "llama" in page


def test_the_serving_form_reports_the_services_errors_inline(world, login, grant):
    alice = login(world.alice)
    url = f"/grants/{grant.pk}/deployments/new/"
    assert "registry.example.com/llm/" in alice.get(url).content.decode()
    form = {"name": "chat", "model_name": "llama", "image": "docker.io/vllm/vllm:1", "replicas": "1"}
    response = alice.post(url, {**form, "gpus_per_replica": "1"}, **htmx())
    assert response.status_code == 422
    assert "Images must come from an allowlisted registry: registry.example.com/llm/." in (
        response.content.decode()
    )
    response = alice.post(url, {**form, "image": IMAGE, "replicas": "3", "gpus_per_replica": "2"}, **htmx())
    assert response.status_code == 422
    assert f"3 x 2 nvidia.com/gpu = 6 does not fit grant {grant.namespace}: it holds 4" in (
        response.content.decode()
    )
    response = alice.post(url, {**form, "image": IMAGE, "env": "NOT A PAIR", "gpus_per_replica": "1"})
    assert "Line 1 has no &#x27;=&#x27;: write NAME=value." in response.content.decode()
    assert not ServingDeployment.objects.exists()

    response = alice.post(
        url,
        {
            **form,
            "image": IMAGE,
            "gpus_per_replica": "1",
            "env": "MAX_MODEL_LEN=8192",
            "args": "--port\n8000",
        },
    )
    assert response.status_code == 302 and response["Location"] == f"/requests/{grant.request_id}/#grant"
    deployment = ServingDeployment.objects.get()
    assert (deployment.env, deployment.args, deployment.created_by) == (
        {"MAX_MODEL_LEN": "8192"},
        ["--port", "8000"],
        world.alice,
    )


def test_serving_is_for_the_team_only(world, login, grant):
    url = f"/grants/{grant.pk}/deployments/new/"
    assert login(world.carol).get(url).status_code == 404
    response = login(world.auditor).post(url, {"name": "x"})
    assert response.status_code == 403
    assert "Auditors can read everything but change nothing." in response.content.decode()
    assert (
        "New serving deployment"
        not in login(world.auditor).get(f"/requests/{grant.request_id}/").content.decode()
    )


def test_scale_and_delete_from_the_grant_page(world, login, grant):
    deployment = services.serving_deployment_create(
        grant=grant, actor=world.alice, name="chat", model_name="llama", image=IMAGE
    )
    alice = login(world.alice)
    page = alice.post(f"/deployments/{deployment.pk}/scale/", {"replicas": "9"}, follow=True).content.decode()
    assert "does not fit grant" in page
    page = alice.post(f"/deployments/{deployment.pk}/scale/", {"replicas": "3"}, follow=True).content.decode()
    assert "Deployment chat scaled to 3." in page
    assert login(world.carol).post(f"/deployments/{deployment.pk}/delete/").status_code == 404
    page = alice.post(f"/deployments/{deployment.pk}/delete/", follow=True).content.decode()
    assert "Deployment chat deleted" in page
    deployment.refresh_from_db()
    assert deployment.replicas == 3 and deployment.deleted_at is not None


def test_an_ended_grant_offers_no_serving(world, login, grant):
    services.grant_revoke(grant=grant, actor=world.admin, reason="budget cut")
    page = login(world.alice).get(f"/requests/{grant.request_id}/").content.decode()
    assert "New serving deployment" not in page and "Revoked by a platform admin." in page
    response = login(world.alice).post(
        f"/grants/{grant.pk}/deployments/new/",
        {"name": "chat", "model_name": "llama", "image": IMAGE, "replicas": "1", "gpus_per_replica": "1"},
    )
    assert response.status_code == 422
    assert "serving deployments need an approved or active grant" in response.content.decode()


def test_admin_revokes_a_grant_from_its_page(world, login, grant):
    alice = login(world.alice)
    assert "Revoke grant" not in alice.get(f"/requests/{grant.request_id}/").content.decode()
    forged = alice.post(f"/grants/{grant.pk}/revoke/", {"reason": "mine"}, follow=True).content.decode()
    assert "Only a platform admin can revoke a grant." in forged
    grant.request.refresh_from_db()
    assert grant.request.state == RequestState.APPROVED

    admin = login(world.admin)
    assert "Revoke grant" in admin.get(f"/requests/{grant.request_id}/").content.decode()
    page = admin.post(f"/grants/{grant.pk}/revoke/", {"reason": " "}, follow=True).content.decode()
    assert "Say why the grant is revoked; the team reads it." in page
    page = admin.post(f"/grants/{grant.pk}/revoke/", {"reason": "over budget"}, follow=True).content.decode()
    assert f"Grant {grant.namespace} revoked" in page
    grant.request.refresh_from_db()
    assert grant.request.state == RequestState.REVOKED
