"""The request page's live part polls while something is in flight and stops itself with HTTP 286."""

from django.utils import timezone

from quotas import services
from quotas.models import Grant
from quotas.states import RequestState
from tests import factories
from tests.ui.conftest import htmx

POLL = 'hx-trigger="every 2s"'


def poll(client, req):
    return client.get(f"/requests/{req.pk}/", **htmx("request-live", f"http://testserver/requests/{req.pk}/"))


def test_a_pending_request_polls_until_it_is_rejected(world, login):
    req = factories.request(world.alice, world.vision, world.a100)
    alice = login(world.alice)
    assert POLL in alice.get(f"/requests/{req.pk}/").content.decode()
    response = poll(alice, req)
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith("{# ") is False
    assert POLL in response.content.decode()

    services.capacity_request_reject(capacity_request=req, actor=world.bob, comment="not this quarter")
    settled = poll(alice, req)
    assert settled.status_code == 286
    body = settled.content.decode()
    assert POLL not in body and "Rejected." in body and "not this quarter" in body
    assert POLL not in alice.get(f"/requests/{req.pk}/").content.decode()


def test_an_approved_grant_polls_until_the_cluster_reports_it_active(world, login):
    req = factories.request(world.bob, world.vision, world.a100)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    alice = login(world.alice)
    response = poll(alice, req)
    assert response.status_code == 200 and "the portal is setting up namespace vision-interactive-r" in (
        response.content.decode()
    )

    # What the reconciler records once the cluster enforces the grant.
    grant = Grant.objects.get(request=req)
    conditions = [
        {
            "type": "QuotaEnforced",
            "status": "True",
            "reason": "QuotaApplied",
            "message": "ResourceQuota gpu-quota limits requests.nvidia.com/gpu to 4",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        }
    ]
    Grant.objects.filter(pk=grant.pk).update(
        observed_generation=grant.generation, conditions=conditions, reconciled_at=timezone.now()
    )
    type(req).objects.filter(pk=req.pk).update(state=RequestState.ACTIVE)
    settled = poll(alice, req)
    assert settled.status_code == 286
    body = settled.content.decode()
    assert POLL not in body
    assert f"Active: namespace {grant.namespace} may use 4 \N{MULTIPLICATION SIGN} NVIDIA A100 80GB." in body
    assert "QuotaApplied" in body and "limits requests.nvidia.com/gpu to 4" in body
    assert "2026-01-02 03:04:05" in body


def test_a_failed_condition_shows_the_clusters_reason(world, login):
    req = factories.request(world.bob, world.vision, world.a100)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    message = 'namespaces "vision-interactive" is forbidden: User "portal" cannot create resource'
    Grant.objects.filter(request=req).update(
        conditions=[
            {
                "type": "Applied",
                "status": "False",
                "reason": "Forbidden",
                "message": message,
                "lastTransitionTime": "2026-01-02T03:04:05Z",
            }
        ]
    )
    body = login(world.alice).get(f"/requests/{req.pk}/").content.decode()
    assert "Forbidden" in body and "cannot create resource" in body


def test_the_timeline_lists_the_audit_trail_of_request_and_grant(world, login):
    req = factories.request(world.alice, world.vision, world.a100)
    services.capacity_request_approve(capacity_request=req, actor=world.bob, comment="ok for vision")
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    other = factories.request(world.alice, world.vision, world.a100)
    body = login(world.alice).get(f"/requests/{req.pk}/").content.decode()
    timeline = body[body.index('<ol class="timeline">') :]
    for label in [
        "Capacity request created",
        "Capacity request submitted",
        "Capacity request lead approved</strong> by bob — ok for vision",
        "Capacity request approved</strong> by admin",
        "Grant created",
    ]:
        assert label in timeline, label
    assert timeline.index("Capacity request created") < timeline.index("Grant created")
    assert timeline.count("Capacity request created") == 1, f"request #{other.pk} leaked in"


def test_the_page_polls_until_a_model_server_is_ready(world, login):
    req = factories.request(world.bob, world.vision, world.a100)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    grant = Grant.objects.get(request=req)
    Grant.objects.filter(pk=grant.pk).update(observed_generation=grant.generation)
    type(req).objects.filter(pk=req.pk).update(state=RequestState.ACTIVE)
    deployment = services.serving_deployment_create(
        grant=grant,
        actor=world.alice,
        name="chat",
        model_name="llama",
        image="registry.example.com/llm/vllm:1",
    )
    alice = login(world.alice)
    assert poll(alice, req).status_code == 200  # not applied yet
    type(deployment).objects.filter(pk=deployment.pk).update(observed_generation=deployment.generation)
    assert poll(alice, req).status_code == 200  # applied, replicas still loading
    type(deployment).objects.filter(pk=deployment.pk).update(ready_replicas=1)
    assert poll(alice, req).status_code == 286
