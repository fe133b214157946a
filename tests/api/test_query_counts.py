"""Every list endpoint costs the same number of queries for N rows as for 3N."""

from itertools import count

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from pools.models import ClusterUtilisation, CollectorState, PoolClass, PoolUtilisation
from portal.api.services import api_token_issue
from quotas import services
from quotas.models import Membership
from tests import factories
from tests.api.conftest import approved_request, deployment
from tests.conftest import World

SEQ = count(1)
LISTS = [
    "/api/v1/accelerators/",
    "/api/v1/clusters/",
    "/api/v1/pools/",
    "/api/v1/teams/",
    "/api/v1/capacity-requests/",
    "/api/v1/capacity-requests/inbox/",
    "/api/v1/grants/",
    "/api/v1/serving-deployments/",
    "/api/v1/capacity/pools/",
    "/api/v1/capacity/teams/",
    "/api/v1/audit-events/",
]


def add_rows(world: World, n: int) -> None:
    """n more rows in every list, as seen by the admin and by bob (vision's lead)."""
    for _ in range(n):
        i = next(SEQ)
        acc = factories.accelerator(f"gpu-{i}", 40)
        pool = factories.pool(
            f"pool-{i}", PoolClass.INTERACTIVE, acc, capacity=64, cluster=factories.cluster(f"c{i}")
        )
        now = timezone.now()
        ClusterUtilisation.objects.create(cluster=pool.cluster, state=CollectorState.LIVE, heartbeat_at=now)
        PoolUtilisation.objects.create(pool=pool, computed_at=now, gpus_allocatable=64, gpus_free=60)
        team = factories.team(f"team-{i}")
        lead, member = factories.member(team, role=Membership.Role.LEAD), factories.member(team)
        granted = factories.request(member, team, acc, gpus=2)
        services.capacity_request_approve(capacity_request=granted, actor=lead)
        services.capacity_request_approve(capacity_request=granted, actor=world.admin)
        waiting = factories.request(member, team, acc, gpus=1)
        services.capacity_request_approve(capacity_request=waiting, actor=lead)  # in the admin's inbox
        vision = approved_request(world, gpus=1)
        deployment(vision.grant, world.alice, f"model-{i}")
        factories.request(world.alice, world.vision, world.a100, gpus=1)  # in bob's inbox
        assert pool.grants.exists()


def measure(client: APIClient, path: str) -> tuple[int, int]:
    """(queries, rows) of one list call."""
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(f"{path}?page_size=200")
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries), response.json()["count"]


# bob sees vision's rows only, so his teams list does not grow, and he may not read the audit log.
@pytest.mark.parametrize(
    ("username", "lists"),
    [
        ("admin", LISTS),
        (
            "bob",
            [
                p
                for p in LISTS
                if p not in {"/api/v1/teams/", "/api/v1/audit-events/", "/api/v1/capacity/teams/"}
            ],
        ),
    ],
)
def test_list_query_counts_do_not_grow_with_rows(world: World, username: str, lists: list[str]) -> None:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=getattr(world, username), name='q').raw}"
    )
    add_rows(world, 2)
    client.get("/api/v1/me/")  # the token's first use writes last_used_at once; keep it out of the counts
    small = {path: measure(client, path) for path in lists}
    add_rows(world, 4)
    large = {path: measure(client, path) for path in lists}
    for path in lists:
        (queries_n, rows_n), (queries_3n, rows_3n) = small[path], large[path]
        assert rows_3n > rows_n > 0, path
        assert queries_3n == queries_n, (
            f"{path}: {queries_n} queries for {rows_n} rows, {queries_3n} for {rows_3n}"
        )
