"""The capacity request list is compiled once per caller, scope and query string, and the token
lookup once per process (portal.statements): a repeated read compiles no SQL, and still answers
exactly what the caller may see now."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db.models import F, QuerySet
from django.db.models.sql.compiler import SQLCompiler
from rest_framework.test import APIClient

from pools.models import NodePool
from portal import statements
from quotas import services
from quotas.models import Membership
from tests import factories
from tests.conftest import World

PATH = "/api/v1/capacity-requests/"


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL the ORM compiles while the test runs."""
    seen: list[str] = []
    as_sql = SQLCompiler.as_sql

    def recording(self: SQLCompiler, *args: object, **kwargs: object) -> tuple[str, tuple]:
        sql, params = as_sql(self, *args, **kwargs)
        seen.append(sql)
        return sql, params

    monkeypatch.setattr(SQLCompiler, "as_sql", recording)
    yield seen


def listed(client: APIClient, query: str = "") -> dict:
    response = client.get(PATH + query)
    assert response.status_code == 200, response.content
    return response.json()


def ids(page: dict) -> list[int]:
    return [row["id"] for row in page["results"]]


def test_a_repeated_read_compiles_none_of_its_queries(
    world: World, api: Callable[[str], APIClient], compiled: list[str]
) -> None:
    for gpus in (1, 2, 3):
        req = factories.request(world.alice, world.vision, world.a100, gpus=gpus)
    services.capacity_request_approve(capacity_request=req, actor=world.bob, comment="fine")
    bob = api("bob")
    first = listed(bob, "?page_size=2&page=1")
    assert any("quotas_capacityrequest" in sql for sql in compiled)

    compiled.clear()
    again = listed(bob, "?page_size=2&page=1")
    assert compiled == []  # nor the token's: every API request authenticates
    assert again == first
    assert again["count"] == 3 and ids(again) == [req.pk, req.pk - 1]
    assert [d["approver"] for d in again["results"][0]["decisions"]] == ["bob"]
    # The next page has as many rows (the same shape of decisions query), and its own decisions.
    assert listed(bob, "?page_size=2&page=2")["results"][0]["decisions"] == []


def test_rows_written_since_the_statement_was_compiled_are_read(
    world: World, api: Callable[[str], APIClient]
) -> None:
    bob = api("bob")
    assert listed(bob)["count"] == 0
    req = factories.request(world.alice, world.vision, world.a100, gpus=1)
    assert ids(listed(bob)) == [req.pk]
    services.capacity_request_reject(capacity_request=req, actor=world.bob, comment="no")
    (row,) = listed(bob)["results"]
    assert row["state"] == "rejected" and row["decisions"][0]["comment"] == "no"


def test_the_scope_is_read_now_not_when_the_statement_was_compiled(
    world: World, api: Callable[[str], APIClient]
) -> None:
    vision = factories.request(world.alice, world.vision, world.a100, gpus=1)
    nlp = factories.request(world.carol, world.nlp, world.a100, gpus=1)
    bob, carol = api("bob"), api("carol")
    assert ids(listed(bob)) == [vision.pk]
    # Another caller with the very same query string never gets bob's rows.
    assert ids(listed(carol)) == [nlp.pk]

    # Leaving a team hides its rows at once: memberships are read in the statement itself.
    Membership.objects.filter(user=world.bob).delete()
    assert listed(bob) == {"count": 0, "next": None, "previous": None, "results": []}
    Membership.objects.create(user=world.carol, team=world.vision, role=Membership.Role.MEMBER)
    assert ids(listed(carol)) == [nlp.pk, vision.pk]

    # A role is part of the key: an auditor sees every team, and their inbox is empty.
    world.bob.is_auditor = True
    world.bob.save(update_fields=["is_auditor"])
    assert ids(listed(bob)) == [nlp.pk, vision.pk]
    assert listed(bob, "inbox/")["count"] == 0


def test_filters_are_part_of_the_key(world: World, api: Callable[[str], APIClient]) -> None:
    kept = factories.request(world.alice, world.vision, world.a100, gpus=1)
    dropped = factories.request(world.alice, world.vision, world.a100, gpus=2)
    services.capacity_request_reject(capacity_request=dropped, actor=world.bob, comment="no")
    bob = api("bob")
    assert ids(listed(bob, "?state=rejected")) == [dropped.pk]
    assert ids(listed(bob, "?state=pending_lead")) == [kept.pk]
    assert ids(listed(bob, "?ordering=gpus")) == [kept.pk, dropped.pk]
    assert ids(listed(bob, "?ordering=-gpus")) == [dropped.pk, kept.pk]
    response = bob.get(PATH + "?state=nonsense")
    assert response.status_code == 400 and "state" in response.json()["fields"]


def test_parameters_nothing_reads_make_no_new_statement(
    world: World, api: Callable[[str], APIClient], compiled: list[str]
) -> None:
    factories.request(world.alice, world.vision, world.a100, gpus=1)
    bob = api("bob")
    first = listed(bob, "?_=1")
    compiled.clear()
    # A cache-buster changes no SQL, so it does not get a statement of its own.
    assert listed(bob, "?_=2") == first
    assert compiled == []


def test_a_compiled_statement_reads_what_the_queryset_reads(world: World) -> None:
    # node_selector is a JSONField: its database converter must run as values() runs it.
    pools = NodePool.objects.order_by("name").values("name", "node_selector", "capacity_gpus")
    statement = statements.values_statement(pools)
    assert statements.rows(statement) == list(pools)
    assert isinstance(statements.rows(statement)[0]["node_selector"], dict)
    assert statements.scalar(statements.count_statement(NodePool.objects.all())) == NodePool.objects.count()
    assert statements.rows(statements.values_statement(NodePool.objects.none().values("name"))) == []
    assert statements.scalar(statements.count_statement(NodePool.objects.filter(pk__in=[]))) == 0


def test_rows_are_named_and_trimmed_as_values_names_them(world: World) -> None:
    # An annotation named first, and distinct() ordering by a column it does not select.
    annotated = (
        NodePool.objects.annotate(doubled=F("capacity_gpus") * 2).order_by("name").values("doubled", "name")
    )
    assert statements.rows(statements.values_statement(annotated)) == list(annotated)
    distinct = NodePool.objects.order_by("capacity_gpus", "name").distinct().values("name")
    assert statements.rows(statements.values_statement(distinct)) == list(distinct)


def test_a_full_cache_drops_its_oldest_statement_only(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statements, "_STATEMENTS", {})
    monkeypatch.setattr(statements, "_STATEMENTS_MAX", 3)
    made: list[int] = []

    def make(n: int) -> statements.Statement:
        made.append(n)
        return statements.Statement(f"SELECT {n}", (), "default")

    for n in range(4):
        statements.remember(("test", n), lambda n=n: make(n))
    assert list(statements._STATEMENTS) == [("test", 1), ("test", 2), ("test", 3)]
    statements.remember(("test", 3), lambda: make(99))
    assert made == [0, 1, 2, 3]


def test_a_bound_statement_is_compiled_once_and_sends_each_call_its_own_values(
    world: World, compiled: list[str]
) -> None:
    def build(names: list[str], gpus: int) -> QuerySet[NodePool]:
        return (
            NodePool.objects.filter(name__in=names, capacity_gpus__gte=gpus).order_by("name").values("name")
        )

    every = sorted(NodePool.objects.values_list("name", flat=True))
    assert len(every) >= 3
    compiled.clear()
    assert statements.bound_rows("test pools", build, names=every[:2], gpus=0) == [
        {"name": n} for n in every[:2]
    ]
    compiled_once = len(compiled)  # twice, in fact: see bind()
    assert statements.bound_rows("test pools", build, names=every[1:3], gpus=0) == [
        {"name": n} for n in every[1:3]
    ]
    assert statements.bound_rows("test pools", build, names=every[:2], gpus=10**6) == []
    assert len(compiled) == compiled_once
    # A list of another length is another shape: compiled on its own, with all its items.
    assert statements.bound_rows("test pools", build, names=every, gpus=0) == [{"name": n} for n in every]
    assert len(compiled) == 2 * compiled_once
    assert statements.bound_rows("test pools", build, names=[], gpus=0) == []


def test_a_value_the_orm_changes_cannot_be_bound(world: World) -> None:
    with pytest.raises(ValueError, match="does not reach"):
        statements.bind(
            "test contains", lambda name: NodePool.objects.filter(name__contains=name).values("pk"), name="a"
        )
    with pytest.raises(TypeError):
        statements.bind("test null", lambda when: NodePool.objects.filter(name=when).values("pk"), when=None)


def test_bound_instances_are_what_iterating_the_queryset_gives(
    world: World, compiled: list[str], django_assert_num_queries: Callable[..., Any]
) -> None:
    from django.utils import timezone

    from pools.models import PoolUtilisation

    PoolUtilisation.objects.filter(pool=world.batch).delete()
    PoolUtilisation.objects.update_or_create(
        pool=world.interactive, defaults={"gpus_allocatable": 16, "computed_at": timezone.now()}
    )

    def build(cluster_id: int) -> QuerySet[NodePool]:
        return (
            NodePool.objects.filter(cluster_id=cluster_id)
            .select_related("cluster", "accelerator", "utilisation")
            .defer("utilisation__detail", "cluster__api_url")
            .annotate(doubled=F("capacity_gpus") * 2)
            .order_by("name")
        )

    expected = list(build(world.interactive.cluster_id))
    assert {p.pk for p in expected} >= {world.interactive.pk, world.batch.pk}
    compiled.clear()
    for _ in range(2):
        found = statements.bound_instances("test instances", build, cluster_id=world.interactive.cluster_id)
        # Related objects, annotations and the missing one-to-one are all in hand: no query more.
        with django_assert_num_queries(0):
            assert [(p.pk, p.name, p.doubled) for p in found] == [(p.pk, p.name, p.doubled) for p in expected]
            assert [(p.cluster.name, p.accelerator.slug) for p in found] == [
                (p.cluster.name, p.accelerator.slug) for p in expected
            ]
            by_pk = {p.pk: p for p in found}
            assert by_pk[world.interactive.pk].utilisation.gpus_allocatable == 16
            assert getattr(by_pk[world.batch.pk], "utilisation", None) is None
        # Deferred as the queryset defers them: loaded on first access.
        assert by_pk[world.interactive.pk].utilisation.get_deferred_fields() == {"detail"}
        assert found[0].cluster.get_deferred_fields() == {"api_url"}
    assert len(compiled) == 2  # the first call's two compilations (see bind), none for the second
    assert statements.bound_instances("test instances", build, cluster_id=10**6) == []
    with pytest.raises(ValueError, match="model instances"):
        statements.model_statement(NodePool.objects.values("pk"))
