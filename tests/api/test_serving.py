"""Serving deployments through the API: create, scale, delete, with the services' rules."""

from collections.abc import Callable

from rest_framework.test import APIClient

from portal.models import AuditEvent
from quotas import services
from quotas.models import ServingDeployment
from tests.api.conftest import VisionObjects
from tests.api.test_tokens import assert_error

Api = Callable[[str], APIClient]
IMAGE = "registry.example.com/llm/vllm:stable"


def deploy(client: APIClient, grant_id: int, **overrides: object) -> object:
    body = {"grant": grant_id, "name": "llama", "model_name": "llama-3-8b", "image": IMAGE, **overrides}
    return client.post("/api/v1/serving-deployments/", body, format="json")


def test_create_scale_delete(api: Api, vision_objects: VisionObjects) -> None:
    grant = vision_objects.grant  # 2 GPUs; the existing deployment "chat" uses 1
    created = deploy(api("alice"), grant.pk, env={"MAX_MODEL_LEN": "8192"}, args=["--dtype", "bf16"])
    assert created.status_code == 201, created.content
    dep = created.json()
    assert dep["namespace"] == grant.namespace and dep["replicas"] == 1 and dep["created_by"] == "alice"
    assert dep["env"] == {"MAX_MODEL_LEN": "8192"} and dep["args"] == ["--dtype", "bf16"]

    scaled = api("bob").post(
        f"/api/v1/serving-deployments/{dep['id']}/scale/", {"replicas": 0}, format="json"
    )
    assert scaled.status_code == 200 and scaled.json()["replicas"] == 0
    assert scaled.json()["generation"] == dep["generation"] + 1

    deleted = api("alice").delete(f"/api/v1/serving-deployments/{dep['id']}/")
    assert deleted.status_code == 200 and deleted.json()["deleted_at"] is not None
    assert_error(api("alice").delete(f"/api/v1/serving-deployments/{dep['id']}/"), 409, "deleted")
    actions = set(AuditEvent.objects.filter(object_id=str(dep["id"])).values_list("action", flat=True))
    assert {
        "serving_deployment.created",
        "serving_deployment.scaled",
        "serving_deployment.deleted",
    } <= actions


def test_create_refuses_bad_input_by_field(api: Api, vision_objects: VisionObjects) -> None:
    grant = vision_objects.grant.pk
    cases = [
        ({"image": "docker.io/evil/miner:latest"}, {"image"}),
        ({"replicas": 2, "gpus_per_replica": 1}, {"replicas"}),  # 2 + the existing 1 > the grant's 2
        ({"name": "Not_A_DNS_Label"}, {"name"}),
        ({"name": "chat"}, {"name"}),  # taken in this grant
        ({"env": {"1BAD": "x", "HF_HOME": "/tmp"}}, {"env"}),
        ({"model_name": " "}, {"model_name"}),
        ({"replicas": 10**12, "args": "not a list"}, {"replicas", "args"}),
        ({"args": ["--ok", "x" * 1001], "env": {"A": ["x"]}}, {"args.1", "env.A"}),
        ({"grant": 10**6}, {"grant"}),
    ]
    for overrides, fields in cases:
        body = assert_error(deploy(api("alice"), grant, **overrides), 400, "invalid")
        assert set(body["fields"]) == fields, (overrides, body)
    assert ServingDeployment.objects.count() == 1


def test_scale_beyond_the_grant_is_refused(api: Api, vision_objects: VisionObjects) -> None:
    body = assert_error(
        api("alice").post(
            f"/api/v1/serving-deployments/{vision_objects.deployment.pk}/scale/",
            {"replicas": 3},
            format="json",
        ),
        400,
        "invalid",
    )
    assert "does not fit grant" in body["fields"]["replicas"][0]


def test_revoked_grant_takes_no_new_deployments(api: Api, vision_objects: VisionObjects, world) -> None:
    services.grant_revoke(grant=vision_objects.grant, actor=world.admin, reason="budget")
    body = assert_error(deploy(api("alice"), vision_objects.grant.pk), 409, "grant_not_active")
    assert "revoked" in body["message"]


def test_other_teams_cannot_touch_deployments(api: Api, vision_objects: VisionObjects) -> None:
    dep = vision_objects.deployment.pk
    body = assert_error(deploy(api("carol"), vision_objects.grant.pk), 400, "invalid")
    assert list(body["fields"]) == ["grant"]
    assert_error(
        api("carol").post(f"/api/v1/serving-deployments/{dep}/scale/", {"replicas": 0}, format="json"),
        404,
        "not_found",
    )
    assert_error(api("carol").delete(f"/api/v1/serving-deployments/{dep}/"), 404, "not_found")
    assert_error(api("auditor").delete(f"/api/v1/serving-deployments/{dep}/"), 403, "read_only_user")
    vision_objects.deployment.refresh_from_db()
    assert vision_objects.deployment.deleted_at is None and vision_objects.deployment.replicas == 1
