"""Polls that cost nothing when nothing changed: the live regions carry the version of their figures as
a weak ETag and answer 304 Not Modified, without rendering, while it still holds."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import Client
from django.test.signals import template_rendered
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Browser, expect, sync_playwright

from pools.models import ClusterUtilisation, CollectorState, PoolSnapshot, PoolUtilisation, SnapshotResolution
from quotas.models import Grant, Membership
from tests import factories
from tests.ui.browser import launch, mark_document, same_document, signed_in, watch_console
from tests.utilisation.conftest import gpu_node, gpu_pod, publish_state, spec_of

pytestmark = pytest.mark.django_db

DASHBOARD = "utilisation-live"
# What every signed-in request reads before the view runs.
AUTH_TABLES = ('"portal_session"', '"portal_user"')


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def htmx(target: str, url: str, etag: str | None = None) -> dict[str, str]:
    headers = {
        "HTTP_HX_REQUEST": "true",
        "HTTP_HX_TARGET": target,
        "HTTP_HX_CURRENT_URL": "http://testserver" + url,
    }
    if etag:
        headers["HTTP_IF_NONE_MATCH"] = etag
    return headers


def regions(world) -> dict[str, tuple[str, str]]:
    pool = reverse("utilisation:pool", args=[world.interactive.pk])
    return {
        "overview": (reverse("utilisation:dashboard"), DASHBOARD),
        "pool": (pool, "pool-live"),
        "history": (pool + "?range=1h", "pool-history"),
    }


def poll(client: Client, url: str, target: str, etag: str | None = None):
    return client.get(url, **htmx(target, url, etag))


def publish(world, extra_nodes: int = 0, now=None) -> None:
    """The `published` figures again (a collector's next write), with `extra_nodes` more 8-GPU nodes."""
    from pools.utilisation.figures import GrantSpec, compute
    from quotas.models import Grant

    pool = world.interactive.name
    nodes = [gpu_node(f"a100-{i}", pool) for i in range(2 + extra_nodes)]
    pods = [
        gpu_pod("v1", "vision-interactive-r1", 6, node="a100-0"),
        gpu_pod("n1", "nlp-interactive-r2", 4, node="a100-1"),
    ]
    grants = {
        g.namespace: GrantSpec(g.namespace, g.pk, g.team_id, g.team.slug, g.pool_id, g.gpus)
        for g in Grant.objects.select_related("team")
    }
    now = now or timezone.now()
    figures = compute(nodes, pods, [spec_of(world.interactive)], grants, now)
    publish_state(world.interactive.cluster_id, CollectorState.LIVE, figures, now=now)


@pytest.mark.parametrize("region", ["overview", "pool", "history"])
def test_an_unchanged_region_answers_304_with_one_query_and_no_rendering(world, published, region):
    url, target = regions(world)[region]
    client = client_of(world.alice)
    first = poll(client, url, target)
    assert first.status_code == 200
    etag = first["ETag"]
    assert etag.startswith('W/"')
    assert "no-cache" in first["Cache-Control"] and "private" in first["Cache-Control"]
    assert "HX-Target" in first["Vary"]
    # The region sends its own version back with its next poll.
    assert 'hx-headers="{&quot;If-None-Match&quot;: &quot;W/\\&quot;' in first.content.decode()

    rendered = []

    def on_render(sender, template, **kwargs) -> None:
        rendered.append(template.name)

    template_rendered.connect(on_render)
    try:
        with CaptureQueriesContext(connection) as queries:
            again = poll(client, url, target, etag)
    finally:
        template_rendered.disconnect(on_render)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert rendered == []
    own = [q["sql"] for q in queries if not any(table in q["sql"] for table in AUTH_TABLES)]
    assert len(own) == 1, own


def test_the_page_carries_the_version_its_first_poll_sends(world, published):
    client = client_of(world.alice)
    for region, (url, target) in regions(world).items():
        page = client.get(url).content.decode()
        start = page.index(f'id="{target}"')
        tag = page[start:].split("If-None-Match&quot;: &quot;", 1)[1].split("&quot;}", 1)[0]
        etag = tag.replace("\\&quot;", '"')
        assert poll(client, url, target, etag).status_code == 304, region


def test_changed_figures_answer_200_with_a_new_etag(world, published):
    client = client_of(world.alice)
    for region, (url, target) in regions(world).items():
        old = poll(client, url, target)["ETag"]
        publish(world, extra_nodes=1)
        if region == "history":
            PoolSnapshot.objects.create(
                pool=world.interactive,
                resolution=SnapshotResolution.RAW,
                at=timezone.now(),
                seconds=15,
                gpus_free=14,
            )
        changed = poll(client, url, target, old)
        assert changed.status_code == 200, region
        assert changed["ETag"] != old
        assert poll(client, url, target, changed["ETag"]).status_code == 304
    html = poll(client, *regions(world)["overview"]).content.decode()
    assert 'data-free="14"' in html and 'data-allocatable="24"' in html


def test_a_figure_written_without_the_heartbeat_still_changes_the_version(world, published):
    url, target = regions(world)["pool"]
    client = client_of(world.alice)
    old = poll(client, url, target)["ETag"]
    PoolUtilisation.objects.filter(pool=world.interactive).update(gpus_free=1, computed_at=timezone.now())
    changed = poll(client, url, target, old)
    assert changed.status_code == 200 and 'data-free="1"' in changed.content.decode()


def test_users_never_share_an_etag(world, published):
    bob = factories.member(world.vision, "bob2")  # same team, same scope as alice
    for url, target in regions(world).values():
        tags = {poll(client_of(u), url, target)["ETag"] for u in (world.alice, bob, world.carol, world.admin)}
        assert len(tags) == 4
        alices = poll(client_of(world.alice), url, target)["ETag"]
        assert poll(client_of(bob), url, target, alices).status_code == 200


def test_a_change_of_scope_changes_the_etag(world, published):
    client = client_of(world.alice)
    url, target = regions(world)["pool"]
    old = poll(client, url, target)["ETag"]
    Membership.objects.create(user=world.alice, team=world.nlp)
    changed = poll(client, url, target, old)
    assert changed.status_code == 200
    assert 'data-pod="nlp-interactive-r2/n-wait"' in changed.content.decode()


def test_a_change_of_role_changes_the_etag_and_the_scope(world, published):
    """The version's statement is compiled once per user and scope: a new role is a new statement."""
    client = client_of(world.alice)
    url, target = regions(world)["pool"]
    overview, dashboard = regions(world)["overview"]
    poll(client, overview, dashboard)
    old = poll(client, url, target)
    assert 'data-pod="nlp-interactive-r2/n-wait"' not in old.content.decode()
    world.alice.is_auditor = True
    world.alice.save()
    changed = poll(client, url, target, old["ETag"])
    assert changed.status_code == 200
    assert 'data-pod="nlp-interactive-r2/n-wait"' in changed.content.decode()
    # Now another team's grants are part of what she sees, so of her dashboard's version.
    seen = poll(client, overview, dashboard)["ETag"]
    Grant.objects.filter(team=world.nlp).update(gpus=5)
    assert poll(client, overview, dashboard, seen).status_code == 200
    world.alice.is_auditor = False
    world.alice.save()
    again = poll(client, url, target, changed["ETag"])
    assert again.status_code == 200 and again["ETag"] == old["ETag"]
    assert 'data-pod="nlp-interactive-r2/n-wait"' not in again.content.decode()


@pytest.mark.parametrize("region", ["overview", "pool"])
def test_a_collector_falling_silent_changes_the_etag_with_no_write(world, published, region, monkeypatch):
    url, target = regions(world)[region]
    client = client_of(world.alice)
    beat = ClusterUtilisation.objects.get(cluster_id=world.interactive.cluster_id).heartbeat_at
    monkeypatch.setattr(timezone, "now", lambda: beat + timedelta(seconds=19))
    live = poll(client, url, target)
    assert 'data-freshness="live"' in live.content.decode()
    assert poll(client, url, target, live["ETag"]).status_code == 304
    # No write: the collector simply stopped, and time passed the silence boundary.
    monkeypatch.setattr(timezone, "now", lambda: beat + timedelta(seconds=21))
    silent = poll(client, url, target, live["ETag"])
    assert silent.status_code == 200
    assert 'data-freshness="silent"' in silent.content.decode()
    assert poll(client, url, target, silent["ETag"]).status_code == 304


def test_the_history_window_sliding_a_column_changes_the_etag(world, published, monkeypatch):
    url, target = regions(world)["history"]  # 1 h over 240 columns: 15 s each
    client = client_of(world.alice)
    start = timezone.now().replace(microsecond=0)
    start -= timedelta(seconds=start.second % 15)
    monkeypatch.setattr(timezone, "now", lambda: start + timedelta(seconds=1))
    old = poll(client, url, target)["ETag"]
    monkeypatch.setattr(timezone, "now", lambda: start + timedelta(seconds=14))
    assert poll(client, url, target, old).status_code == 304
    monkeypatch.setattr(timezone, "now", lambda: start + timedelta(seconds=16))
    assert poll(client, url, target, old).status_code == 200


def test_who_may_not_see_gets_what_they_got_before(world, published):
    client = client_of(world.alice)
    tags = {name: poll(client, url, target)["ETag"] for name, (url, target) in regions(world).items()}
    # Signed out: the login redirect, never a 304.
    for name, (url, target) in regions(world).items():
        response = poll(Client(), url, target, tags[name])
        assert response.status_code == 200 and response["HX-Redirect"].startswith("/login/"), name
        assert Client().get(url, HTTP_IF_NONE_MATCH=tags[name]).status_code == 302
    # A pool that went away: the poll stops and the page is 404, whatever tag is sent.
    world.interactive.enabled = False
    world.interactive.save()
    for name in ("pool", "history"):
        url, target = regions(world)[name]
        assert poll(client, url, target, tags[name]).status_code == 286
        assert client.get(url, HTTP_IF_NONE_MATCH=tags[name]).status_code == 404
    missing = reverse("utilisation:pool", args=[world.interactive.pk + 1000])
    assert poll(client, missing, "pool-live", tags["pool"]).status_code == 286
    # An unknown history range stays a 400.
    world.interactive.enabled = True
    world.interactive.save()
    url, target = regions(world)["history"]
    assert poll(client, url.replace("1h", "2y"), target, tags["history"]).status_code == 400


# ----------------------------------------------------------------------------------------------
# In Chromium: htmx leaves the region alone on a 304, keeps polling, shows no error


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop in this thread; the test's ORM calls stay synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        chromium = launch(p)
        console = watch_console(chromium)
        try:
            yield chromium
            console.check()
        finally:
            chromium.close()
            connections.close_all()


def test_a_dashboard_left_open_gets_304s_keeps_its_figures_and_shows_a_change(
    world, published, live_server, browser
):
    page = signed_in(browser, live_server.url, world.alice)
    polls: list[int] = []
    page.on(
        "response",
        lambda r: polls.append(r.status) if r.request.headers.get("hx-target") == DASHBOARD else None,
    )
    # A fresh write, as a running collector's: the figures must not fall silent during the test.
    publish(world)
    page.goto(f"{live_server.url}/utilisation/")
    mark_document(page)
    card = page.locator('article.pool-card[data-pool="interactive-a100"]')
    expect(card).to_have_attribute("data-free", "6")
    page.wait_for_timeout(4500)  # two polls
    assert polls and set(polls) == {304}, polls
    expect(card).to_have_attribute("data-free", "6")
    expect(page.locator("#htmx-alert")).to_be_hidden()

    publish(world, extra_nodes=1)
    expect(card).to_have_attribute("data-free", "14", timeout=5000)
    assert 200 in polls
    page.wait_for_timeout(2500)
    assert polls[-1] == 304, polls  # the new version holds again
    expect(card).to_have_attribute("data-free", "14")
    expect(page.locator("#htmx-alert")).to_be_hidden()
    assert same_document(page)


@pytest.mark.parametrize("region", ["overview", "pool"])
def test_a_live_region_reads_its_version_and_figures_in_one_round_trip(world, published, region):
    """Without a version to compare, a poll sends the version's read and the figures' reads in one
    pipeline, the version first; with an outdated one, the version alone, then the figures together."""
    url, target = regions(world)[region]
    client = client_of(world.alice)
    sent: list[tuple[str, int | None]] = []

    def record(execute, sql, params, many, context):
        pipeline = connection.connection._pipeline
        sent.append((sql, None if pipeline is None else id(pipeline)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        first = poll(client, url, target)
    assert first.status_code == 200
    own = [(sql, pipeline) for sql, pipeline in sent if not any(t in sql for t in AUTH_TABLES)]
    assert len(own) >= 3, own
    assert own[0][0].startswith("SELECT (SELECT count(*)"), "the version is read first"
    assert {pipeline for _, pipeline in own} != {None} and len({pipeline for _, pipeline in own}) == 1

    sent.clear()
    with connection.execute_wrapper(record):
        again = poll(client, url, target, 'W/"outdated"')
    assert again.status_code == 200 and again["ETag"] == first["ETag"]
    own = [(sql, pipeline) for sql, pipeline in sent if not any(t in sql for t in AUTH_TABLES)]
    assert own[0][0].startswith("SELECT (SELECT count(*)") and own[0][1] is None
    assert len({pipeline for _, pipeline in own[1:]}) == 1
