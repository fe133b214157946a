"""POST /api/v1/capacity-requests/decide/: per-item results, the one error format, idempotency."""

from collections.abc import Callable

from rest_framework.test import APIClient

from quotas import services
from quotas.models import CapacityRequest, Grant
from quotas.states import RequestState as S
from tests import factories
from tests.api.test_tokens import assert_error
from tests.conftest import World

Api = Callable[[str], APIClient]
URL = "/api/v1/capacity-requests/decide/"


def at_platform(world: World, n: int, gpus: int = 1) -> list[CapacityRequest]:
    reqs = [factories.request(world.alice, world.vision, world.a100, gpus=gpus) for _ in range(n)]
    for req in reqs:
        services.capacity_request_approve(capacity_request=req, actor=world.bob)
    return reqs


def test_batch_reports_each_request_in_the_order_given(api: Api, world: World) -> None:
    # 24 grantable GPUs in interactive-a100: three of 10 cannot all fit.
    reqs = at_platform(world, 3, gpus=10)
    other_team = factories.request(world.carol, world.nlp, world.a100, gpus=1)
    ids = [reqs[2].pk, reqs[0].pk, reqs[1].pk, other_team.pk, 987654]
    response = api("admin").post(
        URL, {"decision": "approve", "comment": "ok", "requests": ids}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["id"] for r in body["results"]] == ids
    by_id = {r["id"]: r for r in body["results"]}
    # Decided in id order under the pool lock: the first two by id fit, the third does not.
    assert by_id[reqs[0].pk]["outcome"] == by_id[reqs[1].pk]["outcome"] == "approved"
    refused = by_id[reqs[2].pk]
    assert (refused["outcome"], refused["status"], refused["state"]) == ("refused", 409, S.PENDING_PLATFORM)
    assert refused["error"]["code"] == "capacity" and set(refused["error"]) == {"code", "message", "fields"}
    assert by_id[reqs[0].pk]["grant"] == Grant.objects.get(request=reqs[0]).pk
    assert by_id[reqs[0].pk]["state"] == S.APPROVED and by_id[reqs[0].pk]["error"] is None
    assert by_id[other_team.pk]["outcome"] == "approved"  # admins see every team
    assert by_id[987654]["status"] == 404 and by_id[987654]["error"]["code"] == "not_found"
    assert body["counts"] == {"approved": 3, "lead_approved": 0, "rejected": 0, "refused": 2}


def test_other_teams_requests_read_as_not_found(api: Api, world: World) -> None:
    theirs = factories.request(world.carol, world.nlp, world.a100, gpus=1)
    response = api("bob").post(URL, {"decision": "approve", "requests": [theirs.pk]}, format="json")
    (item,) = response.json()["results"]
    assert (item["status"], item["error"]["code"], item["state"]) == (404, "not_found", None)
    assert CapacityRequest.objects.get(pk=theirs.pk).state == S.PENDING_PLATFORM


def test_own_requests_are_403_items(api: Api, world: World) -> None:
    own = factories.request(world.bob, world.vision, world.a100, gpus=1)
    mine = factories.request(world.alice, world.vision, world.a100, gpus=1)
    response = api("bob").post(URL, {"decision": "approve", "requests": [own.pk, mine.pk]}, format="json")
    first, second = response.json()["results"]
    assert (first["status"], first["error"]["code"]) == (403, "permission_denied")
    assert (second["outcome"], second["state"]) == ("lead_approved", S.PENDING_PLATFORM)


def test_malformed_batches_are_400_in_the_error_format(api: Api, world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=1)
    client = api("bob")
    for body, field in (
        ({"decision": "approve", "requests": []}, "requests"),
        ({"decision": "approve", "requests": [req.pk, req.pk]}, "requests"),
        ({"decision": "approve", "requests": list(range(1, 502))}, "requests"),
        ({"decision": "reject", "comment": "", "requests": [req.pk]}, "comment"),
        ({"decision": "maybe", "requests": [req.pk]}, "decision"),
        ({"decision": "approve", "requests": ["x"]}, "requests.0"),
    ):
        error = assert_error(client.post(URL, body, format="json"), 400, "invalid")
        assert field in error["fields"], (body, error)
    assert CapacityRequest.objects.get(pk=req.pk).state == S.PENDING_LEAD


def test_idempotency_key_replays_the_batch(api: Api, world: World) -> None:
    reqs = at_platform(world, 2)
    body = {"decision": "approve", "requests": [r.pk for r in reqs]}
    client = api("admin")
    first = client.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    second = client.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert first.status_code == second.status_code == 200
    assert second.content == first.content and second["Idempotent-Replayed"] == "true"
    assert Grant.objects.filter(request__in=reqs).count() == 2
    # Without the key the same batch is decided again: each request is no longer pending.
    third = client.post(URL, body, format="json").json()
    assert [r["error"]["code"] for r in third["results"]] == ["not_pending", "not_pending"]


def test_read_only_tokens_and_auditors_cannot_decide(api: Api, world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=1)
    assert_error(
        api("auditor").post(URL, {"decision": "approve", "requests": [req.pk]}, format="json"),
        403,
        "read_only_user",
    )
