"""The flush that ends every transactional test outlasts a deadlock with a worker's transaction
(tests/conftest.py): the deadlock is made here for real on PostgreSQL, with a second session that
reads the flush's first and last tables the way a provisioning sweep reads grants and teams."""

import re
import threading
import time
from collections.abc import Callable, Iterator
from unittest import mock

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.color import no_style
from django.core.management.sql import sql_flush
from django.db import connection
from django.test import TransactionTestCase

from quotas.models import Team
from tests import factories
from tests.common import flush_outlasting_deadlocks, is_deadlock, psycopg_params

pytestmark = pytest.mark.django_db(transaction=True)


def truncate_order() -> list[str]:
    """The tables in the order the flush's TRUNCATE locks them."""
    (statement,) = sql_flush(no_style(), connection, allow_cascade=False)
    return re.findall(r'"([^"]+)"', statement.split(";")[0])


def session(**settings: str) -> psycopg.Connection:
    params = psycopg_params(connection)
    conn = psycopg.connect(**params)
    for name, value in settings.items():
        conn.execute(f"SET {name} = '{value}'")
    conn.commit()
    return conn


@pytest.fixture
def sweep() -> Iterator[psycopg.Connection]:
    # It waits longer than the flush before looking for a deadlock, so PostgreSQL fails the flush.
    conn = session(deadlock_timeout="30s")
    try:
        yield conn
    finally:
        conn.close()


def in_thread(flush: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            flush()
        except BaseException as error:  # handed to the test's thread
            errors.append(error)
        finally:
            connection.close()  # this thread's own connection

    return threading.Thread(target=run), errors


def deadlock(sweep: psycopg.Connection, flush: Callable[[], None]) -> list[BaseException]:
    """Run `flush` in another thread into a deadlock with `sweep`; the errors it ended with."""
    first, *_, last = truncate_order()
    sweep.execute(f'SELECT 1 FROM "{last}" LIMIT 1')  # holds its lock until the transaction ends
    thread, errors = in_thread(flush)
    thread.start()
    with session() as watcher:
        deadline = time.monotonic() + 30
        # The flush holds every table but the last, and waits for that one.
        while not watcher.execute(
            "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = %s::regclass", [last]
        ).fetchone():
            assert time.monotonic() < deadline, "the flush never waited for the sweep's table"
            time.sleep(0.05)
    sweep.execute(f'SELECT 1 FROM "{first}" LIMIT 1')  # the deadlock; returns once the flush lost it
    sweep.rollback()
    thread.join(timeout=60)
    assert not thread.is_alive()
    return errors


def test_the_flush_ending_a_test_is_tried_again_when_it_loses_a_deadlock(
    sweep: psycopg.Connection,
) -> None:
    factories.team("left-behind")
    # What pytest-django runs after a transactional test: the teardown the suite's conftest guards.
    teardown = TransactionTestCase()._fixture_teardown
    with mock.patch("django.test.testcases.call_command", wraps=call_command) as flush:
        assert deadlock(sweep, teardown) == []
    assert flush.call_count == 2
    assert not Team.objects.exists()


def test_without_another_try_the_flush_fails_on_the_deadlock(sweep: psycopg.Connection) -> None:
    factories.team("left-behind")

    def flush() -> None:
        call_command("flush", verbosity=0, interactive=False, inhibit_post_migrate=True)

    (error,) = deadlock(sweep, lambda: flush_outlasting_deadlocks(flush, attempts=1))
    assert is_deadlock(error)
    assert Team.objects.filter(slug="left-behind").exists()  # what the CI run's next test met
