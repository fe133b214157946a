"""Level-based reconcile of grants and serving deployments onto their clusters.

Every reconcile reads what the database wants, builds the manifests with the pure builders
(`pools.manifests`, `quotas.manifests`), reads each live object to name any drift, server-side applies
everything with the portal's one field manager, reads back what the cluster says and records it as
status conditions plus the observed generation. Nothing depends on what an earlier run did, so a run
may be repeated, interrupted or duplicated at any point: the next one converges.

Cluster errors: a temporary one (unreachable, throttled, 5xx) is recorded as Ready=False with the
cluster's reason and re-raised for the task to retry with backoff; a permanent one (forbidden, invalid)
is recorded with the apiserver's message and fails the grant until a later resync succeeds.
"""

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from pools import manifests as cluster_manifests
from pools.kube import ops
from pools.kube.errors import Invalid, KubeError, PermanentKubeError, TemporaryKubeError
from pools.kube.ops import parse_quantity
from pools.manifests import CONTRACT_ACTIVE, POLICY_NAME, POOL_LABEL_KEY, Manifest
from pools.models import Cluster, NodePool
from pools.services import cluster_policy_objects
from portal.services import audit_event_record
from quotas import manifests, services
from quotas.models import Grant, ServingDeployment
from quotas.states import HOLDING_STATES, RequestState

log = logging.getLogger(__name__)

# How long a reconcile waits for the quota controller to report a new quota's limits and for the
# apiserver to start enforcing a new policy binding, before it records "not yet" and polls later.
ENFORCEMENT_WAIT_SECONDS = 5.0
# Both usually converge within a few hundred milliseconds: poll quickly at first, then back off.
ENFORCEMENT_FIRST_POLL_SECONDS = 0.05
# Polling interval while something converges on its own (a quota not yet observed, replicas loading).
POLL_SECONDS = 5.0
SWEEP_BATCH = 500


def _cfg() -> dict[str, Any]:
    return settings.PORTAL_PROVISIONING


# --- desired state ------------------------------------------------------------------------------


def _cpu_quantity(cores: Decimal) -> str:
    return str(int(cores)) if cores == cores.to_integral_value() else f"{int(cores * 1000)}m"


def grant_priority_class_name(grant: Grant) -> str:
    """The pool's class for work of the pool's own class; work borrowing a pool (batch on an
    interactive pool) keeps its own, lower class so the pool's owners can preempt it."""
    if grant.request.pool_class == grant.pool.pool_class:
        return grant.pool.priority_class_name
    return cluster_manifests.default_priority_class_name(grant.request.pool_class)


def grant_contract(grant: Grant) -> manifests.GrantContract:
    cfg = _cfg()
    req, pool = grant.request, grant.pool
    accelerator = pool.accelerator
    holding = req.state in HOLDING_STATES
    selector = {str(k): str(v) for k, v in pool.node_selector.items()}
    pool_label_key = POOL_LABEL_KEY if POOL_LABEL_KEY in selector or not selector else sorted(selector)[0]
    return manifests.GrantContract(
        grant_id=grant.pk,
        namespace=grant.namespace,
        team=grant.team.slug,
        group=grant.team.group_name,
        pool_class=req.pool_class,
        pool=pool.name,
        pool_label_key=pool_label_key,
        node_selector=selector,
        accelerator=accelerator.slug,
        accelerator_type=accelerator.type_label,
        product=accelerator.product,
        resource=accelerator.resource_name,
        taint_key=pool.taint_key,
        taint_value=pool.taint_value,
        taint_effect=pool.taint_effect,
        gpu_taint_key=cluster_manifests.GPU_TAINT_KEY,
        priority_class_name=grant_priority_class_name(grant),
        zones=tuple(pool.zones),
        gpus=grant.gpus if holding else 0,
        max_gpus_per_pod=grant.gpus if holding else 0,
        pods=cfg["QUOTA_PODS_BASE"] + grant.gpus,
        cpu=_cpu_quantity(req.cpu) if req.cpu else str(cfg["QUOTA_CPU_PER_GPU"] * grant.gpus),
        memory=f"{req.memory_gib or cfg['QUOTA_MEMORY_GIB_PER_GPU'] * grant.gpus}Gi",
        default_request=dict(cfg["DEFAULT_REQUEST"]),
        default_limit=dict(cfg["DEFAULT_LIMIT"]),
        team_cluster_role=cfg["TEAM_CLUSTER_ROLE"],
        state=CONTRACT_ACTIVE if holding else req.state,
        pod_security=manifests.PodSecurity(**cfg["POD_SECURITY"]),
    )


def serving_spec(deployment: ServingDeployment) -> manifests.ServingSpec:
    cfg = _cfg()
    return manifests.ServingSpec(
        deployment_id=deployment.pk,
        name=deployment.name,
        model_name=deployment.model_name,
        image=deployment.image,
        replicas=deployment.replicas,
        gpus_per_replica=deployment.gpus_per_replica,
        args=tuple(str(a) for a in deployment.args),
        env=tuple(sorted((str(k), str(v)) for k, v in deployment.env.items())),
        cpu_millis_per_gpu=cfg["SERVING_CPU_MILLIS_PER_GPU"],
        memory_gib_per_gpu=cfg["SERVING_MEMORY_GIB_PER_GPU"],
        load_budget_seconds=cfg["MODEL_LOAD_BUDGET_SECONDS"],
        port=cfg["SERVING_PORT"],
        health_path=cfg["SERVING_HEALTH_PATH"],
    )


# --- comparing desired and live objects ---------------------------------------------------------

_QUANTITY = re.compile(r"^[+-]?[0-9.]+[a-zA-Z]{0,2}$")


def _same(desired: Any, live: Any) -> bool:
    if desired == live:
        return True
    if live is None and desired in (False, "", [], {}):
        return True  # the apiserver drops empty and false fields
    if isinstance(desired, str) and isinstance(live, str | int) and _QUANTITY.match(desired):
        try:
            return parse_quantity(desired) == parse_quantity(live)
        except ValueError:
            return False
    return False


def _short(value: Any) -> str:
    text = "missing" if value is None else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def diff(desired: Any, live: Any, path: str = "") -> list[str]:
    """Fields of `desired` that `live` lacks or holds with another value, as "path: live -> desired".

    Only what the portal sets is compared: fields the apiserver or other controllers add are ignored.
    """
    if isinstance(desired, dict):
        live_map = live if isinstance(live, dict) else {}
        changes: list[str] = []
        for key, value in desired.items():
            changes += diff(value, live_map.get(key), f"{path}.{key}" if path else str(key))
        return changes
    if isinstance(desired, list) and isinstance(live, list) and len(desired) == len(live):
        changes = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            changes += diff(want, have, f"{path}[{index}]")
        return changes
    return [] if _same(desired, live) else [f"{path}: {_short(live)} -> {_short(desired)}"]


def _comparable(manifest: Manifest) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = manifest["metadata"]
    body["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return body


def _title(manifest: Manifest) -> str:
    meta = manifest["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{manifest['kind']} {where}{meta['name']}"


@dataclass
class Applied:
    manifest: Manifest
    before: dict[str, Any] | None
    live: dict[str, Any]
    changes: list[str]

    @property
    def drift(self) -> str:
        if self.before is None:
            return f"{_title(self.manifest)} was missing; recreated"
        return f"{_title(self.manifest)}: " + "; ".join(self.changes)


def converge(cluster: Cluster, desired: list[Manifest], *, compare: bool) -> list[Applied]:
    """Server-side apply each manifest in order; with `compare`, read it first and name what differed.

    Reading costs a GET per object, so callers compare only when the answer is used: drift of a
    generation applied before, or what an ended grant still held. A first apply has nothing to compare.
    """
    results = []
    for manifest in desired:
        meta = manifest["metadata"]
        before, changes = None, []
        if compare:
            before = ops.get(
                cluster, manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace")
            )
            changes = ["missing"] if before is None else diff(_comparable(manifest), before)
        # Applied even when nothing differs: dropping a field from the manifest only removes it from
        # the live object through an apply.
        live = ops.apply(cluster, manifest)
        results.append(Applied(manifest, before, live, changes))
    return results


# The cluster-wide objects a grant needs (its PriorityClass, the contract policy and its binding) are
# shared by every grant of the cluster: a worker applies each at most once per this many seconds (per
# cluster and content) rather than once per grant. Their drift is still healed: a compare pass always
# applies them, and so does every inventory sync (pools.services.cluster_policies_apply).
CLUSTER_WIDE_REAPPLY_SECONDS = 60.0
_cluster_wide_applied: dict[tuple[int, str], tuple[float, Applied]] = {}


def converge_cluster_wide(cluster: Cluster, desired: list[Manifest], *, compare: bool) -> list[Applied]:
    results = []
    now = time.monotonic()
    for manifest in desired:
        key = (cluster.pk, json.dumps(manifest, sort_keys=True))
        seen = _cluster_wide_applied.get(key)
        if compare or seen is None or now - seen[0] > CLUSTER_WIDE_REAPPLY_SECONDS:
            (applied,) = converge(cluster, [manifest], compare=compare)
            _cluster_wide_applied[key] = (now, dataclasses.replace(applied, before=None, changes=[]))
            results.append(applied)
        else:
            results.append(seen[1])
    return results


# --- conditions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


def merge_conditions(
    current: list[dict[str, Any]], updates: list[Condition], *, now: datetime, generation: int
) -> list[dict[str, Any]]:
    """Kubernetes condition semantics: lastTransitionTime only moves when the status changes."""
    by_type = {c["type"]: c for c in current}
    for update in updates:
        previous = by_type.get(update.type)
        changed = previous is None or previous.get("status") != update.status
        by_type[update.type] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message[:1000],
            "lastTransitionTime": now.isoformat() if changed else previous["lastTransitionTime"],
            "observedGeneration": generation,
        }
    order = ["Applied", "QuotaEnforced", "PolicyBound", "Ready"]
    return sorted(
        by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 99, c["type"])
    )


def _error_conditions(exc: KubeError) -> list[Condition]:
    reason = exc.reason if exc.reason and exc.reason != "Unknown" else type(exc).__name__
    conditions = [Condition("Ready", "False", reason, exc.message)]
    if not exc.temporary:
        conditions.insert(0, Condition("Applied", "False", reason, exc.message))
    return conditions


@dataclass
class AuditNote:
    action: str
    message: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def _write_audits(obj: Grant | ServingDeployment, audits: list[AuditNote]) -> None:
    """The reconciler's audit rows: no actor, in the caller's transaction with the state they explain."""
    for note in audits:
        audit_event_record(
            actor=None,
            action=note.action,
            obj=obj,
            team=obj.team,
            before=note.before,
            after=note.after,
            message=note.message,
        )


@dataclass
class Outcome:
    conditions: list[Condition]
    audits: list[AuditNote] = field(default_factory=list)
    requeue_after: float | None = None


# --- grants -------------------------------------------------------------------------------------


def _load_grant(grant_id: int) -> Grant | None:
    return (
        Grant.objects.select_related("request", "team", "pool__cluster", "pool__accelerator")
        .filter(pk=grant_id)
        .first()
    )


def _quota_observed(contract: manifests.GrantContract, quota: dict[str, Any]) -> bool:
    hard = ((quota.get("status") or {}).get("hard") or {}).get(manifests.quota_key(contract.resource))
    return hard is not None and _same(str(contract.gpus), hard)


def _policy_refusal(cluster: Cluster, contract: manifests.GrantContract) -> str | None:
    """The policy's refusal of a dry-run pod that breaks the contract, or None while the apiserver
    still admits it (a new binding takes the apiserver a moment to load)."""
    try:
        ops.create(cluster, manifests.policy_probe_pod(contract), dry_run=True)
    except Invalid as exc:
        return exc.message if POLICY_NAME in exc.message else None
    return None


def _await_enforcement(
    cluster: Cluster, contract: manifests.GrantContract, quota: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """Wait (boundedly) until the quota controller reports the limit just applied and the apiserver
    enforces the policy binding; returns the live quota and the policy's refusal of the probe."""
    deadline = time.monotonic() + ENFORCEMENT_WAIT_SECONDS
    refusal = None
    pause = ENFORCEMENT_FIRST_POLL_SECONDS
    while True:
        if not _quota_observed(contract, quota):
            quota = ops.get(cluster, "v1", "ResourceQuota", manifests.QUOTA_NAME, contract.namespace) or quota
        if refusal is None:
            refusal = _policy_refusal(cluster, contract)
        if (_quota_observed(contract, quota) and refusal is not None) or time.monotonic() >= deadline:
            return quota, refusal
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _quota_condition(contract: manifests.GrantContract, quota: dict[str, Any]) -> Condition:
    key = manifests.quota_key(contract.resource)
    status = quota.get("status") or {}
    hard, used = (status.get("hard") or {}).get(key), (status.get("used") or {}).get(key, "0")
    if not _quota_observed(contract, quota):
        return Condition(
            "QuotaEnforced",
            "False",
            "QuotaNotObserved",
            f"The quota controller has not reported {key}={contract.gpus} for {contract.namespace} yet.",
        )
    if contract.active:
        return Condition("QuotaEnforced", "True", "QuotaActive", f"{key}: {used} used of {hard}.")
    running = f"; {used} still held by running pods" if not _same("0", used) else ""
    return Condition("QuotaEnforced", "True", "QuotaRemoved", f"{key}: limit 0{running}.")


def _policy_condition(
    contract: manifests.GrantContract, policy: dict[str, Any], refusal: str | None
) -> Condition:
    warnings = ((policy.get("status") or {}).get("typeChecking") or {}).get("expressionWarnings") or []
    if warnings:
        first = warnings[0]
        return Condition(
            "PolicyBound",
            "False",
            "TypeCheckWarnings",
            f"Policy {POLICY_NAME}: {first.get('fieldRef', '')}: {first.get('warning', '')}",
        )
    if refusal is None:
        return Condition(
            "PolicyBound",
            "False",
            "NotEnforcedYet",
            f"The apiserver still admits a pod that breaks the contract in {contract.namespace}.",
        )
    return Condition(
        "PolicyBound",
        "True",
        "Enforced",
        f"Policy {POLICY_NAME} applies to namespace {contract.namespace} through its binding and refuses "
        "a dry-run pod that breaks the contract.",
    )


def _grant_apply(cluster: Cluster, grant: Grant, generation: int) -> Outcome:
    contract = grant_contract(grant)
    priority = next(
        m
        for m in cluster_policy_objects(cluster)
        if m["kind"] == "PriorityClass" and m["metadata"]["name"] == contract.priority_class_name
    )
    shared = [priority, cluster_manifests.grant_contract_policy(), cluster_manifests.grant_contract_binding()]
    compare = grant.observed_generation >= generation or not contract.active
    results = [
        *converge_cluster_wide(cluster, shared, compare=compare),
        *converge(cluster, manifests.grant_objects(contract), compare=compare),
    ]
    applied = {_title(r.manifest): r for r in results}
    quota_applied = applied[_title(manifests.resource_quota(contract))]
    quota, refusal = _await_enforcement(cluster, contract, quota_applied.live)

    audits = []
    if grant.observed_generation >= generation:
        drifted = [r.drift for r in results if r.changes]
        if drifted:
            audits.append(
                AuditNote(
                    "grant.drift_corrected",
                    "Restored the portal's state: " + " | ".join(drifted),
                    before={"drift": drifted},
                )
            )
    key = manifests.quota_key(contract.resource)
    before_hard = ((quota_applied.before or {}).get("spec") or {}).get("hard") or {}
    if not contract.active and key in before_hard and not _same("0", before_hard[key]):
        audits.append(
            AuditNote(
                "grant.quota_removed",
                f"Grant {contract.state}: GPU quota {key} of {contract.namespace} lowered from "
                f"{before_hard[key]} to 0.",
                before={key: str(before_hard[key])},
                after={key: "0"},
            )
        )

    scaled = 0
    if not contract.active:
        # Inline rather than queued: the grant only reports Ready=False/Revoked once they are at zero.
        for deployment_id in grant.deployments.filter(deleted_at__isnull=True).values_list("pk", flat=True):
            serving_deployment_reconcile(deployment_id=deployment_id)
            scaled += 1

    quota_condition = _quota_condition(contract, quota)
    policy_condition = _policy_condition(
        contract, applied[f"ValidatingAdmissionPolicy {POLICY_NAME}"].live, refusal
    )
    conditions = [
        Condition(
            "Applied", "True", "Applied", f"{len(results)} objects applied at generation {generation}."
        ),
        quota_condition,
        policy_condition,
    ]
    if not contract.active:
        ended = RequestState(grant.request.state).label.lower()
        conditions.append(
            Condition(
                "Ready",
                "False",
                RequestState(grant.request.state).label,
                f"The grant is {ended}: GPU quota set to 0 and {scaled} serving deployment(s) scaled to "
                f"zero; namespace {contract.namespace} is kept until a platform admin deletes it.",
            )
        )
    elif quota_condition.status == "True" and policy_condition.status == "True":
        conditions.append(
            Condition(
                "Ready",
                "True",
                "Provisioned",
                f"Namespace {contract.namespace} may use {contract.gpus} {contract.resource} on pool "
                f"{contract.pool} with priority class {contract.priority_class_name}.",
            )
        )
    else:
        blocking = quota_condition if quota_condition.status != "True" else policy_condition
        conditions.append(Condition("Ready", "False", blocking.reason, blocking.message))
    waiting = quota_condition.status != "True" or policy_condition.reason == "NotEnforcedYet"
    return Outcome(conditions, audits, requeue_after=POLL_SECONDS if waiting else None)


def _grant_remove(cluster: Cluster, grant: Grant) -> Outcome:
    """A platform admin deleted the namespace of an ended grant: keep it (and its binding) deleted."""
    contract = grant_contract(grant)
    gone = []
    manifest = manifests.namespace(contract)
    if ops.delete(cluster, manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]):
        gone.append(_title(manifest))
    ServingDeployment.objects.filter(grant=grant, deleted_at__isnull=True).update(
        deleted_at=timezone.now(), ready_replicas=0
    )
    audits = (
        [AuditNote("grant.namespace_removed", "Deleted from the cluster: " + ", ".join(gone))] if gone else []
    )
    message = f"Namespace {grant.namespace} was deleted on a platform admin's request."
    return Outcome(
        [
            Condition("Applied", "True", "NamespaceDeleted", message),
            Condition("Ready", "False", "NamespaceDeleted", message),
        ],
        audits,
    )


@transaction.atomic
def _record_grant(
    grant_id: int,
    *,
    generation: int | None,
    conditions: list[Condition],
    audits: list[AuditNote],
    state_move: Callable[[Grant], bool] | None,
) -> Grant | None:
    grant = (
        Grant.objects.select_for_update().select_related("team", "pool__cluster").filter(pk=grant_id).first()
    )
    if grant is None:
        return None
    now = timezone.now()
    grant.conditions = merge_conditions(
        grant.conditions, conditions, now=now, generation=generation or grant.observed_generation
    )
    grant.reconciled_at = now
    if generation is not None and generation > grant.observed_generation:
        grant.observed_generation = generation
    grant.save(update_fields=["conditions", "reconciled_at", "observed_generation"])
    _write_audits(grant, audits)
    if state_move is not None:
        state_move(grant)
    return grant


def grant_reconcile(*, grant_id: int) -> float | None:
    """Make the grant's cluster match the database. Returns seconds after which to run again, or None.

    Raises TemporaryKubeError (after recording it) so that the task retries with backoff.
    """
    grant = _load_grant(grant_id)
    if grant is None:
        log.info("grant %s no longer exists; nothing to reconcile", grant_id)
        return None
    generation = grant.generation
    cluster = grant.pool.cluster
    if not cluster.enabled:
        _record_grant(
            grant_id,
            generation=None,
            conditions=[
                Condition("Ready", "False", "ClusterDisabled", f"Cluster {cluster.name} is disabled.")
            ],
            audits=[],
            state_move=None,
        )
        return None
    services.grant_provisioning_start(grant=grant)
    grant.request.refresh_from_db(fields=["state"])
    try:
        if grant.namespace_deleted_at is not None:
            outcome = _grant_remove(cluster, grant)
        else:
            outcome = _grant_apply(cluster, grant, generation)
    except TemporaryKubeError as exc:
        _record_grant(
            grant_id, generation=None, conditions=_error_conditions(exc), audits=[], state_move=None
        )
        raise
    except PermanentKubeError as exc:
        message = f"Cluster {cluster.name} refused the grant: {exc.message}"
        _record_grant(
            grant_id,
            generation=None,
            conditions=_error_conditions(exc),
            audits=[],
            state_move=lambda g: services.grant_provisioning_fail(grant=g, message=message),
        )
        return None

    ready = next((c for c in outcome.conditions if c.type == "Ready"), None)

    def succeed(g: Grant) -> bool:
        if ready is None or ready.status != "True":
            return False
        return services.grant_provisioning_succeed(grant=g, message=ready.message)

    recorded = _record_grant(
        grant_id,
        generation=generation,
        conditions=outcome.conditions,
        audits=outcome.audits,
        state_move=succeed,
    )
    if recorded is not None and recorded.generation != generation:
        return 0.0  # changed while we applied: what we applied may be stale already
    return outcome.requeue_after


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
    selector = f"{manifests.Label.DEPLOYMENT}={deployment.pk}"
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
    # Checked first: the Deployment controller gives up after the load budget without progress,
    # whatever the cause, and so does the polling.
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return ServingStatus(
            ready,
            Condition(
                "Ready",
                "False",
                "LoadBudgetExceeded",
                f"{ready}/{wanted} replicas Ready after the {_cfg()['MODEL_LOAD_BUDGET_SECONDS']}s "
                f"model-load budget: {progressing.get('message', '')}",
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
    deployment = (
        ServingDeployment.objects.select_for_update().select_related("team").filter(pk=deployment_id).first()
    )
    if deployment is None:
        return None
    now = timezone.now()
    deployment.conditions = merge_conditions(
        deployment.conditions, conditions, now=now, generation=generation or deployment.observed_generation
    )
    deployment.reconciled_at = now
    fields = ["conditions", "reconciled_at", "observed_generation"]
    if generation is not None and generation > deployment.observed_generation:
        deployment.observed_generation = generation
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
    _write_audits(deployment, audits)
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
            budget = timedelta(seconds=_cfg()["MODEL_LOAD_BUDGET_SECONDS"])
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
        _record_deployment(deployment_id, generation=None, conditions=_error_conditions(exc), audits=[])
        raise
    except PermanentKubeError as exc:
        _record_deployment(deployment_id, generation=None, conditions=_error_conditions(exc), audits=[])
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


# --- pre-flight at approval ---------------------------------------------------------------------


def _node_ready(node: dict[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _names(nodes: list[dict[str, Any]], limit: int = 5) -> str:
    names = sorted(n["metadata"]["name"] for n in nodes)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pool_preflight_refusal(*, pool: NodePool) -> str | None:
    """Why work granted on `pool` could not run on its cluster now, or None.

    The seed's failure mode "node selectors that match no node group": the pool's selector must
    match Ready nodes, every one of them must carry the pool's taint (or other workloads could land
    there), and they must advertise the accelerator's resource.
    """
    cluster = pool.cluster
    selector = ",".join(f"{k}={v}" for k, v in sorted(pool.node_selector.items()))
    if not selector:
        return f"Pool {pool} has no node selector, so its workloads could land on any node."
    try:
        nodes = ops.list_objects(cluster, "v1", "Node", label_selector=selector)
    except KubeError as exc:
        return f"Cannot check pool {pool} on cluster {cluster.name}: {exc.message}"
    if not nodes:
        return (
            f"Pool {pool}: no node of cluster {cluster.name} matches its selector {selector}, so "
            "granted workloads would stay Pending. Fix the pool's node selector or add nodes first."
        )
    ready = [n for n in nodes if _node_ready(n)]
    if not ready:
        return f"Pool {pool}: none of the {len(nodes)} nodes matching {selector} is Ready and schedulable."
    taint = pool.taint

    def tainted(node: dict[str, Any]) -> bool:
        return any(
            t.get("key") == taint["key"]
            and (t.get("value") or "") == taint["value"]
            and t.get("effect") == taint["effect"]
            for t in (node.get("spec") or {}).get("taints") or []
        )

    untainted = [n for n in ready if not tainted(n)]
    if untainted:
        return (
            f"Pool {pool}: Ready nodes {_names(untainted)} lack the pool taint "
            f"{taint['key']}={taint['value']}:{taint['effect']}, so any workload could land on them. "
            "Taint them before granting the pool."
        )
    resource = pool.accelerator.resource_name
    if not any(
        not _same("0", ((n.get("status") or {}).get("allocatable") or {}).get(resource, "0")) for n in ready
    ):
        return f"Pool {pool}: no Ready node advertises {resource}; is the device plugin running?"
    return None


# --- the sweeper --------------------------------------------------------------------------------


def reconcile_due(*, now: datetime | None = None) -> tuple[list[int], list[int]]:
    """Grants and serving deployments to reconcile now: those whose observed generation lags (their
    task was lost, or failed past its retries) and those due for the periodic drift resync."""
    now = now or timezone.now()
    cfg = _cfg()
    grace = now - timedelta(seconds=cfg["SWEEP_SECONDS"])
    stale = now - timedelta(seconds=cfg["RESYNC_SECONDS"])
    lagging = Q(observed_generation__lt=F("generation")) & (
        Q(reconciled_at__isnull=True) | Q(reconciled_at__lt=grace)
    )
    never = Q(reconciled_at__isnull=True)
    grants = (
        Grant.objects.filter(pool__cluster__enabled=True)
        .filter(lagging | ((Q(reconciled_at__lt=stale) | never) & Q(namespace_deleted_at__isnull=True)))
        .order_by(F("reconciled_at").asc(nulls_first=True))
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    loading = Q(
        deleted_at__isnull=True,
        ready_at__isnull=True,
        replicas__gt=0,
        created_at__gt=now - timedelta(seconds=cfg["MODEL_LOAD_BUDGET_SECONDS"]),
        reconciled_at__lt=grace,
    )
    deployments = (
        ServingDeployment.objects.filter(grant__pool__cluster__enabled=True)
        .filter(lagging | loading | ((Q(reconciled_at__lt=stale) | never) & Q(deleted_at__isnull=True)))
        .order_by(F("reconciled_at").asc(nulls_first=True))
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    return list(grants), list(deployments)
