"""Every page carries a strict Content-Security-Policy and the usual security headers; no inline code."""

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from tests import factories

TEMPLATES = Path(settings.BASE_DIR) / "templates"


def _policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.mark.parametrize(
    "url",
    [
        "/login/",
        "/",
        "/requests/",
        "/requests/new/",
        "/team/",
        "/inbox/",
        "/pools/",
        "/clusters/",
        "/utilisation/",
        "/account/tokens/",
        "/api/docs/",
        "/api/docs/?script=",
        "/api/v1/me/",
        "/admin/",
        "/no-such-page/",
    ],
)
def test_every_page_sends_a_strict_policy_and_the_usual_headers(world, url):
    client = Client()
    client.force_login(world.admin)
    response = client.get(url)
    assert response.status_code in (200, 302, 403, 404), (url, response.status_code)  # refusals too
    policy = _policy(response)
    assert policy["script-src"] == ["'self'"], url
    assert policy["style-src"] == ["'self'"], url
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["form-action"] == ["'self'"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert (
        "camera=()" in response["Permissions-Policy"] and "geolocation=()" in response["Permissions-Policy"]
    )


def test_the_login_page_and_htmx_partials_carry_it_too(world):
    from tests.ui.conftest import htmx

    assert "'unsafe-inline'" not in Client().get("/login/")["Content-Security-Policy"]
    client = Client()
    client.force_login(world.alice)
    req = factories.request(world.alice, world.vision, world.a100)
    partial = client.get(f"/requests/{req.pk}/", **htmx("request-live"))
    assert partial.status_code in (200, 286)
    assert _policy(partial)["script-src"] == ["'self'"]


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE), "inline <script>"),
    (re.compile(r"<style\b", re.IGNORECASE), "<style> element"),
    (re.compile(r"\sstyle\s*=", re.IGNORECASE), "style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.IGNORECASE), "inline event handler"),
    (re.compile(r"\bhx-on", re.IGNORECASE), "hx-on (needs eval)"),
    (re.compile(r"javascript:", re.IGNORECASE), "javascript: URL"),
]


def test_no_template_has_inline_scripts_styles_or_handlers():
    found = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        text = template.read_text()
        for pattern, what in INLINE:
            found += [
                f"{template.relative_to(TEMPLATES)}: {what}: {m.group(0)!r}" for m in pattern.finditer(text)
            ]
    assert not found, "\n".join(found)


def test_htmx_runs_without_eval_and_without_its_injected_styles(world):
    client = Client()
    client.force_login(world.alice)
    page = client.get("/").content.decode()
    config = re.search(r"<meta name=\"htmx-config\" content='([^']*)'", page)
    assert config, "base.html configures htmx in a meta tag"
    assert '"allowEval": false' in config.group(1)
    # htmx otherwise adds a <style> element for its request indicators, which style-src 'self' refuses.
    assert '"includeIndicatorStyles": false' in config.group(1)
