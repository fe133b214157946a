from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import Client
from playwright.sync_api import Browser, sync_playwright

from portal.models import User
from tests.ui.browser import launch, watch_console


def htmx(target: str | None = None, current_url: str = "http://testserver/") -> dict[str, Any]:
    """The headers htmx 2 sends with a request (django-htmx reads them into request.htmx)."""
    headers = {"HX-Request": "true", "HX-Current-URL": current_url}
    if target:
        headers["HX-Target"] = target
    return {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}


@pytest.fixture
def login():
    def signed_in(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return signed_in


@pytest.fixture(autouse=True)
def _no_cluster_preflight(settings):
    # These pages are tested against the `world` fixture's made-up cluster; asking it whether the pool's
    # nodes exist belongs to the provisioning tests (and the browser test against the testbed).
    settings.PORTAL_PREFLIGHT = False


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are plain
    # synchronous code all the same, so Django's guard against ORM calls from async code must be off.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        chromium = launch(p)
        console = watch_console(chromium)
        try:
            yield chromium
            console.check()  # any CSP violation in any page of the test fails it
        finally:
            chromium.close()
            # ORM calls made while Playwright's loop runs get connections of their own; leaving them
            # open would block dropping the test database at the end of the session.
            connections.close_all()
