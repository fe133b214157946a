"""Reconcile of one serving deployment: the Deployment that carries its grant's scheduling contract,
and what its pods say about scheduling and model load time."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from pools.kube import ops
from pools.kube.errors import PermanentKubeError, TemporaryKubeError
from pools.kube.objects import SIMULATED_LOAD_ANNOTATION, Label
from pools.models import Cluster
from portal.querysets import locked
from quotas import manifests
from quotas.models import ServingDeployment
from quotas.reconcile.base import (
    POLL_SECONDS,
    AuditNote,
    Condition,
    converge,
    error_conditions,
    grant_contract,
    observe,
    provisioning_settings,
    serving_spec,
    write_audits,
)

log = logging.getLogger(__name__)


# --- serving deployments ------------------------------------------------------------------------


def _load_deployment(deployment_id: int) -> ServingDeployment | None:
    return (
        ServingDeployment.objects.select_related(
            "team", "grant__request", "grant__team", "grant__pool__cluster", "grant__pool__accelerator"
        )
        .filter(pk=deployment_id)
        .first()
    )


def _timestamp(value: str | None) -> datetime | None:
    return parse_datetime(value) if value else None


def _pod_ready_at(pod: dict[str, Any]) -> datetime | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return _timestamp(condition.get("lastTransitionTime"))
    return None


def _scheduling_problem(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return f"Pod {pod['metadata']['name']}: {condition.get('message') or condition.get('reason')}"
    return None


def _startup_restarts(pods: list[dict[str, Any]]) -> tuple[str, int]:
    """The pod whose server was restarted most while loading (name, restarts), or ("", 0): a load
    that outlasts the startup probe's budget ends that way."""
    worst = ("", 0)
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            restarts = int(status.get("restartCount") or 0)
            terminated = (status.get("lastState") or {}).get("terminated")
            if restarts > worst[1] and terminated and not status.get("ready"):
                worst = (pod["metadata"]["name"], restarts)
    return worst


def _load_needed(live: dict[str, Any]) -> str:
    """What loading the model takes, when the cluster says so (the testbed's simulated load)."""
    template = ((live.get("spec") or {}).get("template") or {}).get("metadata") or {}
    value = (template.get("annotations") or {}).get(SIMULATED_LOAD_ANNOTATION)
    return f"the model needs {value}s to load (simulated)" if value else ""


@dataclass
class ServingStatus:
    ready_replicas: int
    condition: Condition
    ready_at: datetime | None = None
    load_seconds: float | None = None
    requeue_after: float | None = None


def _serving_status(
    cluster: Cluster, deployment: ServingDeployment, contract: manifests.GrantContract, live: dict[str, Any]
) -> ServingStatus:
    spec, status, meta = live.get("spec") or {}, live.get("status") or {}, live["metadata"]
    wanted = int(spec.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    if wanted == 0:
        reason = "GrantEnded" if not contract.active else "ScaledToZero"
        why = f"the grant is {contract.state}" if not contract.active else "scaled to zero"
        return ServingStatus(0, Condition("Ready", "False", reason, f"No replicas: {why}."))
    current = (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) == wanted
        and int(status.get("replicas") or 0) == wanted
    )
    selector = f"{Label.DEPLOYMENT}={deployment.pk}"
    if current and ready == wanted:
        result = ServingStatus(
            ready, Condition("Ready", "True", "AllReplicasReady", f"{ready}/{wanted} replicas Ready.")
        )
        if deployment.ready_at is None:
            # The seed's model load time: from the Deployment's creation until its last replica is
            # Ready, both by the cluster's clock.
            pods = ops.list_objects(
                cluster, "v1", "Pod", namespace=contract.namespace, label_selector=selector
            )
            times = [t for t in (_pod_ready_at(p) for p in pods) if t is not None]
            created = _timestamp(meta.get("creationTimestamp"))
            if times and created:
                result.ready_at = max(times)
                result.load_seconds = max(0.0, (result.ready_at - created).total_seconds())
        return result
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing")
    budget = provisioning_settings()["MODEL_LOAD_BUDGET_SECONDS"]
    needed = _load_needed(live)
    # Checked first: the Deployment controller gives up after the load budget without progress,
    # whatever the cause, and so does the polling.
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return ServingStatus(
            ready,
            Condition(
                "Ready",
                "False",
                "LoadBudgetExceeded",
                f"{ready}/{wanted} replicas Ready after the {budget}s model-load budget"
                + (f", but {needed}" if needed else "")
                + f": {progressing.get('message', '')}",
            ),
        )
    failure = conditions.get("ReplicaFailure")
    if failure and failure.get("status") == "True":
        return ServingStatus(
            ready,
            Condition(
                "Ready", "False", failure.get("reason") or "FailedCreate", failure.get("message") or ""
            ),
            requeue_after=POLL_SECONDS,
        )
    pods = ops.list_objects(cluster, "v1", "Pod", namespace=contract.namespace, label_selector=selector)
    # The seed's failure mode "model loading takes longer than the SLO": the startup probe gave up
    # on the load after the budget and restarted the server (which will only start loading again).
    pod, restarts = _startup_restarts(pods)
    if restarts:
        took = f"{needed}" if needed else "it was still not Ready"
        return ServingStatus(
            ready,
            Condition(
                "Ready",
                "False",
                "LoadBudgetExceeded",
                f"Model load exceeds its {budget}s budget: {took}, so the startup probe restarted the "
                f"server of pod {pod} {restarts} time(s) after {budget}s of loading. "
                f"{ready}/{wanted} replicas Ready. Raise PORTAL_MODEL_LOAD_BUDGET_SECONDS or load faster.",
            ),
            requeue_after=POLL_SECONDS,
        )
    problem = _scheduling_problem(pods)
    if problem:
        return ServingStatus(
            ready, Condition("Ready", "False", "Unschedulable", problem), requeue_after=POLL_SECONDS
        )
    return ServingStatus(
        ready,
        Condition("Ready", "False", "Loading", f"{ready}/{wanted} replicas Ready."),
        requeue_after=POLL_SECONDS,
    )


@transaction.atomic
def _record_deployment(
    deployment_id: int,
    *,
    generation: int | None,
    conditions: list[Condition],
    audits: list[AuditNote],
    status: ServingStatus | None = None,
) -> ServingDeployment | None:
    deployment = locked(ServingDeployment.objects.select_related("team")).filter(pk=deployment_id).first()
    if deployment is None:
        return None
    fields = observe(deployment, conditions, generation=generation)
    if status is not None:
        deployment.ready_replicas = status.ready_replicas
        fields.append("ready_replicas")
        if status.ready_at is not None and deployment.ready_at is None:
            deployment.ready_at, deployment.load_seconds = status.ready_at, status.load_seconds
            fields += ["ready_at", "load_seconds"]
            audits = [
                *audits,
                AuditNote(
                    "serving_deployment.ready",
                    f"All {status.ready_replicas} replicas Ready; "
                    f"model load time {status.load_seconds:.0f}s.",
                    after={"load_seconds": status.load_seconds},
                ),
            ]
    deployment.save(update_fields=fields)
    write_audits(deployment, audits)
    return deployment


def serving_deployment_reconcile(*, deployment_id: int) -> float | None:
    """Make a serving deployment's Deployment match the database; returns seconds to poll again or None."""
    deployment = _load_deployment(deployment_id)
    if deployment is None:
        log.info("serving deployment %s no longer exists; nothing to reconcile", deployment_id)
        return None
    generation = deployment.generation
    grant = deployment.grant
    cluster = grant.pool.cluster
    try:
        if deployment.deleted_at is not None or grant.namespace_deleted_at is not None:
            ops.delete(cluster, "apps/v1", "Deployment", deployment.name, grant.namespace)
            _record_deployment(
                deployment_id,
                generation=generation,
                conditions=[Condition("Ready", "False", "Deleted", "The deployment is deleted.")],
                audits=[],
                status=ServingStatus(0, Condition("Ready", "False", "Deleted", "")),
            )
            return None
        if grant.observed_generation == 0:
            _record_deployment(
                deployment_id,
                generation=None,
                conditions=[
                    Condition(
                        "Ready",
                        "False",
                        "WaitingForGrant",
                        f"Grant {grant.namespace} is not provisioned yet.",
                    )
                ],
                audits=[],
            )
            budget = timedelta(seconds=provisioning_settings()["MODEL_LOAD_BUDGET_SECONDS"])
            # Past the budget the sweeper keeps trying at its own pace: the deployment's generation lags.
            return POLL_SECONDS if timezone.now() - deployment.created_at < budget else None
        contract = grant_contract(grant)
        (result,) = converge(
            cluster,
            [manifests.serving_deployment(contract, serving_spec(deployment))],
            compare=deployment.observed_generation >= generation or not contract.active,
        )
        status = _serving_status(cluster, deployment, contract, result.live)
    except TemporaryKubeError as exc:
        _record_deployment(deployment_id, generation=None, conditions=error_conditions(exc), audits=[])
        raise
    except PermanentKubeError as exc:
        _record_deployment(deployment_id, generation=None, conditions=error_conditions(exc), audits=[])
        return None

    audits = []
    live_before = int(((result.before or {}).get("spec") or {}).get("replicas") or 0)
    if not contract.active and live_before > 0:
        audits.append(
            AuditNote(
                "serving_deployment.scaled_to_zero",
                f"Grant {grant.namespace} is {contract.state}: "
                f"{deployment.name} scaled from {live_before} to 0.",
                before={"replicas": live_before},
                after={"replicas": 0},
            )
        )
    elif deployment.observed_generation >= generation and result.changes:
        audits.append(
            AuditNote(
                "serving_deployment.drift_corrected",
                "Restored the portal's state: " + result.drift,
                before={"drift": result.changes},
            )
        )
    conditions = [
        Condition("Applied", "True", "Applied", f"Deployment applied at generation {generation}."),
        status.condition,
    ]
    _record_deployment(
        deployment_id, generation=generation, conditions=conditions, audits=audits, status=status
    )
    return status.requeue_after
