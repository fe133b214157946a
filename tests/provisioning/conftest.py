"""Fixtures of the provisioning tests.

They run against the shared testbed (`testbed` from tests/testbed.py) with a REAL Celery worker
subprocess (worker + embedded beat) on the test database and the test broker, never eager mode.
Each test gets its own Cluster row and pools pointing at the testbed's real pools, and a team with a
unique slug; every namespace and policy binding it makes is deleted afterwards.
"""

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from pools.kube import ops
from pools.kube.errors import KubeError
from pools.kube.objects import MANAGED_BY, MANAGED_BY_LABEL
from pools.models import Accelerator, Cluster, NodePool, PoolClass
from pools.services import cluster_policies_apply
from portal.celery import app as celery_app
from portal.models import AuditEvent, User
from quotas.models import Grant, Team
from tests import factories
from tests.collector import live_collector
from tests.common import database_url
from tests.provisioning.support import Worker, _wait, worker_env
from tests.testbed import Testbed

# Teams of these tests start with it, so leftovers of a crashed run are recognisable by name; the
# session part tells this run's objects from those of a concurrent run on the same cluster.
TEAM_PREFIX = "prv"
SESSION_PREFIX = f"{TEAM_PREFIX}{secrets.token_hex(2)}"


class Workers:
    """The package's default worker (started on first use) and private ones for fault tests."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.database_url = database_url(connection.settings_dict)
        self._all: list[Worker] = []
        self.default = self.make(settings.CELERY_BROKER_URL, "default")

    def make(self, broker_url: str, role: str, **env: str) -> Worker:
        worker = Worker(
            env=worker_env(database_url=self.database_url, broker_url=broker_url, **env),
            workdir=self.workdir,
            name=f"prov-{role}-{secrets.token_hex(3)}",
        )
        self._all.append(worker)
        return worker

    def running_default(self) -> Worker:
        if not self.default.running:
            self.default.start()
        return self.default

    def tails(self) -> str:
        return "\n".join(w.tail(40) for w in self._all if w.starts)

    def stop_all(self) -> None:
        for worker in self._all:
            worker.stop()


@pytest.fixture(scope="package")
def workers(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    # Messages left by an earlier run would only name rows that no longer exist; start clean.
    celery_app.control.purge()
    pool = Workers(tmp_path_factory.mktemp("workers"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def worker(workers: Workers) -> Worker:
    return workers.running_default()


@pytest.fixture
def wait_for(workers: Workers) -> Callable[..., Any]:
    def wait(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        return _wait(what, check, timeout, workers.tails)

    return wait


# --- the organisation ---------------------------------------------------------------------------


def _delete_grant_objects(admin: Cluster, namespaces: list[str]) -> None:
    for name in namespaces:
        try:
            ops.delete(admin, "v1", "Namespace", name)
        except KubeError:
            continue


@pytest.fixture(scope="package")
def _leftovers(testbed: Testbed) -> Iterator[None]:
    """Delete the namespaces and bindings this session's teams leave behind, and those of crashed
    runs. Other sessions may be running these tests on the same cluster right now: their objects are
    recognised by their session prefix and age, and left alone."""

    def sweep(prefix: str, older_than: timedelta | None) -> None:
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        now = datetime.now(UTC)
        found = ops.list_objects(testbed.admin, "v1", "Namespace", label_selector=selector)
        names = {
            obj["metadata"]["name"]
            for obj in found
            if obj["metadata"]["name"].startswith(prefix)
            and (
                older_than is None
                or now - datetime.fromisoformat(obj["metadata"]["creationTimestamp"]) > older_than
            )
        }
        _delete_grant_objects(testbed.admin, sorted(names))

    sweep(TEAM_PREFIX, older_than=timedelta(minutes=30))
    yield
    sweep(SESSION_PREFIX, older_than=None)


@dataclass
class Org:
    testbed: Testbed
    cluster: Cluster
    team: Team
    member: User
    admin: User
    a100: Accelerator
    h100: Accelerator
    interactive: NodePool
    batch: NodePool
    grants: list[Grant] = field(default_factory=list)

    @property
    def k8s(self) -> Cluster:
        """The testbed's admin credentials, for reading and editing what the portal made."""
        return self.testbed.admin

    def approve(self, gpus: int = 2, **fields: Any) -> Grant:
        fields.setdefault("pool_class", PoolClass.INTERACTIVE)
        accelerator = fields.pop("accelerator", self.a100)
        req = factories.request(self.member, self.team, accelerator, gpus=gpus, **fields)
        grant = factories.approved_grant(req, self.admin)
        self.grants.append(grant)
        return grant

    def read(self, kind: str, name: str, namespace: str | None = None, api_version: str = "v1") -> Any:
        return ops.get(self.k8s, api_version, kind, name, namespace)

    def audit_actions(self, obj: Any) -> list[str]:
        return list(
            AuditEvent.objects.filter(object_type=obj._meta.label_lower, object_id=str(obj.pk))
            .order_by("pk")
            .values_list("action", flat=True)
        )


def _accelerator(slug: str, **fields: Any) -> Accelerator:
    return Accelerator.objects.create(slug=slug, hourly_cost=1, mig_profile="", **fields)


@pytest.fixture
def org(transactional_db: None, testbed: Testbed, _leftovers: None) -> Iterator[Org]:
    cluster = testbed.cluster(f"prov-{secrets.token_hex(3)}")
    a100 = _accelerator(
        "a100-80gb",
        name="NVIDIA A100 80GB",
        product="NVIDIA-A100-SXM4-80GB",
        type_label="nvidia-a100",
        memory_gib=80,
    )
    h100 = _accelerator(
        "h100-80gb",
        name="NVIDIA H100 80GB",
        product="NVIDIA-H100-80GB-HBM3",
        type_label="nvidia-h100",
        memory_gib=80,
    )
    team = factories.team(f"{SESSION_PREFIX}{secrets.token_hex(3)}")
    org = Org(
        testbed=testbed,
        cluster=cluster,
        team=team,
        member=factories.member(team, f"{team.slug}-member"),
        admin=factories.user(f"{team.slug}-admin", is_platform_admin=True),
        a100=a100,
        h100=h100,
        interactive=factories.pool(
            "interactive-a100", PoolClass.INTERACTIVE, a100, capacity=32, cluster=cluster
        ),
        batch=factories.pool(
            "batch-h100", PoolClass.BATCH, h100, capacity=16, batch_fraction="1", cluster=cluster
        ),
    )
    # What registering the cluster does: the PriorityClasses of every pool class and the policy.
    cluster_policies_apply(cluster=cluster)
    # Approvals read the collector's live inventory of the cluster, as in production.
    with live_collector(cluster):
        yield org
        # Before the database is flushed: stop the worker from re-creating what is deleted next.
        Cluster.objects.update(enabled=False)
    _delete_grant_objects(testbed.admin, [g.namespace for g in Grant.objects.all()])
