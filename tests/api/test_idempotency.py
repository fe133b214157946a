"""Idempotency-Key: a retried POST returns the first result and creates nothing twice."""

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from portal.api.services import idempotency_records_purge
from portal.models import IdempotencyRecord
from quotas import services
from quotas.models import CapacityRequest
from tests.api.conftest import request_body
from tests.api.test_tokens import assert_error
from tests.conftest import World

Api = Callable[[str], APIClient]
URL = "/api/v1/capacity-requests/"


def post(client: APIClient, body: dict, key: str | None) -> object:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(URL, body, format="json", **headers)


def test_retry_with_the_same_key_returns_the_first_result(api: Api, world: World) -> None:
    body = request_body(world)
    first = post(api("alice"), body, "9b2f6d1e-retry")
    second = post(api("alice"), body, "9b2f6d1e-retry")
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert CapacityRequest.objects.count() == 1


def test_without_a_key_every_post_creates(api: Api, world: World) -> None:
    body = request_body(world, gpus=1)
    post(api("alice"), body, None)
    post(api("alice"), body, None)
    assert CapacityRequest.objects.count() == 2


def test_same_key_with_another_body_is_422(api: Api, world: World) -> None:
    post(api("alice"), request_body(world, gpus=1), "k1")
    body = assert_error(post(api("alice"), request_body(world, gpus=2), "k1"), 422, "idempotency_key_reused")
    assert "k1" in body["message"]
    # The same key on another endpoint is another request too.
    req = CapacityRequest.objects.get()
    approve = api("alice").post(f"{URL}{req.pk}/cancel/", HTTP_IDEMPOTENCY_KEY="k1")
    assert_error(approve, 422, "idempotency_key_reused")
    assert CapacityRequest.objects.count() == 1


def test_keys_belong_to_their_user(api: Api, world: World) -> None:
    post(api("alice"), request_body(world, gpus=1), "shared")
    second = post(api("bob"), request_body(world, gpus=1), "shared")
    assert second.status_code == 201 and second.json()["requester"] == "bob"
    assert CapacityRequest.objects.count() == 2


def test_errors_are_not_remembered(api: Api, world: World) -> None:
    too_many = request_body(world, gpus=30)
    assert post(api("alice"), too_many, "k2").status_code == 400
    assert not IdempotencyRecord.objects.exists()
    # The same call may be sent again once the cause is fixed... with the same key and body.
    world.interactive.capacity_gpus = 64
    world.interactive.save()
    assert post(api("alice"), too_many, "k2").status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\tkey"])
def test_malformed_keys_are_400(api: Api, world: World, key: str) -> None:
    body = assert_error(post(api("alice"), request_body(world), key), 400, "invalid")
    assert list(body["fields"]) == ["Idempotency-Key"]
    assert not CapacityRequest.objects.exists()


def test_actions_honour_the_key_too(api: Api, world: World) -> None:
    req = post(api("alice"), request_body(world), None).json()
    first = api("bob").post(f"{URL}{req['id']}/approve/", {}, format="json", HTTP_IDEMPOTENCY_KEY="a1")
    retry = api("bob").post(f"{URL}{req['id']}/approve/", {}, format="json", HTTP_IDEMPOTENCY_KEY="a1")
    assert retry.status_code == first.status_code == 200 and retry.json() == first.json()
    # Without the key the retry is a second decision, which the state machine refuses.
    assert api("bob").post(f"{URL}{req['id']}/approve/", {}, format="json").status_code == 403


def test_expired_keys_are_forgotten(api: Api, world: World) -> None:
    post(api("alice"), request_body(world, gpus=1), "old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert post(api("alice"), request_body(world, gpus=1), "old").status_code == 201
    assert CapacityRequest.objects.count() == 2
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert idempotency_records_purge() == 1 and not IdempotencyRecord.objects.exists()


def _blocked_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_identical_posts_create_one_request(
    world: World, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call is held inside the service until the second is seen waiting on the key's row lock;
    then both finish: one request, and the second answer is the first one replayed."""
    release = threading.Event()
    entered = threading.Event()
    real_create = services.capacity_request_create

    def held_create(**kwargs: object) -> CapacityRequest:
        entered.set()
        assert release.wait(30), "the test never released the first call"
        return real_create(**kwargs)

    monkeypatch.setattr(services, "capacity_request_create", held_create)
    body = request_body(world)
    responses: dict[str, object] = {}
    pids: dict[str, int] = {}

    def call(name: str) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids[name] = cursor.fetchone()[0]
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['alice']}")
            responses[name] = post(client, body, "concurrent-key")
        finally:
            connections.close_all()

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert entered.wait(30)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    deadline = time.monotonic() + 30
    while not ("second" in pids and _blocked_on_a_lock(pids["second"])):
        assert time.monotonic() < deadline, "the second call never waited for the first one's key"
        time.sleep(0.05)
    release.set()
    first.join(30)
    second.join(30)

    a, b = responses["first"], responses["second"]
    assert a.status_code == b.status_code == 201, (a.content, b.content)
    assert a.content == b.content and b["Idempotent-Replayed"] == "true"
    assert CapacityRequest.objects.count() == 1
    assert IdempotencyRecord.objects.count() == 1
