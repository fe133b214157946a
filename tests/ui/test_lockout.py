"""Password guessing is locked per account and per address (django-axes); the page says until when; audited.

The lock lasts PORTAL_LOGIN_LOCKOUT_MINUTES after the last failure. Rather than waiting, the tests move the
recorded failures back in time: a minute short of the window the lock holds, past it the password works.
"""

import re
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from playwright.sync_api import expect
from rest_framework.test import APIClient

from portal.api.services import api_token_issue
from portal.models import AuditEvent
from portal.security import client_ip
from tests import factories
from tests.ui.browser import PASSWORD, screenshot

WRONG = "not-the-password"
LOCKED = re.compile(
    r"Too many failed sign-in attempts for (this account|your network address): sign-in is locked until "
    r"(\d\d:\d\d) UTC \(in (\d+) minutes?\)\. Until then even the right password is refused\."
)


def sign_in(username: str, password: str, **extra: str):
    return Client().post("/login/", {"username": username, "password": password}, **extra)


def locked_until(response) -> tuple[str, str]:
    assert response.status_code == 429, response.status_code
    found = LOCKED.search(response.content.decode())
    assert found, response.content.decode()
    return found.group(1), found.group(2)


def age_failures(by: timedelta) -> None:
    for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= by
        attempt.save(update_fields=["attempt_time"])


def test_the_account_locks_at_the_limit_says_until_when_and_holds_until_then(world):
    limit = settings.AXES_FAILURE_LIMIT
    window = settings.AXES_COOLOFF_TIME
    for _ in range(limit - 1):
        response = sign_in("alice", WRONG)
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    reason, until = locked_until(sign_in("alice", WRONG))
    assert reason == "this account"
    last_failure = AccessAttempt.objects.get(username="alice").attempt_time
    assert until == f"{last_failure + window:%H:%M}"

    # The right password is refused too, from any address, and the stated time does not move.
    for address in ("127.0.0.1", "192.0.2.44"):
        refused = sign_in("alice", PASSWORD, REMOTE_ADDR=address)
        assert locked_until(refused) == ("this account", until)
        assert "sessionid" not in refused.cookies
    # Other accounts are not affected.
    assert sign_in("bob", PASSWORD, REMOTE_ADDR="192.0.2.45").status_code == 302

    audit = AuditEvent.objects.get(action="login.locked_out")
    assert (audit.object_type, audit.object_id) == ("portal.user", str(world.alice.pk))
    assert audit.after["failures"] == limit and audit.after["username"] == "alice"
    assert audit.after["locked_until"] and until in audit.message

    age_failures(window - timedelta(minutes=1))
    assert locked_until(sign_in("alice", PASSWORD))[0] == "this account"
    age_failures(timedelta(minutes=2))
    signed_in = sign_in("alice", PASSWORD)
    assert signed_in.status_code == 302 and signed_in["Location"] == "/"
    # A success clears the account's failures: the next mistake starts counting from one again.
    assert sign_in("alice", WRONG).status_code == 200
    assert AuditEvent.objects.filter(action="login.locked_out").count() == 1


def test_one_address_guessing_many_accounts_is_locked_without_locking_the_accounts(world):
    attacker = {"REMOTE_ADDR": "203.0.113.7"}
    for n in range(settings.AXES_FAILURE_LIMIT):
        last = sign_in(f"guess{n}", WRONG, **attacker)
    assert locked_until(last)[0] == "your network address"
    assert locked_until(sign_in("carol", PASSWORD, **attacker))[0] == "your network address"
    assert sign_in("carol", PASSWORD, REMOTE_ADDR="198.51.100.3").status_code == 302
    audit = AuditEvent.objects.get(action="login.locked_out")
    assert audit.object_type == "axes.accessattempt" and audit.after["ip_address"] == "203.0.113.7"


@override_settings(PORTAL_TRUSTED_PROXIES=1)
def test_behind_the_proxy_the_forwarded_address_counts_and_a_forged_one_does_not(world):
    proxy = "10.0.0.2"
    for n in range(settings.AXES_FAILURE_LIMIT):
        # The client writes whatever it likes at the left of the header; the proxy appends what it saw.
        forged = f"198.18.0.{n}, 198.51.100.9"
        last = sign_in(f"guess{n}", WRONG, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=forged)
    assert locked_until(last)[0] == "your network address"
    assert AccessAttempt.objects.filter(ip_address="198.51.100.9").count() == settings.AXES_FAILURE_LIMIT
    # Another client behind the same proxy is not locked out with it.
    assert (
        sign_in("carol", PASSWORD, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="198.51.100.10").status_code == 302
    )


def _request(remote: str, forwarded: str | None = None):
    from django.test import RequestFactory

    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "client"),
    [
        (0, "192.0.2.1", "203.0.113.9", "192.0.2.1"),  # no proxy trusted: the header is the client's word
        (1, "10.0.0.2", "203.0.113.9", "203.0.113.9"),
        (1, "10.0.0.2", "6.6.6.6, 203.0.113.9", "203.0.113.9"),
        (2, "10.0.0.2", "6.6.6.6, 203.0.113.9, 10.0.0.7", "203.0.113.9"),
        (2, "10.0.0.2", "203.0.113.9", "10.0.0.2"),  # came through fewer proxies than configured
        (1, "10.0.0.2", None, "10.0.0.2"),
        (1, "10.0.0.2", "not-an-address", "10.0.0.2"),
        (1, "10.0.0.2", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address_through_trusted_proxies(settings, proxies, remote, forwarded, client):
    settings.PORTAL_TRUSTED_PROXIES = proxies
    assert client_ip(_request(remote, forwarded)) == client


def test_api_tokens_still_work_for_a_locked_account_from_a_locked_address(world):
    issued = api_token_issue(user=world.alice, name="ci")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        last = sign_in("alice", WRONG)
    assert locked_until(last)[0] == "this account"
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw}")
    response = api.get("/api/v1/me/")
    assert response.status_code == 200 and response.json()["username"] == "alice"
    created = api.get("/api/v1/capacity-requests/")
    assert created.status_code == 200


def test_a_locked_out_user_reads_why_in_the_browser(world, live_server, browser):
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.goto("/login/")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(WRONG)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#login-errors")).to_contain_text("Please enter a correct username and password")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(WRONG)
    page.get_by_role("button", name="Sign in").click()
    lockout = page.get_by_role("alert").filter(has_text="Too many failed sign-in attempts")
    expect(lockout).to_contain_text(LOCKED)
    expect(page.locator("#login-errors")).to_have_count(0)
    until = LOCKED.search(lockout.inner_text()).group(2)
    screenshot(page, "login-locked")

    # The right password does not get in before the stated time.
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text=until)).to_be_visible()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    assert AuditEvent.objects.filter(action="login.locked_out", object_id=str(world.alice.pk)).count() == 1


def test_a_sign_in_without_a_request_is_refused_by_the_throttle(db):
    # Every sign-in path must pass its request, or the throttle could not count by address.
    from axes.exceptions import AxesBackendRequestParameterRequired
    from django.contrib.auth import authenticate

    factories.user("dora")
    with pytest.raises(AxesBackendRequestParameterRequired):
        authenticate(username="dora", password=PASSWORD)
