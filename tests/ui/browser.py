"""Real headless Chromium (Debian's /usr/bin/chromium; never a downloaded browser) for browser tests."""

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, WebError

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


# Chromium reports every blocked script, style, frame or connection on the console in these words.
CSP_VIOLATION = re.compile(r"Content[ -]Security[ -]Policy", re.IGNORECASE)


class ConsoleWatch:
    """Console messages and uncaught page errors of every context a browser opens, for the whole test.

    `watch_console(browser)` wraps the browser's new_context/new_page so no test has to remember it; the
    fixture that launched the browser calls `check()` when the test ends, which fails on any CSP violation.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.page_errors: list[str] = []

    def attach(self, context: BrowserContext) -> BrowserContext:
        context.on("console", self._console)
        context.on("weberror", self._page_error)
        return context

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url", "") if message.location else ""
        self.messages.append(
            f"[{message.type}] {message.text} ({where or (message.page.url if message.page else '')})"
        )

    def _page_error(self, error: WebError) -> None:
        page = error.page.url if error.page else "?"
        self.page_errors.append(f"{error.error} ({page})")

    def csp_violations(self) -> list[str]:
        return [m for m in self.messages + self.page_errors if CSP_VIOLATION.search(m)]

    def check(self) -> None:
        violations = self.csp_violations()
        if violations:
            other = [m for m in self.page_errors if m not in violations]
            pytest.fail(
                f"{len(violations)} Content-Security-Policy violation(s) in the browser:\n  "
                + "\n  ".join(violations)
                + ("\nuncaught page errors:\n  " + "\n  ".join(other) if other else ""),
                pytrace=False,
            )

    def clear(self) -> None:
        self.messages.clear()
        self.page_errors.clear()


def watch_console(browser: Browser) -> ConsoleWatch:
    """Attach a ConsoleWatch to every context (and stand-alone page) this browser creates from now on."""
    watch = ConsoleWatch()
    new_context = browser.new_context

    def watched_context(*args: Any, **kwargs: Any) -> BrowserContext:
        return watch.attach(new_context(*args, **kwargs))

    def watched_page(*args: Any, **kwargs: Any) -> Page:
        # Browser.new_page would open a context of its own that the wrapper above never sees.
        return watched_context(*args, **kwargs).new_page()

    browser.new_context = watched_context  # type: ignore[method-assign]
    browser.new_page = watched_page  # type: ignore[method-assign]
    browser.console_watch = watch  # type: ignore[attr-defined]
    return watch


def console_watch(browser: Browser) -> ConsoleWatch:
    """The watch `watch_console` attached to this browser."""
    return browser.console_watch  # type: ignore[attr-defined]


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
