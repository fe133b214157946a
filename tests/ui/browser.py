"""Real headless Chromium (Debian's /usr/bin/chromium; never a downloaded browser) for browser tests."""

from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, Playwright

from portal.models import User

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "pw"  # tests.factories.user's password


def launch(p: Playwright) -> Browser:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def signed_in(browser: Browser, base_url: str, user: User, **context_args: object) -> Page:
    """A page in its own browser context (its own cookies), signed in through the login form."""
    context: BrowserContext = browser.new_context(base_url=base_url, **context_args)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/")
    return page


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def mark_document(page: Page) -> None:
    """Tag the loaded document: the tag survives htmx swaps but not a reload or a navigation."""
    page.evaluate("window.__sameDocument = true")


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))
