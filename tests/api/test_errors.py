"""One error format everywhere, and never a 500 for bad input."""

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from quotas.models import CapacityRequest
from tests.api.conftest import VisionObjects, request_body
from tests.api.test_tokens import assert_error
from tests.conftest import World

Api = Callable[[str], APIClient]


def test_unknown_path_is_a_json_404(api: Api) -> None:
    body = assert_error(api("alice").get("/api/v1/nothing-here/"), 404, "not_found")
    assert "/api/v1/nothing-here/" in body["message"]
    body = assert_error(api("alice").post("/api/v2/capacity-requests/", {}, format="json"), 404, "not_found")
    body = assert_error(api("alice").get("/api/v1/capacity-requests"), 404, "not_found")
    assert "end with a slash" in body["message"]


@pytest.mark.parametrize("pk", ["abc", "-1", "1.5", "99999999999999999999999", "0"])
def test_ids_that_cannot_exist_are_404(api: Api, world: World, pk: str) -> None:
    assert_error(api("alice").get(f"/api/v1/capacity-requests/{pk}/"), 404, "not_found")


def test_wrong_method_is_405(api: Api, vision_objects: VisionObjects) -> None:
    response = api("alice").delete(f"/api/v1/capacity-requests/{vision_objects.pending.pk}/")
    body = assert_error(response, 405, "method_not_allowed")
    assert "DELETE" in body["message"]
    assert_error(api("alice").put("/api/v1/accelerators/", {}, format="json"), 405, "method_not_allowed")


def test_malformed_json_is_400(api: Api, world: World) -> None:
    response = api("alice").post(
        "/api/v1/capacity-requests/", data='{"team": "vision",', content_type="application/json"
    )
    body = assert_error(response, 400, "parse_error")
    assert "JSON" in body["message"]


def test_other_media_types_are_415(api: Api, world: World) -> None:
    response = api("alice").post(
        "/api/v1/capacity-requests/", data="team=vision", content_type="application/x-www-form-urlencoded"
    )
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"gpus": "many"}, {"gpus"}),
        ({"gpus": 10**30}, {"gpus"}),
        ({"gpus": 1e308}, {"gpus"}),
        ({"gpus": 0, "pool_class": "quantum"}, {"gpus", "pool_class"}),
        ({"ends_at": "next tuesday"}, {"ends_at"}),
        ({"ends_at": "9999-12-31T23:59:59-15:00"}, {"ends_at"}),
        ({"starts_at": "1999-12-31T00:00:00+05:00"}, {"starts_at"}),
        ({"team": "no-such-team", "accelerator": "no-such-gpu"}, {"team", "accelerator"}),
        ({"purpose": "x" * 6000}, {"purpose"}),
        ({"purpose": "nul \x00 byte"}, {"purpose"}),
        ({"cpu": "NaN", "memory_gib": -1}, {"cpu", "memory_gib"}),
        ({"model_parameters_billion": "1e9999"}, {"model_parameters_billion"}),
        ({"team": ["vision"], "submit": "perhaps"}, {"team", "submit"}),
    ],
)
def test_bad_fields_are_400_naming_each_field(api: Api, world: World, overrides: dict, fields: set) -> None:
    response = api("alice").post(
        "/api/v1/capacity-requests/", request_body(world, **overrides), format="json"
    )
    body = assert_error(response, 400, "invalid")
    assert set(body["fields"]) == fields
    assert all(body["fields"][f] and all(isinstance(m, str) for m in body["fields"][f]) for f in fields)
    assert not CapacityRequest.objects.exists()


@pytest.mark.parametrize("payload", ["[]", '"text"', "42", "null"])
def test_body_that_is_not_an_object_is_400(api: Api, world: World, payload: str) -> None:
    response = api("alice").post("/api/v1/capacity-requests/", data=payload, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] in {"invalid", "parse_error"}


def test_service_rules_come_back_as_field_errors(api: Api, world: World) -> None:
    # The capacity rule lives in the service; the API only maps its ValidationError.
    body = assert_error(
        api("alice").post("/api/v1/capacity-requests/", request_body(world, gpus=30), format="json"),
        400,
        "invalid",
    )
    assert list(body["fields"]) == ["gpus"]
    assert "warm headroom" in body["fields"]["gpus"][0]
    body = assert_error(
        api("alice").post(
            "/api/v1/capacity-requests/",
            request_body(
                world,
                accelerator=world.l4.slug,
                pool_class="embedding-reranking",
                gpus=1,
                model_parameters_billion="70",
                model_precision="bf16",
            ),
            format="json",
        ),
        400,
        "invalid",
    )
    assert "GiB" in body["fields"]["accelerator"][0]


def test_state_conflicts_are_409(api: Api, vision_objects: VisionObjects) -> None:
    body = assert_error(
        api("bob").post(
            f"/api/v1/capacity-requests/{vision_objects.approved.pk}/approve/", {}, format="json"
        ),
        409,
        "not_pending",
    )
    assert "only pending requests" in body["message"]
    assert_error(
        api("alice").post(f"/api/v1/capacity-requests/{vision_objects.approved.pk}/cancel/"),
        409,
        "invalid_transition",
    )


@pytest.mark.parametrize(
    "query",
    [
        "state=bogus",
        "created_after=yesterday",
        "created_after=1999-01-01T00:00:00Z",
        "created_before=0001-01-01T00:00:00Z",
        "page=0",
        "page=abc",
        "page=99999999999999999999",
    ],
)
def test_bad_query_parameters_are_400(api: Api, vision_objects: VisionObjects, query: str) -> None:
    body = assert_error(api("alice").get(f"/api/v1/capacity-requests/?{query}"), 400, "invalid")
    assert set(body["fields"]) == {query.split("=")[0]}


@pytest.mark.parametrize("query", ["pool=1e400", "pool=-3", "request=abc", "pool=99999999999999999999999"])
def test_bad_id_filters_are_400(api: Api, vision_objects: VisionObjects, query: str) -> None:
    assert_error(api("alice").get(f"/api/v1/grants/?{query}"), 400, "invalid")


def test_offsets_the_database_refuses_are_normalised_to_utc(api: Api, world: World) -> None:
    # Python accepts UTC offsets up to 23:59, PostgreSQL only up to 15:59.
    assert (
        api("alice").get("/api/v1/capacity-requests/?created_after=2030-01-01T00:00:00%2B20:00").status_code
        == 200
    )
    response = api("alice").post(
        "/api/v1/capacity-requests/",
        request_body(world, starts_at="2030-01-01T00:00:00-20:00", ends_at="2030-01-20T00:00:00+23:30"),
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["starts_at"] == "2030-01-01T20:00:00Z"
    assert response.json()["ends_at"] == "2030-01-19T00:30:00Z"


def test_unknown_ordering_is_ignored_and_page_size_capped(api: Api, vision_objects: VisionObjects) -> None:
    response = api("alice").get("/api/v1/capacity-requests/?ordering=password&page_size=100000")
    assert response.status_code == 200
    assert response.json()["count"] == 2


def test_options_and_head_on_every_route(api: Api, vision_objects: VisionObjects) -> None:
    from portal.api.urls import router

    for url in router.urls:
        path = "/api/v1/" + url.pattern.regex.pattern.strip("^$").replace("(?P<pk>[0-9]{1,18})", str(1))
        for method in ("options", "head"):
            response = getattr(api("admin"), method)(path)
            assert response.status_code < 500, (method, path, response.content)
