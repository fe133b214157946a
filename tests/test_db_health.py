"""The health check of reused connections (portal.postgresql): a connection the server has not ended
is reused without Django's `SELECT 1`; one the server ended is replaced before the request's first
query, so that query does not fail. Against the real PostgreSQL, with a persistent connection as
production runs it (each "request" below is what Django does when one starts)."""

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from unittest import mock

import psycopg
import pytest
from django.db import close_old_connections, connection

from quotas.models import Team
from tests.common import psycopg_params

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def persistent() -> Iterator[None]:
    connection.close()
    saved = connection.settings_dict["CONN_MAX_AGE"]
    connection.settings_dict["CONN_MAX_AGE"] = None  # kept for good, read when the connection opens
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = saved


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def request_starts() -> AbstractContextManager[mock.MagicMock]:
    """What Django's request_started does; a spy on the round-trip health check for what follows."""
    close_old_connections()
    return mock.patch.object(connection, "is_usable", wraps=connection.is_usable)


def terminate(pid: int) -> None:
    """Ends a backend from another session, as an administrator or a restart does, and waits until
    it is gone."""
    params = psycopg_params(connection)
    with psycopg.connect(**params, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the terminated backend did not exit"
            time.sleep(0.05)


def test_a_quiet_connection_is_reused_without_a_round_trip(persistent: None) -> None:
    first = backend_pid()
    with request_starts() as ping:
        assert Team.objects.count() == 0
        assert backend_pid() == first
    ping.assert_not_called()


def test_a_connection_the_server_ended_is_replaced_before_the_first_query(persistent: None) -> None:
    first = backend_pid()
    terminate(first)
    with request_starts() as ping:
        assert Team.objects.count() == 0  # no OperationalError: a new connection answered
        assert backend_pid() != first
    ping.assert_called_once()


def test_a_connection_not_idle_gets_the_round_trip_check(persistent: None) -> None:
    backend_pid()
    connection.connection.execute("BEGIN")  # left open behind Django's back
    try:
        with request_starts() as ping:
            backend_pid()
        ping.assert_called()
    finally:
        connection.close()
