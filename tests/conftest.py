import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import TransactionTestCase

from pools.models import Accelerator, NodePool, PoolClass
from portal.models import User
from quotas.models import Membership, Team
from tests import factories
from tests.common import REPO_ROOT, database_url, flush_outlasting_deadlocks

# The Kubernetes testbed fixtures (`testbed`, `k8s_namespace`) for tests marked `cluster`.
pytest_plugins = ["tests.testbed", "tests.keycloak"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from django.conf import settings

    db = settings.DATABASES["default"]
    return [
        f"database: {db['ENGINE']} {db.get('HOST', '')}:{db.get('PORT', '')}",
        f"broker: {settings.CELERY_BROKER_URL}",
    ]


@pytest.fixture(autouse=True, scope="session")
def _require_postgresql(django_db_setup: None, django_db_blocker: object) -> None:
    # The suite's locking and concurrency tests only mean something on PostgreSQL.
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        assert connection.vendor == "postgresql", f"tests must run on PostgreSQL, not {connection.vendor}"


@pytest.fixture(autouse=True, scope="session")
def _flush_outlasts_deadlocks() -> Iterator[None]:
    # pytest-django flushes through TransactionTestCase._fixture_teardown; that is the one door.
    original = TransactionTestCase._fixture_teardown

    def fixture_teardown(self: TransactionTestCase) -> None:
        flush_outlasting_deadlocks(lambda: original(self))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TransactionTestCase, "_fixture_teardown", fixture_teardown)
        yield


@dataclass
class World:
    """The demo organisation in miniature: two teams, their people, one pool per class."""

    vision: Team
    nlp: Team
    alice: User  # member of vision
    bob: User  # lead of vision
    carol: User  # member of nlp
    admin: User  # platform admin
    auditor: User
    a100: Accelerator
    h100: Accelerator
    l4: Accelerator
    mig: Accelerator
    interactive: NodePool
    batch: NodePool
    embedding: NodePool
    experimentation: NodePool


@pytest.fixture
def world(db: None, settings: Any) -> World:
    # The world's cluster has no credentials: the approval pre-flight against a real cluster is
    # tested in tests/provisioning.
    settings.PORTAL_PREFLIGHT = False
    vision, nlp = factories.team("vision"), factories.team("nlp")
    a100 = factories.accelerator("a100-80gb", 80, name="NVIDIA A100 80GB")
    h100 = factories.accelerator("h100-80gb", 80, name="NVIDIA H100 80GB")
    l4 = factories.accelerator("l4-24gb", 24, name="NVIDIA L4 24GB")
    mig = factories.accelerator("a100-mig-1g-10gb", 10, mig_profile="1g.10gb", name="A100 MIG 1g.10gb")
    return World(
        vision=vision,
        nlp=nlp,
        alice=factories.member(vision, "alice"),
        bob=factories.member(vision, "bob", Membership.Role.LEAD),
        carol=factories.member(nlp, "carol"),
        admin=factories.user("admin", is_platform_admin=True),
        auditor=factories.user("auditor", is_auditor=True),
        a100=a100,
        h100=h100,
        l4=l4,
        mig=mig,
        interactive=factories.pool("interactive-a100", PoolClass.INTERACTIVE, a100, capacity=32, headroom=8),
        batch=factories.pool("batch-h100", PoolClass.BATCH, h100, capacity=16, batch_fraction="0.75"),
        embedding=factories.pool("embedding-l4", PoolClass.EMBEDDING, l4, capacity=8),
        experimentation=factories.pool("experimentation-mig", PoolClass.EXPERIMENTATION, mig, capacity=64),
    )


@dataclass
class CollectorProcess:
    """A real `manage.py collect_utilisation` process on the test database; its output in a file
    (a pipe nobody reads would block it once full)."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as a service manager stops it; (exit code, output)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return self.process.returncode, self.output()


@pytest.fixture
def collector_process(tmp_path: Path) -> Iterator[Callable[[str], CollectorProcess]]:
    started: list[CollectorProcess] = []

    def start(cluster_name: str) -> CollectorProcess:
        from django.conf import settings

        env = {
            **os.environ,
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the collector is an ordinary process
        log = tmp_path / f"collector-{cluster_name}-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "collect_utilisation",
                    "--cluster",
                    cluster_name,
                    "--interval",
                    "15",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(CollectorProcess(process, log))
        return started[-1]

    yield start
    for collector in started:
        if collector.process.poll() is None:
            collector.process.kill()
            collector.process.wait(timeout=30)
