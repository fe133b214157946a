from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection

from pools.models import Accelerator, NodePool, PoolClass
from portal.models import User
from quotas.models import Membership, Team
from tests import factories

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
