"""Session expiry and CSRF with htmx: the whole page goes to the login form, never a swapped fragment."""

import os
import subprocess
import sys

from django.test import Client

from portal.sessions import SessionStore
from tests import factories
from tests.ui.conftest import htmx


def test_an_expired_session_sends_htmx_requests_to_the_login_page(world):
    req = factories.request(world.alice, world.vision, world.a100)
    anonymous = Client()
    page = f"/requests/{req.pk}/"
    response = anonymous.get(page, **htmx("request-live", f"http://testserver{page}"))
    assert response.status_code == 401
    assert response["HX-Redirect"] == f"/login/?next=%2Frequests%2F{req.pk}%2F"
    post = anonymous.post(
        f"{page}decide/", {"decision": "approve"}, **htmx("decision-panel", f"http://testserver{page}")
    )
    assert post.status_code == 401 and post["HX-Redirect"].startswith("/login/?next=")

    plain = anonymous.get(page)
    assert plain.status_code == 302 and plain["Location"] == f"/login/?next=/requests/{req.pk}/"


def test_a_stale_csrf_token_reloads_the_page_instead_of_swapping_an_error(world):
    req = factories.request(world.alice, world.vision, world.a100)
    bob = Client(enforce_csrf_checks=True)
    bob.force_login(world.bob)
    stale = bob.post(
        f"/requests/{req.pk}/decide/",
        {"decision": "approve"},
        HTTP_X_CSRFTOKEN="stale",
        **htmx("decision-panel"),
    )
    assert stale.status_code == 403 and stale["HX-Refresh"] == "true"
    assert bob.post(f"/requests/{req.pk}/decide/", {"decision": "approve"}).status_code == 403
    req.refresh_from_db()
    assert not req.decisions.exists()


def test_htmx_posts_carry_the_csrf_token_from_the_page(world):
    req = factories.request(world.alice, world.vision, world.a100)
    bob = Client(enforce_csrf_checks=True)
    bob.force_login(world.bob)
    page = bob.get("/inbox/").content.decode()
    marker = '"X-CSRFToken": "'
    token = page[page.index(marker) + len(marker) :].split('"', 1)[0]
    response = bob.post(
        f"/requests/{req.pk}/decide/",
        {"decision": "approve"},
        HTTP_X_CSRFTOKEN=token,
        **htmx(f"inbox-item-{req.pk}"),
    )
    assert response.status_code == 200


def test_login_and_logout(world):
    client = Client()
    response = client.post("/login/", {"username": "alice", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert "Hello alice" in client.get("/").content.decode()
    bad = Client().post("/login/", {"username": "alice", "password": "nope"})
    assert "Please enter a correct username and password" in bad.content.decode()
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_single_sign_on_is_off_by_default_and_wired_when_enabled():
    assert "organisation account" not in Client().get("/login/").content.decode()
    env = {
        **os.environ,
        "PORTAL_OIDC_ENABLED": "true",
        "PORTAL_OIDC_CLIENT_ID": "portal",
        "PORTAL_OIDC_CLIENT_SECRET": "s3cret",
        "PORTAL_OIDC_AUTHORIZATION_ENDPOINT": "https://idp.example.com/auth",
        "PORTAL_OIDC_TOKEN_ENDPOINT": "https://idp.example.com/token",
        "PORTAL_OIDC_USER_ENDPOINT": "https://idp.example.com/userinfo",
        "PORTAL_OIDC_JWKS_ENDPOINT": "https://idp.example.com/jwks",
    }
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "from django.test.utils import override_settings, setup_test_environment\n"
        "setup_test_environment()\n"
        # No database in this process: keep the OIDC state in a signed cookie session.
        "override_settings(SESSION_ENGINE='django.contrib.sessions.backends.signed_cookies').enable()\n"
        "page = Client().get('/login/').content.decode()\n"
        "assert 'href=\"/oidc/authenticate/\"' in page, page\n"
        "start = Client().get('/oidc/authenticate/')\n"
        "assert start.status_code == 302, start\n"
        "assert start['Location'].startswith('https://idp.example.com/auth?'), start\n"
        "assert 'client_id=portal&' in start['Location'], start\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_a_session_is_read_in_one_query_and_refused_once_it_expired(world, django_assert_num_queries):
    from datetime import timedelta

    from django.utils import timezone

    from portal.models import Session

    client = Client()
    client.force_login(world.alice)
    key = client.cookies["sessionid"].value
    store = SessionStore(session_key=key)
    with django_assert_num_queries(1):
        assert store.load()["_auth_user_id"] == str(world.alice.pk)
    assert client.get("/requests/").status_code == 200

    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(seconds=1))
    assert SessionStore(session_key=key).load() == {}
    response = client.get("/requests/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_expired_sessions_are_purged_and_live_ones_kept(world):
    from datetime import timedelta

    from django.utils import timezone

    from portal.models import Session
    from portal.tasks import sessions_purge

    expired, live = Client(), Client()
    expired.force_login(world.alice)
    live.force_login(world.bob)
    gone = expired.cookies["sessionid"].value
    Session.objects.filter(session_key=gone).update(expire_date=timezone.now() - timedelta(seconds=1))
    assert sessions_purge() == 1
    assert not Session.objects.filter(session_key=gone).exists()
    assert live.get("/requests/").status_code == 200


def auth_reads(client: Client, page: str) -> list[str]:
    """The statements of a GET of `page` that read the session or the user."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert client.get(page).status_code == 200
    sent = [q["sql"] for q in queries]
    return [sql for sql in sent if '"portal_session"' in sql or sql.startswith('SELECT "portal_user"')]


def test_a_signed_in_request_reads_its_session_and_user_in_one_query(world):
    client = Client()
    client.force_login(world.alice)
    [read] = auth_reads(client, "/requests/")
    assert 'FROM "portal_session"' in read and 'JOIN "portal_user"' in read


def test_a_session_ends_when_its_user_changes_password_is_deactivated_or_is_deleted(world):
    from portal.models import Session

    clients = {}
    for user in (world.alice, world.bob, world.carol):
        clients[user.username] = Client()
        clients[user.username].force_login(user)
        assert clients[user.username].get("/requests/").status_code == 200
    world.alice.set_password("another one")  # the session's hash no longer matches
    world.alice.save()
    world.bob.is_active = False
    world.bob.save()
    assert Session.objects.filter(user=world.carol).count() == 1
    world.carol.delete()
    assert not Session.objects.filter(user_id=world.carol.pk).exists()
    for client in clients.values():
        response = client.get("/requests/")
        assert response.status_code == 302 and response["Location"].startswith("/login/")
