from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from portal.api.services import api_token_issue
from portal.models import User
from quotas.models import CapacityRequest, Grant, ServingDeployment
from tests import factories
from tests.conftest import World


@pytest.fixture(autouse=True)
def _no_cluster_preflight(settings: Any) -> None:
    # These tests are about the API; the pools here are rows without a cluster behind them, so the
    # approval's pre-flight against the cluster (tested with the provisioning) is off.
    settings.PORTAL_PREFLIGHT = False


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> Iterator[None]:
    # Throttle counters live in the cache, which outlives each test's database rollback.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def tokens(world: World) -> dict[str, str]:
    users = [world.alice, world.bob, world.carol, world.admin, world.auditor]
    return {u.username: api_token_issue(user=u, name="tests").raw for u in users}


@pytest.fixture
def api(tokens: dict[str, str]) -> Callable[[str], APIClient]:
    """api("alice") is a client authenticated with alice's token."""

    def client_for(username: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens[username]}")
        return client

    return client_for


def request_body(world: World, **overrides: Any) -> dict[str, Any]:
    now = timezone.now()
    body = {
        "team": world.vision.slug,
        "pool_class": "interactive-inference",
        "accelerator": world.a100.slug,
        "gpus": 4,
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(days=30)).isoformat(),
        "purpose": "serve a chat model",
    }
    body.update(overrides)
    return body


@dataclass
class VisionObjects:
    """One of everything vision owns: a pending request, an approved one with its grant and a deployment."""

    pending: CapacityRequest
    approved: CapacityRequest
    grant: Grant
    deployment: ServingDeployment


def approved_request(world: World, requester: User | None = None, gpus: int = 2) -> CapacityRequest:
    """A vision request approved by its lead and a platform admin."""
    req = factories.request(requester or world.alice, world.vision, world.a100, gpus=gpus)
    return factories.approved(req, world.bob, world.admin)


def deployment(grant: Grant, user: User, name: str) -> ServingDeployment:
    return ServingDeployment.objects.create(
        grant=grant,
        team=grant.team,
        name=name,
        model_name="llama-3-8b",
        image="registry.example.com/llm/vllm:stable",
        created_by=user,
    )


@pytest.fixture
def vision_objects(world: World) -> VisionObjects:
    pending = factories.request(world.alice, world.vision, world.a100, gpus=2)
    approved = approved_request(world)
    grant = Grant.objects.get(request=approved)
    return VisionObjects(
        pending=pending, approved=approved, grant=grant, deployment=deployment(grant, world.alice, "chat")
    )
