"""Row locks take only the rows they mean to: a FOR UPDATE that reaches into select_related joins
locks the team, pool or cluster rows too, and every commit that references them (PostgreSQL's
foreign-key checks take KEY SHARE) then waits for it. That deadlocked a bulk approval against the
reconciles of another batch of the same team (found by `make bench`)."""

import ast
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from quotas import services
from tests import factories as f

REPO = Path(__file__).resolve().parent.parent


def _locks(queries: list[dict[str, str]]) -> list[str]:
    return [q["sql"] for q in queries if "FOR UPDATE" in q["sql"] or "FOR NO KEY UPDATE" in q["sql"]]


@pytest.mark.django_db(transaction=True)
def test_approving_locks_the_request_and_the_pool_and_nothing_they_join(settings) -> None:
    settings.PORTAL_PREFLIGHT = False  # no collector here; the pre-flight takes no lock anyway
    team, lead = f.team_with_lead("vision", "bob")
    admin = f.user("admin", is_platform_admin=True)
    acc = f.accelerator()
    f.pool(acc=acc)
    req = f.request(lead, team, acc, gpus=2)
    with CaptureQueriesContext(connection) as captured:
        services.capacity_request_approve(capacity_request=req, actor=admin)
    locks = _locks(captured.captured_queries)
    assert locks, "the final approval must lock its rows"
    for sql in locks:
        of = re.search(r"FOR UPDATE OF (.+)$", sql)
        assert of is not None, f"a lock without OF takes every joined row: {sql}"
        assert of.group(1).strip() in ('"quotas_capacityrequest"', '"pools_nodepool"'), sql
    req.refresh_from_db()
    assert req.state == "approved"


def _unscoped_joined_locks(source: str) -> list[int]:
    """Lines where select_for_update() without `of` is chained with select_related."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        chain, calls = node, []
        while isinstance(chain, ast.Call) and isinstance(chain.func, ast.Attribute):
            calls.append(chain)
            chain = chain.func.value
        names = {c.func.attr for c in calls}
        if "select_for_update" in names and "select_related" in names:
            sfu = next(c for c in calls if c.func.attr == "select_for_update")
            if not any(k.arg == "of" for k in sfu.keywords):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_no_lock_in_the_code_reaches_into_its_joins() -> None:
    found = {}
    for app in ("portal", "pools", "quotas"):
        for path in (REPO / app).rglob("*.py"):
            if hits := _unscoped_joined_locks(path.read_text()):
                found[str(path.relative_to(REPO))] = hits
    assert not found, f"use portal.querysets.locked(...) instead: {found}"


def test_the_source_check_sees_such_a_lock() -> None:
    bad = "Grant.objects.select_for_update().select_related('team').get(pk=1)\n"
    good = "Grant.objects.select_for_update(of=('self',)).select_related('team').get(pk=1)\n"
    assert _unscoped_joined_locks(bad) == [1]
    assert _unscoped_joined_locks(good) == []
