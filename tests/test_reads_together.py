"""Reads in one round trip (portal.statements.together): plans run side by side, each round's reads
go to PostgreSQL in one pipeline, in the order they were yielded, and each plan gets what it would
have read alone."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.db.models import QuerySet

from pools.models import NodePool
from portal import statements
from quotas.models import Team
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent() -> Iterator[list[tuple[str, int | None]]]:
    """Each statement sent while the test runs, with the pipeline it was sent in (None: alone)."""
    seen: list[tuple[str, int | None]] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        pipeline = connection.connection._pipeline
        seen.append((sql, None if pipeline is None else id(pipeline)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield seen


def teams() -> QuerySet[Team]:
    return Team.objects.order_by("slug")


def pools_from(pk: int) -> QuerySet[Any]:
    return NodePool.objects.filter(pk__gte=pk).order_by("pk").values("pk", "name", "node_selector")


def names_plan() -> statements.Plan[list[str]]:
    found, rows = yield (
        statements.bound_instances_read("test teams", teams),
        statements.bound_rows_read("test pools", pools_from, pk=1),
    )
    return [t.slug for t in found] + [r["name"] for r in rows]


def dependent_plan() -> statements.Plan[list[str]]:
    (first,) = yield (statements.bound_rows_read("test pools", pools_from, pk=1),)
    # The second read takes a value only the first one gave: a round of its own.
    (rest,) = yield (statements.bound_rows_read("test pools", pools_from, pk=first[-1]["pk"]),)
    return [r["name"] for r in rest]


def test_plans_together_get_what_each_reads_alone_in_one_pipeline(world, sent) -> None:
    alone = [statements.run(names_plan()), statements.run(dependent_plan())]
    last = NodePool.objects.order_by("pk").last()
    sent.clear()
    together = statements.together(names_plan(), dependent_plan())
    assert together == alone
    assert together[0][0] == "nlp" and together[1] == [last.name]
    # Round one: the first plan's two reads and the second plan's first, in one pipeline, in order;
    # round two: the dependent read alone (one read needs no pipeline).
    assert len(sent) == 4
    first_round = {pipeline for _, pipeline in sent[:3]}
    assert len(first_round) == 1 and None not in first_round
    assert '"quotas_team"' in sent[0][0] and '"pools_nodepool"' in sent[1][0]
    assert sent[3][1] is None


def test_a_read_that_matches_nothing_sends_nothing(world, sent) -> None:
    def plan() -> statements.Plan[tuple[list[Any], list[Any]]]:
        none, found = yield (
            statements.bound_rows_read("test nothing", lambda: NodePool.objects.none().values("pk")),
            statements.bound_instances_read("test teams", teams),
        )
        return none, found

    none, found = statements.run(plan())
    assert none == [] and [t.slug for t in found] == ["nlp", "vision"]
    assert len(sent) == 1


def test_values_are_converted_as_the_orm_converts_them(world) -> None:
    factories.pool("selected", "batch-inference", world.a100, capacity=8)

    def plan() -> statements.Plan[list[dict[str, Any]]]:
        rows, _ = yield (
            statements.bound_rows_read("test pools", pools_from, pk=1),
            statements.bound_instances_read("test teams", teams),
        )
        return rows

    assert statements.run(plan()) == list(pools_from(1))  # node_selector: a dict, not JSON text


@pytest.mark.django_db(transaction=True)
def test_a_failing_read_raises_and_leaves_the_connection_usable(world) -> None:
    broken = statements.Statement("SELECT 1 / (%s - 1)", (1,), "default")

    def plan() -> statements.Plan[Any]:
        yield (statements.bound_instances_read("test teams", teams), statements.first_row_read(broken))

    with pytest.raises(DatabaseError, match="division by zero"):
        statements.run(plan())
    assert statements.run(names_plan())[:2] == ["nlp", "vision"]
