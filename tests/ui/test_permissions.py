"""Who may see and do what in the browser: the same scoping and refusals as the services."""

import pytest

from quotas.models import CapacityRequest
from quotas.states import RequestState
from tests import factories
from tests.ui.conftest import htmx

READ_ONLY = "Auditors can read everything but change nothing."


@pytest.fixture
def pending(world):
    return factories.request(world.alice, world.vision, world.a100, gpus=4)


def test_carol_gets_404_on_every_page_of_vision(world, login, pending):
    carol = login(world.carol)
    assert carol.get(f"/requests/{pending.pk}/").status_code == 404
    assert carol.get(f"/requests/{pending.pk}/", **htmx("request-live")).status_code == 404
    assert carol.get("/team/vision/").status_code == 404
    assert carol.post(f"/requests/{pending.pk}/decide/", {"decision": "approve"}).status_code == 404
    assert carol.post(f"/requests/{pending.pk}/cancel/").status_code == 404
    assert f"#{pending.pk}" not in carol.get("/requests/").content.decode()
    pending.refresh_from_db()
    assert pending.state == RequestState.PENDING_LEAD


def test_alice_sees_her_request_but_no_approve_button(world, login, pending):
    page = login(world.alice).get(f"/requests/{pending.pk}/").content.decode()
    assert "Waiting for a lead of team vision" in page
    assert 'value="approve"' not in page
    assert "Cancel this request" in page


def test_a_forged_approve_post_is_refused_with_a_403(world, login, pending):
    alice = login(world.alice)
    plain = alice.post(f"/requests/{pending.pk}/decide/", {"decision": "approve"})
    assert plain.status_code == 403
    assert "Nobody approves or rejects their own request." in plain.content.decode()
    inline = alice.post(
        f"/requests/{pending.pk}/decide/", {"decision": "approve"}, **htmx(f"inbox-item-{pending.pk}")
    )
    assert inline.status_code == 403
    assert 'role="alert">Nobody approves or rejects their own request.' in inline.content.decode()
    pending.refresh_from_db()
    assert pending.state == RequestState.PENDING_LEAD
    assert not pending.decisions.exists()


def test_a_member_cannot_approve_a_teammates_request(world, login):
    dave = factories.member(world.vision, "dave")
    req = factories.request(dave, world.vision, world.a100)
    response = login(world.alice).post(f"/requests/{req.pk}/decide/", {"decision": "approve"})
    assert response.status_code == 403
    assert "Only a lead of team vision can decide at the team-lead stage." in response.content.decode()


def test_lead_then_admin_approve_inline(world, login, pending):
    bob = login(world.bob)
    inbox = bob.get("/inbox/").content.decode()
    assert f'id="inbox-item-{pending.pk}"' in inbox
    assert "Pool local/interactive-a100: 4 of 32 GPUs granted after this, 8 kept as headroom." in inbox

    response = bob.post(
        f"/requests/{pending.pk}/decide/",
        {"decision": "approve", "comment": "fine"},
        **htmx(f"inbox-item-{pending.pk}"),
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert body.startswith('<article class="card inbox-item decision-target"')
    assert "it now awaits a platform admin" in body

    admin = login(world.admin)
    response = admin.post(
        f"/requests/{pending.pk}/decide/", {"decision": "approve"}, **htmx(f"inbox-item-{pending.pk}")
    )
    assert response.status_code == 200
    assert "4 x NVIDIA A100 80GB granted to team vision" in response.content.decode()
    pending.refresh_from_db()
    assert pending.state == RequestState.APPROVED
    assert pending.grant.gpus == 4


def test_reject_without_comment_explains_itself_inline(world, login, pending):
    response = login(world.bob).post(
        f"/requests/{pending.pk}/decide/", {"decision": "reject", "comment": " "}, **htmx("decision-panel")
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert body.startswith('<section class="card decision-target" id="decision-panel"')
    assert "Say why the request is rejected; the requester reads it." in body
    pending.refresh_from_db()
    assert pending.state == RequestState.PENDING_LEAD


def test_approval_refused_when_the_pool_is_full_shows_the_numbers(world, login):
    big = factories.request(world.bob, world.vision, world.a100, gpus=20)  # bob is lead: platform stage
    other = factories.request(world.bob, world.vision, world.a100, gpus=10)
    admin = login(world.admin)
    assert admin.post(f"/requests/{big.pk}/decide/", {"decision": "approve"}).status_code == 302
    inbox = admin.get("/inbox/").content.decode()
    assert "Approving would fail now:" in inbox
    response = admin.post(
        f"/requests/{other.pk}/decide/", {"decision": "approve"}, **htmx(f"inbox-item-{other.pk}")
    )
    assert response.status_code == 422
    assert "Pool local/interactive-a100 cannot take 10 more: 20 of 32 already granted" in (
        response.content.decode()
    )


def test_the_auditor_sees_everything_and_changes_nothing(world, login, pending):
    auditor = login(world.auditor)
    page = auditor.get(f"/requests/{pending.pk}/").content.decode()
    assert "Request #" in page and 'value="approve"' not in page and "Cancel this request" not in page
    assert auditor.get("/team/vision/").status_code == 200
    assert auditor.get("/team/nlp/").status_code == 200
    assert auditor.get("/pools/").status_code == 200
    assert auditor.get("/clusters/").status_code == 200

    for url, data in [
        (f"/requests/{pending.pk}/decide/", {"decision": "approve"}),
        (f"/requests/{pending.pk}/cancel/", {}),
        ("/requests/new/", {"pool_class": "interactive-inference"}),
    ]:
        response = auditor.post(url, data)
        assert response.status_code == 403, url
        assert READ_ONLY in response.content.decode()
    inline = auditor.post(f"/requests/{pending.pk}/decide/", {"decision": "reject"}, **htmx("decision-panel"))
    assert inline.status_code == 403 and READ_ONLY in inline.content.decode()
    assert auditor.get("/requests/new/").status_code == 403
    pending.refresh_from_db()
    assert pending.state == RequestState.PENDING_LEAD
    assert CapacityRequest.objects.count() == 1


def test_admin_pages_are_hidden_from_team_members(world, login):
    alice = login(world.alice)
    for url in ["/pools/", "/clusters/", f"/clusters/{world.interactive.cluster_id}/"]:
        assert alice.get(url).status_code == 404, url
    admin = login(world.admin)
    page = admin.get(f"/clusters/{world.interactive.cluster_id}/").content.decode()
    assert "interactive-a100" in page


def test_cancel_by_requester(world, login, pending):
    response = login(world.alice).post(f"/requests/{pending.pk}/cancel/", follow=True)
    assert f"Request #{pending.pk} cancelled." in response.content.decode()
    pending.refresh_from_db()
    assert pending.state == RequestState.CANCELLED


def test_navigation_follows_the_role(world, login):
    alice_nav = login(world.alice).get("/").content.decode()
    assert "New request" in alice_nav and "/inbox/" not in alice_nav and "/clusters/" not in alice_nav
    bob_nav = login(world.bob).get("/").content.decode()
    assert "/inbox/" in bob_nav and "/clusters/" not in bob_nav
    admin_nav = login(world.admin).get("/").content.decode()
    assert "/inbox/" in admin_nav and "/clusters/" in admin_nav and "New request" not in admin_nav
    auditor_nav = login(world.auditor).get("/").content.decode()
    assert (
        "/clusters/" in auditor_nav
        and "auditor, read-only" in auditor_nav
        and "New request" not in auditor_nav
    )
