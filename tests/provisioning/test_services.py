"""The provisioning services' rules, on the database only (the cluster side is in the other modules)."""

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from portal.models import AuditEvent
from quotas import services
from quotas.models import Grant, ServingDeployment
from quotas.reconcile import reconcile_due
from quotas.states import RequestState
from tests import factories
from tests.conftest import World

IMAGE = "registry.example.com/llm/vllm:v0.6.3"


@pytest.fixture
def grant(world: World) -> Grant:
    req = factories.request(world.alice, world.vision, world.a100, gpus=4)
    services.capacity_request_approve(capacity_request=req, actor=world.bob)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    return Grant.objects.get(request=req)


def create(grant: Grant, actor, **fields) -> ServingDeployment:
    values = {
        "name": "chat",
        "model_name": "llama-3-8b",
        "image": IMAGE,
        "replicas": 2,
        "gpus_per_replica": 1,
    }
    values.update(fields)
    return services.serving_deployment_create(grant=grant, actor=actor, **values)


def test_member_creates_a_serving_deployment_and_it_is_audited(world: World, grant: Grant) -> None:
    deployment = create(grant, world.alice, env={"MAX_MODEL_LEN": "8192"}, args=["--dtype", "bf16"])
    assert deployment.team == world.vision
    assert deployment.generation == 1
    assert deployment.env == {"MAX_MODEL_LEN": "8192"}
    event = AuditEvent.objects.get(action="serving_deployment.created", object_id=str(deployment.pk))
    assert event.actor == world.alice
    assert event.after["image"] == IMAGE


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("docker.io/library/nginx:1.27", "allowlisted registry"),
        ("registry.example.com.evil.io/llm/vllm:v1", "allowlisted registry"),
        ("registry.example.com/other/vllm:v1", "allowlisted registry"),
        ("registry.example.com/llm/vllm", "tag or a digest"),
        ("registry.example.com/llm/../x:v1", "not an image reference"),
        ("Registry.example.com/llm/vllm:v1", "not an image reference"),
    ],
)
def test_images_come_only_from_the_allowlist(world: World, grant: Grant, image: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        create(grant, world.alice, image=image)
    assert message in " ".join(exc.value.message_dict["image"])


def test_allowlist_is_configurable(world: World, grant: Grant, settings) -> None:
    settings.PORTAL_PROVISIONING = {
        **settings.PORTAL_PROVISIONING,
        "IMAGE_REGISTRY_ALLOWLIST": ["ghcr.io/acme"],
    }
    assert create(grant, world.alice, image="ghcr.io/acme/vllm:v1").image == "ghcr.io/acme/vllm:v1"
    with pytest.raises(ValidationError):
        create(grant, world.alice, name="other", image=IMAGE)


def test_deployments_cannot_hold_more_gpus_than_the_grant(world: World, grant: Grant) -> None:
    create(grant, world.alice, replicas=3)
    with pytest.raises(ValidationError) as exc:
        create(grant, world.alice, name="second", replicas=2)
    assert "so 1 are left" in exc.value.message_dict["replicas"][0]
    deployment = ServingDeployment.objects.get(name="chat")
    with pytest.raises(ValidationError):
        services.serving_deployment_scale(deployment=deployment, actor=world.alice, replicas=5)
    scaled = services.serving_deployment_scale(deployment=deployment, actor=world.alice, replicas=4)
    assert (scaled.replicas, scaled.generation) == (4, 2)


def test_input_errors_are_reported_per_field(world: World, grant: Grant) -> None:
    with pytest.raises(ValidationError) as exc:
        create(
            grant, world.alice, name="Bad_Name", model_name=" ", replicas=0, env={"HF_HOME": "/x", "1X": "y"}
        )
    errors = exc.value.message_dict
    assert set(errors) == {"name", "model_name", "replicas", "env"}


def test_only_team_members_and_admins_manage_deployments(world: World, grant: Grant) -> None:
    with pytest.raises(PermissionDenied):
        create(grant, world.carol)
    deployment = create(grant, world.admin)
    with pytest.raises(PermissionDenied):
        services.serving_deployment_delete(deployment=deployment, actor=world.carol)
    deleted = services.serving_deployment_delete(deployment=deployment, actor=world.alice)
    assert deleted.deleted_at is not None
    assert deleted.generation == 2


def test_ended_grant_takes_no_new_deployments(world: World, grant: Grant) -> None:
    services.grant_revoke(grant=grant, actor=world.admin, reason="project cancelled")
    with pytest.raises(ValidationError) as exc:
        create(grant, world.alice)
    assert "revoked" in str(exc.value)


def test_namespace_delete_needs_an_admin_and_an_ended_grant(world: World, grant: Grant) -> None:
    with pytest.raises(PermissionDenied):
        services.grant_namespace_delete(grant=grant, actor=world.bob)
    with pytest.raises(ValidationError, match="revoke it or let it expire"):
        services.grant_namespace_delete(grant=grant, actor=world.admin)
    services.grant_revoke(grant=grant, actor=world.admin, reason="done")
    generation = Grant.objects.get(pk=grant.pk).generation
    deleted = services.grant_namespace_delete(grant=grant, actor=world.admin)
    assert deleted.namespace_deleted_at is not None
    assert deleted.generation == generation + 1
    with pytest.raises(ValidationError, match="already deleted"):
        services.grant_namespace_delete(grant=grant, actor=world.admin)


def test_reconciler_state_moves(world: World, grant: Grant) -> None:
    assert services.grant_provisioning_start(grant=grant)
    assert not services.grant_provisioning_start(grant=grant)  # only from approved
    assert services.grant_provisioning_fail(grant=grant, message="Forbidden: no RBAC")
    assert not services.grant_provisioning_fail(grant=grant, message="again")
    assert services.grant_provisioning_succeed(grant=grant, message="provisioned")
    assert not services.grant_provisioning_succeed(grant=grant, message="again")
    grant.request.refresh_from_db()
    assert grant.request.state == RequestState.ACTIVE
    actions = list(
        AuditEvent.objects.filter(object_id=str(grant.pk), object_type="quotas.grant")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["grant.created", "grant.provisioning", "grant.failed", "grant.active"]


def test_sweeper_picks_lagging_and_stale_work_only(world: World, grant: Grant, settings) -> None:
    settings.PORTAL_PROVISIONING = {
        **settings.PORTAL_PROVISIONING,
        "SWEEP_SECONDS": 30,
        "RESYNC_SECONDS": 300,
    }
    now = timezone.now()
    Grant.objects.filter(pk=grant.pk).update(observed_generation=1, reconciled_at=now)
    deployment = create(grant, world.alice)
    ServingDeployment.objects.filter(pk=deployment.pk).update(
        observed_generation=1, reconciled_at=now, ready_at=now
    )
    assert reconcile_due(now=now) == ([], [])  # current and freshly resynced

    assert reconcile_due(now=now + timedelta(seconds=301)) == ([grant.pk], [deployment.pk])  # resync due

    services.grant_revoke(grant=grant, actor=world.admin, reason="done")  # generation 2, observed 1
    assert reconcile_due(now=now + timedelta(seconds=10)) == ([], [])  # its own task may still be running
    assert reconcile_due(now=now + timedelta(seconds=31))[0] == [grant.pk]  # lost: the sweeper takes over

    grant.pool.cluster.enabled = False
    grant.pool.cluster.save()
    assert reconcile_due(now=now + timedelta(seconds=301)) == ([], [])  # disabled clusters are left alone
