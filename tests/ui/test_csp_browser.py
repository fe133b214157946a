"""The pages run in Chromium under their Content-Security-Policy without a single violation, htmx included.

The `browser` fixture (tests/ui/conftest.py) fails any test whose pages log a CSP violation; these tests walk
the pages no other browser test opens, and check that the watch itself sees a violation when there is one.
"""

from playwright.sync_api import expect

from tests import factories
from tests.ui.browser import console_watch, screenshot, signed_in


def test_every_page_of_the_portal_loads_under_the_policy(world, live_server, browser):
    req = factories.request(world.alice, world.vision, world.a100)
    root = factories.user("root", is_platform_admin=True, is_staff=True, is_superuser=True)
    admin = signed_in(browser, live_server.url, root)
    for url, marker in [
        ("/", "h1"),
        ("/requests/", "table"),
        (f"/requests/{req.pk}/", "#request-live"),
        ("/team/", "h1"),
        ("/inbox/", "h1"),
        ("/pools/", "table"),
        ("/clusters/", "h1"),
        ("/utilisation/", "h1"),
        ("/account/tokens/", "h1"),
        ("/admin/", "#content"),
        ("/admin/portal/user/", "#result_list"),
        (f"/admin/portal/user/{world.alice.pk}/change/", "form"),
    ]:
        admin.goto(url)
        expect(admin.locator(marker).first).to_be_visible()
    # The API documentation page renders the schema with local assets only. It waits for the whole
    # schema to be generated and parsed before it shows anything: give it time on a busy machine.
    admin.goto("/api/docs/")
    expect(admin.locator(".swagger-ui .information-container")).to_contain_text(
        "GPU Capacity Portal API", timeout=60_000
    )
    screenshot(admin, "api-docs")


def test_htmx_swaps_and_the_wizard_work_under_the_policy(world, live_server, browser):
    alice = signed_in(browser, live_server.url, world.alice)
    alice.get_by_role("link", name="New request").click()
    alice.get_by_label("Pool class").select_option(label="Interactive inference")
    # An htmx GET re-renders the accelerator field; an htmx POST re-renders the summary.
    accelerator = alice.get_by_label("Accelerator", exact=True)
    expect(accelerator.locator("option")).to_have_count(2)
    accelerator.select_option(str(world.a100.pk))
    alice.get_by_label("GPUs", exact=True).fill("2")
    expect(alice.locator("#summary-cost")).to_contain_text("840.00")  # 2 GPUs x 168 h x 2.50


def test_the_watch_sees_a_violation_when_a_page_has_one(world, live_server, browser):
    # An inline style element and an inline handler added to a real portal page are refused by its policy,
    # and the console watch of the `browser` fixture reports both.
    watch = console_watch(browser)
    page = signed_in(browser, live_server.url, world.alice)
    assert watch.csp_violations() == []
    page.evaluate(
        """() => {
            const style = document.createElement('style');
            style.textContent = 'body { background: red }';
            document.head.append(style);
            const html = '<img src="data:," onload="window.inlineRan = true">';
            document.body.insertAdjacentHTML('beforeend', html);
        }"""
    )
    page.wait_for_function("document.images.length > 0 && [...document.images].every(i => i.complete)")
    violations = watch.csp_violations()
    assert any("style-src" in v for v in violations), watch.messages
    assert any("script-src" in v for v in violations), watch.messages
    assert page.evaluate("window.inlineRan === undefined"), "the inline handler must not have run"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 0, 0)"
    watch.clear()  # wanted here: the fixture must not fail this test for them
