"""The request-to-approval flow in real headless Chromium against a live server.

alice asks for 4 A100 GPUs for interactive inference through the wizard, bob (her lead) and then a
platform admin approve in their inboxes, and alice's request page follows every step by itself.
"""

import re

from playwright.sync_api import Page, expect

from quotas.models import CapacityRequest
from quotas.states import RequestState
from tests.ui.browser import mark_document, same_document, screenshot, signed_in

STATE = ".status-line .state"


def fill_wizard(page: Page, *, accelerator_id: int, gpus: str) -> None:
    page.get_by_role("link", name="New request").click()
    page.get_by_label("Pool class").select_option(label="Interactive inference")
    accelerator = page.get_by_label("Accelerator", exact=True)
    # The accelerator field is re-rendered for the class: only A100 is offered, with room and price.
    expect(accelerator.locator("option")).to_have_text(
        ["Choose an accelerator…", re.compile(r"NVIDIA A100 80GB · 80 GiB · 24 free · 2\.500 per GPU-hour")]
    )
    accelerator.select_option(str(accelerator_id))
    page.get_by_label("Model size (billions of parameters)").fill("8")
    page.get_by_label("Model precision").select_option("bf16")
    expect(page.locator("#summary-fit")).to_contain_text("Fits: the model needs about 17.9 GiB per replica")
    page.get_by_label("GPUs", exact=True).fill(gpus)
    page.get_by_label("Purpose").fill("Serve the vision assistant to the support team")


def decide_in_inbox(page: Page, req: CapacityRequest, comment: str) -> None:
    page.get_by_role("link", name=re.compile("^Inbox")).click()
    item = page.locator(f"#inbox-item-{req.pk}")
    expect(item).to_contain_text("GPUs granted after this")
    mark_document(page)
    item.get_by_label("Comment").fill(comment)
    item.get_by_role("button", name=f"Approve #{req.pk}").click()


def test_alice_requests_bob_and_admin_approve_and_her_page_follows(world, live_server, browser):
    base = live_server.url
    alice = signed_in(browser, base, world.alice)
    screenshot(alice, "home-member")

    # Too many GPUs: the service's refusal appears next to the field, the page stays.
    fill_wizard(alice, accelerator_id=world.a100.pk, gpus="30")
    mark_document(alice)
    alice.get_by_role("button", name="Submit request").click()
    gpus_error = alice.locator("#id_gpus_error")
    expect(gpus_error).to_contain_text(
        "cannot take 30 more: 0 of 32 already granted and 8 kept as warm headroom"
    )
    expect(alice.get_by_label("GPUs", exact=True)).to_be_focused()
    assert same_document(alice) and not CapacityRequest.objects.exists()
    screenshot(alice, "wizard-error")

    alice.get_by_label("GPUs", exact=True).fill("4")
    expect(alice.locator("#summary-cost")).to_contain_text("1680.00")  # 4 GPUs x 168 h x 2.50
    screenshot(alice, "wizard")
    alice.get_by_role("button", name="Submit request").click()
    alice.wait_for_url(re.compile(r"/requests/\d+/$"))
    req = CapacityRequest.objects.get()
    assert (req.gpus, req.accelerator, req.pool_class) == (4, world.a100, "interactive-inference")
    expect(alice.locator(STATE)).to_have_text("Awaiting team lead")
    expect(alice.get_by_role("button", name=re.compile("^Approve"))).to_have_count(0)
    mark_document(alice)
    screenshot(alice, "request-pending")

    bob = signed_in(browser, base, world.bob)
    decide_in_inbox(bob, req, "Fits our serving budget")
    expect(bob.locator(f"#inbox-item-{req.pk}")).to_contain_text("it now awaits a platform admin")
    assert same_document(bob), "the inbox decision must not reload the page"
    expect(bob.locator("#inbox-count")).to_be_hidden()  # the count in the navigation follows
    screenshot(bob, "inbox-after-lead-approval")

    expect(alice.locator(STATE)).to_have_text("Awaiting platform admin")
    expect(alice.locator("#request-live")).to_contain_text("Fits our serving budget")

    admin = signed_in(browser, base, world.admin)
    admin.get_by_role("link", name=re.compile("^Inbox")).click()
    expect(admin.locator(f"#inbox-item-{req.pk}")).to_contain_text(
        "Pool local/interactive-a100: 4 of 32 GPUs granted after this, 8 kept as headroom."
    )
    screenshot(admin, "inbox-admin")
    decide_in_inbox(admin, req, "")
    expect(admin.locator(f"#inbox-item-{req.pk}")).to_contain_text(
        "4 x NVIDIA A100 80GB granted to team vision"
    )
    assert same_document(admin)

    expect(alice.locator(STATE)).to_have_text("Approved")
    expect(alice.locator("#grant")).to_contain_text(f"Grant {req.grant.namespace}")
    assert same_document(alice), "the request page must follow the approvals without a reload"
    req.refresh_from_db()
    assert req.state == RequestState.APPROVED
    screenshot(alice, "request-approved")

    alice.get_by_role("link", name="My team").click()
    expect(alice.locator("h1")).to_contain_text("Team Vision")
    screenshot(alice, "team")
    admin.get_by_role("link", name="Pools").click()
    expect(admin.locator("table")).to_contain_text("interactive-a100")
    screenshot(admin, "pools")
    admin.get_by_role("link", name="Clusters").click()
    admin.get_by_role("link", name="local").click()
    expect(admin.locator("#conformance")).to_contain_text("Could not read cluster local")
    screenshot(admin, "cluster")


def test_the_wizard_works_on_a_phone(world, live_server, browser):
    phone = signed_in(browser, live_server.url, world.alice, viewport={"width": 390, "height": 844})
    phone.get_by_role("link", name="New request").click()
    phone.get_by_label("Pool class").select_option(label="Experimentation")
    expect(phone.get_by_label("Accelerator", exact=True).locator("option")).to_contain_text(
        [re.compile("A100 MIG 1g.10gb · 10 GiB · 64 free")]
    )
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px wide)"
    screenshot(phone, "wizard-phone")


def test_keyboard_users_can_skip_to_the_content(world, live_server, browser):
    page = signed_in(browser, live_server.url, world.alice)
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()


def test_an_expired_session_takes_the_polling_page_to_the_login_form(world, live_server, browser):
    from tests import factories

    req = factories.request(world.alice, world.vision, world.a100)
    page = signed_in(browser, live_server.url, world.alice)
    page.goto(f"/requests/{req.pk}/")
    expect(page.locator(STATE)).to_have_text("Awaiting team lead")
    page.context.clear_cookies()  # what an expired session looks like to the server
    page.wait_for_url(re.compile(rf"/login/\?next=%2Frequests%2F{req.pk}%2F$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "login")
