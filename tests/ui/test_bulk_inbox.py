"""The inbox's bulk decision: select, preview the capacity impact per pool, decide with one comment."""

import pytest
from playwright.sync_api import expect

from portal.models import AuditEvent
from quotas import services
from quotas.models import CapacityRequest, Grant
from quotas.states import RequestState as S
from tests import factories
from tests.ui.browser import mark_document, same_document, screenshot, signed_in
from tests.ui.conftest import htmx

pytestmark = pytest.mark.django_db


def at_platform(world, n, gpus=6):
    reqs = [factories.request(world.alice, world.vision, world.a100, gpus=gpus) for _ in range(n)]
    for req in reqs:
        services.capacity_request_approve(capacity_request=req, actor=world.bob)
    return reqs


def test_preview_counts_the_selection_per_pool_in_request_order(world, login) -> None:
    reqs = at_platform(world, 5)  # 24 grantable: four of 6 fit, the fifth would be refused
    admin = login(world.admin)
    query = "&".join(f"requests={r.pk}" for r in reqs)
    page = admin.get(f"/inbox/preview/?{query}", **htmx("bulk-impact")).content.decode()
    assert "5 selected" in page
    assert "5 final approvals, 4 fit, for 24 GPUs: 24 of 32 granted after, 8 kept as headroom" in page
    assert f"#{reqs[-1].pk}: Pool local/interactive-a100 cannot take 6 more" in page
    # Requests not in the user's inbox are ignored, not previewed.
    assert "0 selected" not in admin.get("/inbox/preview/", **htmx("bulk-impact")).content.decode()
    lead = login(world.bob).get(f"/inbox/preview/?{query}", **htmx("bulk-impact")).content.decode()
    assert "final approval" not in lead


def test_bulk_decide_answers_each_and_keeps_the_inbox(world, login) -> None:
    reqs = at_platform(world, 5)
    admin = login(world.admin)
    body = {"decision": "approve", "comment": "quarter plan", "requests": [r.pk for r in reqs]}
    response = admin.post("/inbox/decide/", body, **htmx("inbox"))
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('data-outcome="approved"') == 4 and page.count('data-outcome="refused"') == 1
    assert "cannot take 6 more" in page
    assert f'id="inbox-item-{reqs[-1].pk}"' in page  # the refused one is still waiting
    assert 'id="inbox-count"' in page and 'hx-swap-oob="true"' in page
    assert Grant.objects.count() == 4
    assert AuditEvent.objects.filter(action="capacity_request.approved", message="quarter plan").count() == 4


def test_bulk_reject_needs_the_comment(world, login) -> None:
    reqs = at_platform(world, 2)
    admin = login(world.admin)
    response = admin.post(
        "/inbox/decide/", {"decision": "reject", "requests": [r.pk for r in reqs]}, **htmx("inbox")
    )
    assert response.status_code == 422
    assert "Say why the requests are rejected" in response.content.decode()
    assert set(CapacityRequest.objects.values_list("state", flat=True)) == {S.PENDING_PLATFORM}
    plain = admin.post("/inbox/decide/", {"decision": "reject", "comment": "no", "requests": [reqs[0].pk]})
    assert plain.status_code == 302
    assert CapacityRequest.objects.get(pk=reqs[0].pk).state == S.REJECTED


def test_auditors_cannot_bulk_decide(world, login) -> None:
    req = at_platform(world, 1)[0]
    response = login(world.auditor).post("/inbox/decide/", {"decision": "approve", "requests": [req.pk]})
    assert response.status_code == 403
    assert CapacityRequest.objects.get(pk=req.pk).state == S.PENDING_PLATFORM


def test_select_preview_and_approve_in_chromium(world, live_server, browser) -> None:
    reqs = at_platform(world, 3)
    page = signed_in(browser, live_server.url, world.admin)
    page.goto(f"{live_server.url}/inbox/")
    mark_document(page)
    impact = page.locator("#bulk-impact")
    expect(impact).to_contain_text("Select requests to see")
    page.get_by_label(f"Select #{reqs[0].pk}").check()
    expect(impact).to_contain_text("1 final approval, 1 fits, for 6 GPUs: 6 of 32 granted after")
    page.get_by_label("Select all 3 shown").check()
    expect(impact).to_contain_text("3 final approvals, 3 fit, for 18 GPUs: 18 of 32 granted after")
    screenshot(page, "inbox-bulk-preview")
    page.get_by_label("One comment for every selected request").fill("Quarter plan")
    page.get_by_role("button", name="Approve selected").click()
    expect(page.locator(".bulk-results li[data-outcome=approved]")).to_have_count(3)
    expect(page.locator("#inbox")).to_contain_text("Nothing is waiting for you.")
    assert same_document(page), "the bulk decision must not reload the page"
    assert Grant.objects.count() == 3
