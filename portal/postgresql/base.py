"""PostgreSQL, with a health check of reused connections that costs no round trip.

Django's CONN_HEALTH_CHECKS sends `SELECT 1` before the first query of every request that reuses a
persistent connection: one more round trip than the request's own, which under load costs a poll
of the dashboard more than its rendering does. A server that ends a connection (a restart, an
administrator, idle_session_timeout) first sends the client its reason, so an idle connection with
nothing to read on its socket is one the server has not ended; only one with something to read
(or not idle) gets Django's `SELECT 1`, which drops it if it is dead. A peer that vanished without a
word is not caught here, nor by `SELECT 1` before its TCP timeout.

settings.base names this module as the ENGINE for PostgreSQL.
"""

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and self._quiet()
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _quiet(self) -> bool:
        """Idle, and nothing from the server waiting on the socket."""
        connection = self.connection
        if connection.closed or connection.broken:
            return False
        if connection.info.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            readable, _, _ = select.select([connection.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable
