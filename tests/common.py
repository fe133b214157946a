"""Helpers the test suite and the benchmarks (bench/) share; no pytest and no Django models here, so
bench imports them before Django is set up."""

import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTBED_SCRIPT = REPO_ROOT / "scripts" / "testbed" / "testbed.py"


def load_testbed_module() -> ModuleType:
    """scripts/testbed/testbed.py, imported by path (scripts/ is not a package)."""
    name = "gpu_portal_testbed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTBED_SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


class PollTimeout(TimeoutError):
    pass


def poll_until(
    what: str,
    check: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.2,
    diagnostics: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy and return that; raise PollTimeout naming
    `what` (and whatever `diagnostics` tells, e.g. a worker's log) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            told = f"\n{diagnostics()}" if diagnostics is not None else ""
            raise PollTimeout(f"timed out after {timeout:.0f}s waiting for {what}{told}")
        time.sleep(interval)


def database_url(db: Mapping[str, Any]) -> str:
    """A DATABASE_URL for subprocesses (worker, collector) to reach the database `db` describes
    (a Django settings dict: the test database once pytest-django set it up)."""
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def psycopg_params(connection: Any) -> dict[str, Any]:
    """What psycopg.connect needs to open a session of its own on the database of Django's
    `connection` (Django's cursor factory left out: it is Django's, not psycopg's)."""
    return {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}


def is_deadlock(error: BaseException) -> bool:
    """Whether PostgreSQL ended `error`'s transaction to break a deadlock (Django and the flush
    command wrap its error in theirs)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, psycopg.errors.DeadlockDetected):
            return True
        cause = cause.__cause__
    return False


def flush_outlasting_deadlocks(flush: Callable[[], None], attempts: int = 5) -> None:
    """Run `flush`, again when it lost a deadlock. The provisioning tests' Celery worker keeps
    sweeping while a transactional test's database is flushed; TRUNCATE takes its tables' locks one
    by one, so it can deadlock with a sweep that reads two of them, and PostgreSQL then fails one of
    the two. When that is the flush, the test errs and the next inherits its rows; a new try wins,
    the sweep having committed."""
    for attempt in range(1, attempts + 1):
        try:
            flush()
            return
        except Exception as error:
            if attempt == attempts or not is_deadlock(error):
                raise
