"""Personal API tokens: hashed at rest, expiring, revocable, optionally read-only; the command; the page."""

import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from portal.api.services import api_token_issue, api_token_revoke
from portal.models import ApiToken, AuditEvent
from tests.api.conftest import request_body
from tests.conftest import World


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "message", "fields"}
    assert body["code"] == code, body
    assert body["message"]
    return body


def test_token_is_stored_as_a_digest_only(world: World) -> None:
    issued = api_token_issue(user=world.alice, name="ci")
    with connection.cursor() as cursor:
        cursor.execute("SELECT prefix, digest FROM portal_apitoken WHERE id = %s", [issued.token.pk])
        prefix, digest = cursor.fetchone()
    assert digest == hashlib.sha256(issued.raw.encode()).hexdigest()
    assert issued.raw.startswith(prefix) and len(prefix) == 12 and len(issued.raw) > 40
    assert issued.raw not in str(ApiToken.objects.filter(pk=issued.token.pk).values().get())
    event = AuditEvent.objects.get(action="api_token.issued")
    assert issued.raw not in str(event.after) + event.object_repr


def test_token_authenticates_as_its_user_and_records_use(world: World) -> None:
    issued = api_token_issue(user=world.alice, name="ci")
    response = bearer(issued.raw).get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["username"] == "alice"
    assert response.json()["token"]["prefix"] == issued.token.prefix
    issued.token.refresh_from_db()
    assert issued.token.last_used_at is not None


def test_no_credentials_is_401_with_challenge(db: None) -> None:
    response = APIClient().get("/api/v1/capacity-requests/")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer gpc_not-a-real-token", "invalid_token"),
        ("Bearer", "invalid_token"),
        ("Bearer two parts", "invalid_token"),
    ],
)
def test_bad_tokens_are_401(world: World, header: str, code: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(client.get("/api/v1/me/"), 401, code)


def test_expired_token_is_refused(world: World) -> None:
    issued = api_token_issue(user=world.alice, name="old", expires_in_days=1)
    ApiToken.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    body = assert_error(bearer(issued.raw).get("/api/v1/me/"), 401, "token_expired")
    assert "expired" in body["message"]


def test_revoked_token_is_refused(world: World) -> None:
    issued = api_token_issue(user=world.alice, name="leaked")
    assert bearer(issued.raw).get("/api/v1/me/").status_code == 200
    api_token_revoke(token=issued.token, actor=world.alice)
    assert_error(bearer(issued.raw).get("/api/v1/me/"), 401, "token_revoked")
    assert AuditEvent.objects.filter(action="api_token.revoked", object_id=str(issued.token.pk)).exists()


def test_token_of_inactive_user_is_refused(world: World) -> None:
    issued = api_token_issue(user=world.alice, name="ci")
    world.alice.is_active = False
    world.alice.save()
    assert_error(bearer(issued.raw).get("/api/v1/me/"), 401, "user_inactive")


def test_read_only_token_reads_but_never_writes(world: World) -> None:
    client = bearer(api_token_issue(user=world.alice, name="dashboards", read_only=True).raw)
    assert client.get("/api/v1/capacity-requests/").status_code == 200
    body = assert_error(
        client.post("/api/v1/capacity-requests/", request_body(world), format="json"), 403, "token_read_only"
    )
    assert "read-only" in body["message"]
    assert not world.vision.requests.exists()


def test_only_owner_or_admin_revokes(world: World) -> None:
    from django.core.exceptions import PermissionDenied

    token = api_token_issue(user=world.alice, name="ci").token
    with pytest.raises(PermissionDenied):
        api_token_revoke(token=token, actor=world.carol)
    api_token_revoke(token=token, actor=world.admin)
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_session_authentication_still_works_and_is_csrf_protected(world: World, client) -> None:
    client.force_login(world.alice)
    assert client.get("/api/v1/me/").json()["token"] is None
    csrf_client = APIClient(enforce_csrf_checks=True)
    csrf_client.force_login(world.alice)
    response = csrf_client.post("/api/v1/capacity-requests/", request_body(world), format="json")
    assert_error(response, 403, "permission_denied")
    assert "CSRF" in response.json()["message"]


def test_token_calls_are_throttled_sessions_are_not(world: World, settings, client) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": "3/min"}}
    api = bearer(api_token_issue(user=world.alice, name="busy").raw)
    for _ in range(3):
        assert api.get("/api/v1/me/").status_code == 200
    response = api.get("/api/v1/me/")
    body = assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert "throttled" in body["message"].lower()
    # Another token of the same user has its own allowance; the browser session is never throttled.
    assert bearer(api_token_issue(user=world.alice, name="other").raw).get("/api/v1/me/").status_code == 200
    client.force_login(world.alice)
    assert all(client.get("/api/v1/me/").status_code == 200 for _ in range(5))


# --- manage.py issue_token ------------------------------------------------------------------------


def test_issue_token_prints_a_working_token_once(world: World) -> None:
    out, err = StringIO(), StringIO()
    call_command("issue_token", "alice", "--expires", "7", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    assert raw.startswith("gpc_") and "\n" not in raw
    token = ApiToken.objects.get(user=world.alice)
    assert raw not in err.getvalue() and token.prefix in err.getvalue()
    assert timedelta(days=6) < token.expires_at - timezone.now() <= timedelta(days=7)
    assert not token.read_only
    assert bearer(raw).get("/api/v1/me/").json()["username"] == "alice"


def test_issue_token_read_only(world: World) -> None:
    out = StringIO()
    call_command("issue_token", "bob", "--read-only", stdout=out, stderr=StringIO())
    assert ApiToken.objects.get(user=world.bob).read_only
    client = bearer(out.getvalue().strip())
    assert client.post("/api/v1/capacity-requests/", {}, format="json").status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "No user 'nobody'"),
        (["alice", "--expires", "0"], "between 1 and"),
        (["alice", "--expires", "9999"], "between 1 and"),
    ],
)
def test_issue_token_refuses_bad_input(world: World, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("issue_token", *args, stdout=StringIO(), stderr=StringIO())
    assert not ApiToken.objects.exists()


# --- the tokens page -----------------------------------------------------------------------------


def test_tokens_page_issues_shows_once_and_revokes(world: World, client) -> None:
    client.force_login(world.alice)
    assert client.get("/account/tokens/").status_code == 200
    page = client.post("/account/tokens/", {"name": "notebook", "expires_in_days": 30, "read_only": "on"})
    assert page.status_code == 200
    token = ApiToken.objects.get(user=world.alice)
    raw = page.context["issued"].raw
    assert raw in page.content.decode() and token.read_only
    assert bearer(raw).get("/api/v1/me/").status_code == 200
    # Listed afterwards by prefix only; the token itself is never shown again.
    again = client.get("/account/tokens/").content.decode()
    assert token.prefix in again and raw not in again

    response = client.post(f"/account/tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    assert_error(bearer(raw).get("/api/v1/me/"), 401, "token_revoked")


def test_tokens_page_refuses_bad_input_and_other_users_tokens(world: World, client) -> None:
    client.force_login(world.alice)
    page = client.post("/account/tokens/", {"name": "", "expires_in_days": 0})
    assert page.context["form"].errors.keys() == {"name", "expires_in_days"}
    assert not ApiToken.objects.exists()
    bobs = api_token_issue(user=world.bob, name="bob's").token
    assert client.post(f"/account/tokens/{bobs.pk}/revoke/").status_code == 404
    assert bobs.name not in client.get("/account/tokens/").content.decode()
    bobs.refresh_from_db()
    assert bobs.revoked_at is None
