"""No list page makes more queries when it has more rows: N rows and 3N rows cost the same."""

from itertools import count

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pools.models import PoolClass
from quotas import services
from quotas.models import ServingDeployment
from tests import factories

N = 2
SEQ = count(1)


def queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(ctx.captured_queries)


def add_requests(world, count):
    """`count` requests in each interesting state, each with a grant and a serving deployment where it can."""
    for _ in range(count):
        factories.request(world.alice, world.vision, world.a100, gpus=1)  # waits for bob
        factories.request(
            world.bob, world.vision, world.l4, gpus=1, pool_class=PoolClass.EMBEDDING
        )  # for admin
        granted = factories.request(world.bob, world.vision, world.h100, gpus=1, pool_class=PoolClass.BATCH)
        services.capacity_request_approve(capacity_request=granted, actor=world.admin)
        ServingDeployment.objects.create(
            grant=granted.grant,
            team=world.vision,
            name=f"serve-{granted.pk}",
            model_name="llama",
            image="registry.example.com/llm/vllm:1",
            created_by=world.bob,
        )


@pytest.mark.parametrize(
    ("who", "url"),
    [
        ("alice", "/"),
        ("bob", "/"),
        ("admin", "/"),
        ("alice", "/requests/"),
        ("auditor", "/requests/"),
        ("bob", "/inbox/"),
        ("admin", "/inbox/"),
        ("alice", "/team/vision/"),
        ("auditor", "/team/vision/"),
    ],
)
def test_request_pages_do_not_grow_with_rows(world, login, who, url):
    client = login(getattr(world, who))
    add_requests(world, N)
    few = queries(client, url)
    add_requests(world, 2 * N)
    assert queries(client, url) == few


@pytest.mark.parametrize("url", ["/pools/", "/clusters/", "/clusters/{cluster}/"])
def test_pool_and_cluster_pages_do_not_grow_with_rows(world, login, url):
    admin = login(world.admin)

    def add_pools(count):
        for _ in range(count):
            n = next(SEQ)
            factories.pool(f"batch-{n}", PoolClass.BATCH, world.h100, capacity=8, batch_fraction="1")
            elsewhere = factories.cluster(f"cluster-{n}")
            factories.pool(f"other-{n}", PoolClass.BATCH, world.h100, capacity=8, cluster=elsewhere)
            held = factories.request(world.bob, world.vision, world.h100, gpus=1, pool_class=PoolClass.BATCH)
            services.capacity_request_approve(capacity_request=held, actor=world.admin)

    url = url.format(cluster=world.interactive.cluster_id)
    add_pools(N)
    few = queries(admin, url)
    add_pools(2 * N)
    assert queries(admin, url) == few
