"""The dashboard pages, their htmx partials, scoping per user, and /metrics."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from pools.models import ClusterUtilisation, CollectorState, PoolClass
from tests import factories
from tests.utilisation.conftest import publish_state

pytestmark = pytest.mark.django_db


def signed_in(user):
    client = Client()
    client.force_login(user)
    return client


def htmx(target, current="http://testserver/utilisation/"):
    return {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": target, "HTTP_HX_CURRENT_URL": current}


def card(html, pool):
    match = re.search(rf'<article class="pool-card[^"]*" data-pool="{pool}"[^>]*>', html)
    assert match, f"no card for {pool}"
    return dict(re.findall(r'data-(\w+)="([^"]*)"', match.group(0)))


def test_dashboard_shows_live_pool_cards(world, published):
    response = signed_in(world.alice).get(reverse("utilisation:dashboard"))
    html = response.content.decode()
    assert response.status_code == 200
    assert card(html, "interactive-a100") == {
        "pool": "interactive-a100",
        "free": "6",
        "requested": "10",
        "allocatable": "16",
        "pending": "2",
        "stranded": "6",
        "largest": "4",
    }
    assert 'data-freshness="live"' in html
    assert "Below the warm buffer: 6 free, 8 kept warm" in html
    # Pools without figures yet say so instead of showing zeros.
    assert "No figures yet." in html
    assert 'hx-trigger="every 2s"' in html


def test_the_live_region_is_the_same_view_as_a_partial(world, published):
    response = signed_in(world.alice).get(reverse("utilisation:dashboard"), **htmx("utilisation-live"))
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="utilisation-live"')
    assert "<html" not in html


def test_team_usage_is_scoped_to_the_users_teams(world, published):
    alice = signed_in(world.alice).get(reverse("utilisation:dashboard")).content.decode()
    assert 'data-team="vision"' in alice
    assert 'data-team="nlp"' not in alice
    admin = signed_in(world.admin).get(reverse("utilisation:dashboard")).content.decode()
    assert 'data-team="vision"' in admin and 'data-team="nlp"' in admin


def test_pool_page_shows_the_grid_and_only_the_users_pending_pods(world, published):
    url = reverse("utilisation:pool", args=[world.interactive.pk])
    html = signed_in(world.alice).get(url).content.decode()
    assert html.count('class="gpu used"') == 10
    assert html.count('class="gpu free"') == 6
    assert 'data-pod="vision-interactive-r1/v-wait"' in html
    assert "nlp-interactive-r2" not in html
    assert "1 pending pod of other teams" in html
    admin = signed_in(world.admin).get(url).content.decode()
    assert 'data-pod="nlp-interactive-r2/n-wait"' in admin


def test_pool_page_regions_are_partials_of_the_same_view(world, published):
    url = reverse("utilisation:pool", args=[world.interactive.pk])
    client = signed_in(world.alice)
    live = client.get(url, **htmx("pool-live", "http://testserver" + url)).content.decode()
    assert live.lstrip().startswith('<div id="pool-live"')
    history = client.get(
        url + "?range=24h", **htmx("pool-history", "http://testserver" + url)
    ).content.decode()
    assert history.lstrip().startswith('<section id="pool-history"')
    assert "No history for this range yet" in history
    assert client.get(url + "?range=2y").status_code == 400


def test_polling_a_pool_that_went_away_stops_the_polling(world, published):
    url = reverse("utilisation:pool", args=[world.interactive.pk])
    world.interactive.enabled = False
    world.interactive.save()
    client = signed_in(world.alice)
    assert client.get(url, **htmx("pool-live")).status_code == 286
    assert client.get(url).status_code == 404


def test_a_poll_after_the_session_ended_sends_the_page_to_login(world, published):
    response = Client().get(reverse("utilisation:dashboard"), **htmx("utilisation-live"))
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/login/?next=/utilisation/"
    assert Client().get(reverse("utilisation:dashboard")).status_code == 302


def test_stale_cluster_and_silent_collector_are_marked(world, published):
    cluster_id = world.interactive.cluster_id
    since = timezone.now() - timedelta(seconds=40)
    publish_state(cluster_id, CollectorState.STALE, stale_since=since, last_error="Unreachable: refused")
    html = signed_in(world.admin).get(reverse("utilisation:dashboard")).content.decode()
    assert 'data-freshness="stale"' in html
    assert "The cluster has not answered since" in html
    assert "Unreachable: refused" in html
    # The figures stay, greyed out.
    assert card(html, "interactive-a100")["free"] == "6"
    assert "is-stale" in html
    # Members do not see the cluster's error text.
    assert (
        "Unreachable: refused"
        not in signed_in(world.alice).get(reverse("utilisation:dashboard")).content.decode()
    )

    ClusterUtilisation.objects.filter(cluster_id=cluster_id).update(
        state=CollectorState.LIVE, heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    html = signed_in(world.alice).get(reverse("utilisation:dashboard")).content.decode()
    assert 'data-freshness="silent"' in html
    assert "The collector has not reported since" in html


def test_cost_page_validates_the_period(world):
    client = signed_in(world.alice)
    assert client.get(reverse("utilisation:cost")).status_code == 200
    response = client.get(reverse("utilisation:cost"), {"start": "2026-03-10", "end": "2026-03-01"})
    assert response.status_code == 400
    assert "The end must not be before the start." in response.content.decode()
    response = client.get(reverse("utilisation:cost"), {"start": "2025-01-01", "end": "2025-12-31"})
    assert "Choose at most 90 days" in response.content.decode()
    response = client.get(reverse("utilisation:cost"), {"start": "yesterday", "end": ""})
    assert response.status_code == 400
    assert "Enter a valid date." in response.content.decode()


def metric_samples(text):
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_parse_and_carry_the_pool_and_team_series(world, published):
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = metric_samples(response.content.decode())
    pool = (
        ("accelerator", "a100-80gb"),
        ("cluster", "local"),
        ("pool", "interactive-a100"),
        ("pool_class", "interactive-inference"),
    )
    assert samples[("gpu_portal_pool_gpus_allocatable", pool)] == 16
    assert samples[("gpu_portal_pool_gpus_requested", pool)] == 10
    assert samples[("gpu_portal_pool_gpus_free", pool)] == 6
    assert samples[("gpu_portal_pool_gpus_stranded", pool)] == 6
    assert samples[("gpu_portal_pool_largest_free_block_gpus", pool)] == 4
    assert samples[("gpu_portal_pool_pending_pods", pool)] == 2
    assert samples[("gpu_portal_pool_queue_wait_max_seconds", pool)] >= 120
    assert samples[("gpu_portal_pool_headroom_short", pool)] == 1
    assert samples[("gpu_portal_cluster_up", (("cluster", "local"),))] == 1
    vision = (
        ("cluster", "local"),
        ("namespace", "vision-interactive-r1"),
        ("pool", "interactive-a100"),
        ("team", "vision"),
    )
    assert samples[("gpu_portal_namespace_gpus_requested", vision)] == 6
    assert samples[("gpu_portal_namespace_gpus_granted", vision)] == 8
    assert samples[("gpu_portal_namespace_gpus_pending", vision)] == 8


def test_metrics_report_a_stale_cluster_as_down(world, published):
    publish_state(world.interactive.cluster_id, CollectorState.STALE, stale_since=timezone.now())
    samples = metric_samples(Client().get("/metrics").content.decode())
    assert samples[("gpu_portal_cluster_up", (("cluster", "local"),))] == 0


def test_metrics_token(world, published, settings):
    settings.PORTAL_METRICS_TOKEN = "s3cret-scrape-token"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert response.status_code == 200
    assert "gpu_portal_pool_gpus_free" in response.content.decode()


def test_the_polled_region_costs_the_same_queries_however_many_pools(world, published):
    client = signed_in(world.alice)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("utilisation:dashboard"), **htmx("utilisation-live")).status_code == 200
        return len(captured)

    before = queries()
    for index in range(3):
        pool = factories.pool(f"more-{index}", PoolClass.BATCH, world.h100, capacity=8)
        published.pools[pool.pk] = published.pools[world.interactive.pk]
    publish_state(world.interactive.cluster_id, CollectorState.LIVE, figures=published)
    assert queries() == before


def test_cost_page_shows_gpu_hours_cost_and_load_times_worked_out_by_hand(world):
    from decimal import Decimal

    from pools.models import PoolSnapshot, SnapshotResolution, TeamUsageSnapshot
    from quotas.models import ServingDeployment

    world.h100.hourly_cost = Decimal("4.000")
    world.h100.save()
    now = timezone.now()
    today = now.date()

    def usage(pool, team, gpu_seconds, ago):
        # The collector writes a pool sample with every team sample; reads find the tiers by them.
        raw = {"pool": pool, "resolution": SnapshotResolution.RAW, "at": now - ago, "seconds": 15}
        PoolSnapshot.objects.get_or_create(**raw)
        TeamUsageSnapshot.objects.create(team=team, gpu_seconds=gpu_seconds, **raw)

    # vision on the A100 pool (2.5 an hour): 4 GPU-hours + 0.5 GPU-hours = 4.5 h -> 11.25.
    usage(world.interactive, world.vision, 4 * 3600, timedelta(minutes=10))
    usage(world.interactive, world.vision, 1800, timedelta(hours=2))
    # vision on the H100 pool (4.0 an hour): 0.25 h -> 1.00. Total 4.75 h, 12.25.
    usage(world.batch, world.vision, 900, timedelta(minutes=5))
    # Ten days ago: outside the period.
    usage(world.interactive, world.vision, 100 * 3600, timedelta(days=10))
    # nlp: 2 h on the H100 pool -> 8.00; only admins and nlp see it.
    usage(world.batch, world.nlp, 7200, timedelta(minutes=10))
    grant = factories.active_grant(world.vision, world.interactive, 8, "vision-serving-r1")
    ServingDeployment.objects.create(
        grant=grant,
        team=world.vision,
        name="llama",
        model_name="meta-llama/Llama-3.1-8B-Instruct",
        image="vllm/vllm-openai:v0.6.3",
        replicas=2,
        gpus_per_replica=1,
        created_by=world.alice,
        ready_at=now,
        load_seconds=95,
    )
    period = {"start": (today - timedelta(days=6)).isoformat(), "end": today.isoformat()}

    def team_section(html, team):
        match = re.search(rf'<tbody data-team="{team}">(.*?)</tbody>', html, re.S)
        assert match, f"no cost rows for {team}"
        return match.group(1)

    def cells(section):
        return [
            re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)
        ]

    alice = signed_in(world.alice).get(reverse("utilisation:cost"), period)
    assert alice.status_code == 200
    html = alice.content.decode()
    vision = team_section(html, "vision")
    assert cells(vision) == [
        ["vision", "local / batch-h100", "NVIDIA H100 80GB", "0.25", "4.000", "1.00"],
        ["vision", "local / interactive-a100", "NVIDIA A100 80GB", "4.50", "2.500", "11.25"],
    ]
    assert '<td class="gpu-hours">4.75</td>' in vision
    assert '<td class="cost-total">12.25</td>' in vision
    assert 'data-team="nlp"' not in html
    # 95 s of model load time.
    assert re.search(r"<td>vision-serving-r1/llama</td>.*?<td>2 . 1</td><td>1m 35s</td>", html, re.S)
    admin = signed_in(world.admin).get(reverse("utilisation:cost"), period).content.decode()
    assert '<td class="cost-total">8.00</td>' in team_section(admin, "nlp")


def test_a_big_pools_page_reads_and_draws_only_its_first_nodes(world):
    from pools.models import PoolUtilisation
    from pools.utilisation import selectors
    from pools.utilisation.figures import DRAWN_NODES, compute
    from tests.utilisation.conftest import gpu_node, spec_of

    total = DRAWN_NODES + 30
    nodes = [gpu_node(f"node-{i:04d}", world.interactive.name) for i in range(total)]
    now = timezone.now()
    figures = compute(nodes, [], [spec_of(world.interactive)], {}, now)
    publish_state(world.interactive.cluster_id, CollectorState.LIVE, figures, now=now)
    detail = selectors.pool_detail_get(user=world.admin, pool_id=world.interactive.pk, now=now)
    assert [n["name"] for n in detail.nodes] == [f"node-{i:04d}" for i in range(DRAWN_NODES)]
    assert detail.node_count == total
    assert "detail" in detail.view.live.get_deferred_fields()  # every node's figures stayed unread
    html = (
        signed_in(world.admin).get(reverse("utilisation:pool", args=[world.interactive.pk])).content.decode()
    )
    assert html.count("<g data-node=") == DRAWN_NODES
    assert f"{total - DRAWN_NODES} more nodes are not" in html
    # A row published before the detail kept the drawn nodes apart is read whole, once.
    row = PoolUtilisation.objects.get(pool=world.interactive)
    row.detail = {"nodes": row.detail["nodes"]}
    row.save(update_fields=["detail"])
    old = selectors.pool_detail_get(user=world.admin, pool_id=world.interactive.pk, now=now)
    assert (len(old.nodes), old.node_count) == (DRAWN_NODES, total)
    # Prometheus is asked about every node of the pool, drawn or not.
    assert len(selectors.pool_node_names(pool_id=world.interactive.pk)) == total
