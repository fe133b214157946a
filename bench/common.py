"""Shared plumbing: Django setup against a dedicated benchmark database, timing and statistics."""

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.common import load_testbed_module, poll_until

BENCH_DB = os.environ.get("PORTAL_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:55432/portal_bench")
BENCH_BROKER = os.environ.get("PORTAL_BENCH_BROKER_URL", "redis://127.0.0.1:56379/12")


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.test")
    os.environ["DATABASE_URL"] = BENCH_DB
    os.environ["CELERY_BROKER_URL"] = BENCH_BROKER
    import django

    django.setup()


def reset_database() -> None:
    """Drop and re-create the benchmark database, then migrate it."""
    import psycopg
    from django.core.management import call_command
    from django.db import connections

    connections.close_all()
    admin_url = BENCH_DB.rsplit("/", 1)[0] + "/postgres"
    name = BENCH_DB.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0, interactive=False)


def fresh_catalogue() -> tuple[Any, Any]:
    """A reset database with one A100 accelerator and one cluster row (no cluster behind it): the
    sections that measure the database alone build their pools on these."""
    from tests import factories

    reset_database()
    accelerator = factories.accelerator(
        "a100-80gb", 80, name="A100 80GB", product="NVIDIA-A100-SXM4-80GB", type_label="nvidia-a100"
    )
    return accelerator, factories.cluster("bench")


def team_with_lead(slug: str, name: str, username: str) -> tuple[Any, Any]:
    from tests import factories

    team, lead = factories.team_with_lead(slug, username)
    team.name = name
    team.save(update_fields=["name"])
    return team, lead


@dataclass
class Series:
    """Repeated measurements of one figure."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        v = self.values
        return {
            "name": self.name,
            "unit": self.unit,
            "runs": len(v),
            "median": statistics.median(v) if v else None,
            "min": min(v) if v else None,
            "max": max(v) if v else None,
            "spread_pct": (100 * (max(v) - min(v)) / statistics.median(v))
            if v and statistics.median(v)
            else None,
        }


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    elapsed: list[float] = []
    yield lambda: elapsed[0] if elapsed else time.perf_counter() - start
    elapsed.append(time.perf_counter() - start)


def machine() -> dict[str, Any]:
    def cmd(*args: str) -> str:
        try:
            return subprocess.run(
                args, capture_output=True, text=True, check=False, timeout=10
            ).stdout.strip()
        except OSError:
            return "n/a"

    cpu = "n/a"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "n/a")
    except OSError:
        pass
    import django

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": cmd("psql", "--version"),
        "redis": cmd("redis-server", "--version"),
    }


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBECTL = os.path.expanduser("~/.cache/gpu-portal/k8s-v1.36.1/bin/kubectl")


def testbed_module() -> Any:
    return load_testbed_module()


@contextmanager
def testbed_cluster(name: str, extra_nodes: int = 0, **options: Any) -> Iterator[str]:
    """A dedicated testbed cluster for the duration of a section, always torn down; yields its
    kubeconfig. `options` go to the testbed's `up` (scale, engines)."""
    tb = testbed_module()
    try:
        yield str(tb.up(name=name, extra_nodes=extra_nodes, **options))
    finally:
        tb.down(name=name)


def bench_env(**extra: str) -> dict[str, str]:
    """Environment for portal subprocesses (worker, collector, web server): the bench DB and broker."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": BENCH_DB,
        "CELERY_BROKER_URL": BENCH_BROKER,
        **extra,
    }


@contextmanager
def process(
    args: list[str], log_path: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own process group, stopped (TERM, then KILL) when the block ends."""
    import signal

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=env or bench_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    return poll_until(what, check, timeout, interval)


def log(section: str, message: str) -> None:
    print(f"[bench {section} {time.strftime('%H:%M:%S')}] {message}", flush=True)
