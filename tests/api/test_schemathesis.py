"""Property-based tests of every operation against the live OpenAPI schema, in-process over WSGI.

Each operation is fuzzed with valid and invalid data (bounded, derandomised examples), as an admin
and as a team member: no answer may be a 5xx, and every answer must match the schema (status
code, content type and body). A second test replays each operation on real objects, which random
ids would almost never hit.
"""

from collections.abc import Iterator

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from pools.kube import ops
from pools.kube.errors import Unreachable
from portal.models import AuditEvent
from tests.api.conftest import VisionObjects, request_body
from tests.conftest import World

CONFIG = {
    "seed": 20261129,
    "generation": {
        "mode": "all",
        "max-examples": 8,
        "deterministic": True,
        "database": "none",
        "with-security-parameters": False,
    },
    "phases": {
        "examples": {"enabled": False},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
    "checks": {
        "enabled": False,
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
    },
}


# Loaded once, at collection, over WSGI from the live schema view (it needs no database). Schemathesis'
# fixture-based lazy loader is not used: it relies on a pytest internal that pytest 9 removed.
schema = schemathesis.openapi.from_wsgi(
    "/api/schema/?format=json", WSGIHandler(), config=schemathesis.Config.from_dict(CONFIG)
)


@pytest.fixture(autouse=True)
def _no_cluster_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # Random cluster registrations would otherwise send the portal to random hosts; here every
    # cluster is unreachable, which the API must report as a 400 like any other cluster failure.
    def unreachable(cluster: object, fn: object) -> None:
        raise Unreachable("No cluster in the fuzz tests.", reason="Unreachable")

    monkeypatch.setattr(ops, "call", unreachable)


@pytest.fixture(autouse=True)
def _requests_inside_the_test_transaction(vision_objects: VisionObjects) -> Iterator[None]:
    # A real WSGI handler closes the database connection after each request (the test client avoids
    # that); every example must run inside the test's transaction, with vision's objects in place.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


# The fixtures (users, tokens, vision's objects) are deliberately shared by the examples of a test;
# no deadline, because the first call of each operation pays for imports and the database is shared.
FUZZ = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None
)


@schema.parametrize()
@FUZZ
def test_every_operation_fuzzed_as_admin(case: schemathesis.Case, tokens: dict[str, str]) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {tokens['admin']}"})


@schema.parametrize()
@FUZZ
def test_every_operation_fuzzed_as_member(case: schemathesis.Case, tokens: dict[str, str]) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {tokens['alice']}"})


def _real_cases(ids: dict[str, int], bodies: dict[str, object]) -> Iterator[schemathesis.Case]:
    for result in schema.get_all_operations():
        operation = result.ok()
        path_parameters = None
        if "{id}" in operation.path:
            collection = operation.path.split("/")[3]
            path_parameters = {"id": str(ids[collection])}
        body = {"body": bodies.get(operation.label, {})} if operation.body else {}
        yield operation.Case(path_parameters=path_parameters, **body)


def test_every_operation_on_real_objects(
    vision_objects: VisionObjects, world: World, tokens: dict[str, str]
) -> None:
    """Each operation on existing objects, with a valid body, as four users: whatever each may or may
    not do, the answer must be documented and conform to the schema."""
    ids = {
        "accelerators": world.a100.pk,
        "clusters": world.interactive.cluster_id,
        "pools": world.interactive.pk,
        "teams": world.vision.pk,
        "capacity-requests": vision_objects.pending.pk,
        "grants": vision_objects.grant.pk,
        "serving-deployments": vision_objects.deployment.pk,
        "audit-events": AuditEvent.objects.latest("id").pk,
    }
    for username in ["admin", "bob", "alice", "auditor"]:
        bodies = {
            "POST /api/v1/capacity-requests/": request_body(world, gpus=1),
            "POST /api/v1/capacity-requests/{id}/approve/": {"comment": "fine"},
            "POST /api/v1/capacity-requests/{id}/reject/": {"comment": "not now"},
            "POST /api/v1/grants/{id}/revoke/": {"reason": "budget"},
            "POST /api/v1/serving-deployments/": {
                "grant": vision_objects.grant.pk,
                "name": f"by-{username}",
                "model_name": "llama",
                "image": "registry.example.com/llm/vllm:stable",
            },
            "POST /api/v1/serving-deployments/{id}/scale/": {"replicas": 0},
            "POST /api/v1/clusters/": {"name": f"by-{username}", "kubeconfig": "not a kubeconfig"},
        }
        for case in _real_cases(ids, bodies):
            case.call_and_validate(headers={"Authorization": f"Bearer {tokens[username]}"})
