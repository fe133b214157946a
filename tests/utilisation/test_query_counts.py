"""Pages listing rows cost the same number of queries for N rows as for 3N rows."""

from collections.abc import Callable
from datetime import timedelta
from itertools import count

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pools.models import CollectorState, PoolClass, PoolSnapshot, SnapshotResolution, TeamUsageSnapshot
from portal.api import services as api_services
from quotas.models import ServingDeployment
from tests import factories
from tests.utilisation.conftest import publish_state

pytestmark = pytest.mark.django_db
N = 2


def queries(client: Client, url: str, shown: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    assert shown in response.content.decode(), "the rows added are not on the page"
    return len(captured)


def assert_constant(client: Client, url: str, add_rows: Callable[[int], str]) -> None:
    """`add_rows(n)` adds n rows and returns a text that shows the last of them on the page."""
    few = queries(client, url, add_rows(N))
    assert queries(client, url, add_rows(2 * N)) == few


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_token_list(world):
    names = count()

    def add(n: int) -> str:
        for _ in range(n):
            name = f"ci-{next(names)}"
            api_services.api_token_issue(user=world.alice, name=name, read_only=True)
        return name

    assert_constant(signed_in(world.alice), reverse("tokens"), add)


def test_dashboard(world, published):
    numbers = count()

    def add(n: int) -> str:
        for _ in range(n):
            index = next(numbers)
            pool = factories.pool(f"more-{index}", PoolClass.INTERACTIVE, world.a100, capacity=8)
            factories.active_grant(world.vision, pool, 2, f"vision-more-{index}")
            published.pools[pool.pk] = published.pools[world.interactive.pk]
        publish_state(world.interactive.cluster_id, CollectorState.LIVE, figures=published)
        return f'data-pool="{pool.name}"'

    assert_constant(signed_in(world.alice), reverse("utilisation:dashboard"), add)


def test_pool_detail(world, published):
    numbers = count()
    pool = world.interactive

    def add(n: int) -> str:
        now = timezone.now()
        for _ in range(n):
            index = next(numbers)
            factories.active_grant(world.vision, pool, 1, f"vision-extra-{index}")
            PoolSnapshot.objects.create(
                pool=pool,
                resolution=SnapshotResolution.RAW,
                at=now - timedelta(minutes=index + 1),
                seconds=15,
                gpus_allocatable=16,
                gpus_requested=10,
                gpus_free=6,
                gpus_stranded=6,
            )
        return 'data-namespace="vision-interactive-r1"'

    assert_constant(signed_in(world.alice), reverse("utilisation:pool", args=[pool.pk]), add)


def test_cost(world):
    numbers = count()

    def add(n: int) -> str:
        now = timezone.now()
        for _ in range(n):
            index = next(numbers)
            pool = factories.pool(f"cost-{index}", PoolClass.INTERACTIVE, world.a100, capacity=8)
            grant = factories.active_grant(world.vision, pool, 2, f"vision-cost-{index}")
            raw = {
                "pool": pool,
                "resolution": SnapshotResolution.RAW,
                "at": now - timedelta(minutes=index + 1),
            }
            PoolSnapshot.objects.create(seconds=15, **raw)
            TeamUsageSnapshot.objects.create(team=world.vision, seconds=15, gpu_seconds=30, **raw)
            ServingDeployment.objects.create(
                grant=grant,
                team=world.vision,
                name=f"llm-{index}",
                model_name="m",
                image="vllm:latest",
                created_by=world.alice,
                ready_at=now,
                load_seconds=60 + index,
            )
        return f"<td>local / cost-{index}</td>"

    assert_constant(signed_in(world.alice), reverse("utilisation:cost"), add)
