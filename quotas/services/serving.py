"""Serving deployments: model servers inside a grant, within its GPUs, from allowlisted images."""

import re

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from portal.models import User
from portal.querysets import locked
from portal.services import audit_event_record
from quotas import policies
from quotas.models import Grant, ServingDeployment
from quotas.services.common import (
    PROVISIONABLE_STATES,
    desired_state_change,
    live_deployments,
    locked_grant,
    queue_serving_reconcile,
)

IMAGE_REFERENCE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Set by the portal on every model server.
RESERVED_ENV = frozenset({"MODEL_NAME", "HF_HOME"})


MAX_REPLICAS = 64


def _image_errors(image: str) -> list[str]:
    allowlist = settings.PORTAL_PROVISIONING["IMAGE_REGISTRY_ALLOWLIST"]
    if not IMAGE_REFERENCE.match(image):
        return [f"{image!r} is not an image reference like registry.example.com/llm/vllm:v0.6.3."]
    # An entry ends at a path boundary: "registry.example.com" must not admit "registry.example.com.evil".
    prefixes = [entry if entry.endswith("/") else f"{entry}/" for entry in allowlist]
    if not any(image.startswith(prefix) for prefix in prefixes):
        return [f"Images must come from an allowlisted registry: {', '.join(prefixes) or 'none configured'}."]
    last = image.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        return ["Name a tag or a digest (e.g. :v0.6.3): an implicit :latest changes under a running model."]
    return []


def _check_operator(grant: Grant, actor: User) -> None:
    if not policies.can_operate_serving(user=actor, team_id=grant.team_id):
        raise PermissionDenied(f"Only members of team {grant.team.slug} can manage its serving deployments.")


def _gpu_budget_error(
    grant: Grant, *, replicas: int, gpus_per_replica: int, exclude: int | None
) -> str | None:
    others = live_deployments(grant).exclude(pk=exclude)
    used = sum(d.replicas * d.gpus_per_replica for d in others)
    wanted = replicas * gpus_per_replica
    if used + wanted <= grant.gpus:
        return None
    unit = grant.pool.accelerator.resource_name
    return (
        f"{replicas} x {gpus_per_replica} {unit} = {wanted} does not fit grant {grant.namespace}: it holds "
        f"{grant.gpus} and other serving deployments use {used}, so {max(0, grant.gpus - used)} are left."
    )


def _running_grant(grant: Grant) -> Grant:
    return locked_grant(
        grant,
        states=PROVISIONABLE_STATES,
        needed="serving deployments need an approved or active grant",
        code="grant_not_active",
    )


@transaction.atomic
def serving_deployment_create(
    *,
    grant: Grant,
    actor: User,
    name: str,
    model_name: str,
    image: str,
    replicas: int = 1,
    gpus_per_replica: int = 1,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ServingDeployment:
    grant = _running_grant(grant)
    _check_operator(grant, actor)
    name, model_name, image = name.strip(), model_name.strip(), image.strip()
    args, env = list(args or []), dict(env or {})
    errors: dict[str, list[str]] = {}
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?", name):
        errors["name"] = ["Use 1-50 lower-case letters, digits and '-', starting and ending alphanumeric."]
    elif ServingDeployment.objects.filter(grant=grant, name=name).exists():
        errors["name"] = [f"Grant {grant.namespace} already has (or had) a deployment named {name!r}."]
    if not model_name:
        errors["model_name"] = ["Name the model being served."]
    if image_errors := _image_errors(image):
        errors["image"] = image_errors
    if not 1 <= replicas <= MAX_REPLICAS:
        errors["replicas"] = [f"Replicas must be between 1 and {MAX_REPLICAS}."]
    if gpus_per_replica < 1:
        errors["gpus_per_replica"] = ["A model server needs at least one GPU."]
    if not all(isinstance(arg, str) for arg in args):
        errors["args"] = ["Arguments must be strings."]
    bad_env = sorted(k for k, v in env.items() if not ENV_NAME.match(str(k)) or not isinstance(v, str))
    if bad_env:
        errors["env"] = [
            f"Invalid variables (names like MAX_MODEL_LEN, string values): {', '.join(bad_env)}."
        ]
    elif reserved := sorted(RESERVED_ENV & env.keys()):
        errors["env"] = [f"{', '.join(reserved)} are set by the portal."]
    if not errors:
        problem = _gpu_budget_error(grant, replicas=replicas, gpus_per_replica=gpus_per_replica, exclude=None)
        if problem:
            errors["replicas"] = [problem]
    if errors:
        raise ValidationError(errors)
    deployment = ServingDeployment.objects.create(
        grant=grant,
        team=grant.team,
        name=name,
        model_name=model_name,
        image=image,
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        args=args,
        env=env,
        created_by=actor,
    )
    audit_event_record(
        actor=actor,
        action="serving_deployment.created",
        obj=deployment,
        team=grant.team,
        after={
            "image": image,
            "model": model_name,
            "replicas": replicas,
            "gpus_per_replica": gpus_per_replica,
        },
    )
    queue_serving_reconcile(deployment)
    return deployment


@transaction.atomic
def serving_deployment_scale(
    *, deployment: ServingDeployment, actor: User, replicas: int
) -> ServingDeployment:
    deployment = ServingDeployment.objects.select_for_update().get(pk=deployment.pk)
    grant = _running_grant(deployment.grant)
    _check_operator(grant, actor)
    if deployment.deleted_at is not None:
        raise ValidationError(f"Deployment {deployment.name} is deleted.", code="deleted")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ValidationError({"replicas": [f"Replicas must be between 0 and {MAX_REPLICAS}."]})
    problem = _gpu_budget_error(
        grant, replicas=replicas, gpus_per_replica=deployment.gpus_per_replica, exclude=deployment.pk
    )
    if problem:
        raise ValidationError({"replicas": [problem]})
    if replicas == deployment.replicas:
        return deployment
    desired_state_change(
        deployment,
        actor=actor,
        action="serving_deployment.scaled",
        team=deployment.team,
        changes={"replicas": replicas},
    )
    return deployment


@transaction.atomic
def serving_deployment_delete(*, deployment: ServingDeployment, actor: User) -> ServingDeployment:
    deployment = locked(ServingDeployment.objects.select_related("grant__team")).get(pk=deployment.pk)
    _check_operator(deployment.grant, actor)
    if deployment.deleted_at is not None:
        raise ValidationError(f"Deployment {deployment.name} is already deleted.", code="deleted")
    desired_state_change(
        deployment,
        actor=actor,
        action="serving_deployment.deleted",
        team=deployment.team,
        changes={"deleted_at": timezone.now()},
        before={"replicas": deployment.replicas},
        after={},
    )
    return deployment
