"""Reconcile of one grant: its namespace, quota, limits, access and the contract's enforcement."""

import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from pools.kube import ops
from pools.kube.errors import Invalid, PermanentKubeError, TemporaryKubeError
from pools.kube.objects import quota_key
from pools.manifests import INJECTION_POLICY_NAME, POLICY_NAME
from pools.models import Cluster
from portal import statements
from portal.querysets import locked
from quotas import manifests, services
from quotas.models import Grant, ServingDeployment
from quotas.reconcile.base import (
    POLL_SECONDS,
    AuditNote,
    Condition,
    Outcome,
    converge,
    converge_cluster_wide,
    error_conditions,
    forget_cluster_wide,
    grant_contract,
    grant_shared_objects,
    observe,
    same,
    title,
    write_audits,
)
from quotas.reconcile.queues import (
    kueue_unavailable,
    queue_apply,
    queue_conditions,
    queue_quota_removed,
    queue_remove,
)
from quotas.reconcile.serving import serving_deployment_reconcile
from quotas.states import RequestState

log = logging.getLogger(__name__)

# How long a reconcile waits for the quota controller to report a new quota's limits and for the
# apiserver to start enforcing a new policy binding, before it records "not yet" and polls later.
ENFORCEMENT_WAIT_SECONDS = 5.0
# Both usually converge within a few hundred milliseconds: poll quickly at first, then back off.
ENFORCEMENT_FIRST_POLL_SECONDS = 0.02


# --- grants -------------------------------------------------------------------------------------


# A reconcile per grant makes these two reads hot: compiled once per worker process (portal.statements).
def _grant_with_cluster(pk: int) -> QuerySet[Grant]:
    return Grant.objects.select_related("request", "team", "pool__cluster", "pool__accelerator").filter(pk=pk)


def _grant_to_record(pk: int) -> QuerySet[Grant]:
    # The accelerator too: each audit row names the grant, and its name names the accelerator.
    return locked(Grant.objects.select_related("team", "pool__cluster", "pool__accelerator")).filter(pk=pk)


def _load_grant(grant_id: int) -> Grant | None:
    found = statements.bound_instances("grant to reconcile", _grant_with_cluster, pk=grant_id)
    return found[0] if found else None


def _quota_observed(contract: manifests.GrantContract, quota: dict[str, Any]) -> bool:
    hard = ((quota.get("status") or {}).get("hard") or {}).get(quota_key(contract.resource))
    return hard is not None and same(str(contract.quota_gpus), hard)


def _policy_refusal(cluster: Cluster, contract: manifests.GrantContract) -> str | None:
    """The policy's refusal of a dry-run pod that breaks the contract, or None while the apiserver
    still admits it (a new binding takes the apiserver a moment to load)."""
    try:
        ops.create(cluster, manifests.policy_probe_pod(contract), dry_run=True)
    except Invalid as exc:
        return exc.message if POLICY_NAME in exc.message else None
    return None


def _injection_gap(cluster: Cluster, contract: manifests.GrantContract) -> str | None:
    """What the injection policy did not add to a dry-run GPU pod that states nothing of the contract,
    or None once it completes such pods in the namespace."""
    try:
        pod = ops.create(cluster, manifests.injection_probe_pod(contract), dry_run=True)
    except Invalid as exc:
        if "exceeded quota" in exc.message:
            # The quota's admission runs after the contract policy, which therefore admitted the
            # probe: only a completed pod passes it. The quota is simply in use.
            return None
        return exc.message
    missing = manifests.injection_missing(contract, pod)
    return (
        "a GPU pod that states nothing of the contract was admitted without " + ", ".join(missing)
        if missing
        else None
    )


def _await_enforcement(
    cluster: Cluster, contract: manifests.GrantContract, quota: dict[str, Any]
) -> tuple[dict[str, Any], str | None, str | None]:
    """Wait (boundedly) until the quota controller reports the limit just applied, the apiserver
    enforces the policy binding and (for an active grant) injects the contract; returns the live
    quota, the policy's refusal of the probe and what the injection still misses."""
    deadline = time.monotonic() + ENFORCEMENT_WAIT_SECONDS
    refusal = None
    gap = "not checked yet" if contract.active else None
    pause = ENFORCEMENT_FIRST_POLL_SECONDS
    while True:
        # The probes first: while the apiserver answers them, the quota controller reports the new
        # quota, so the read that follows usually finds it reported (read first, it rarely was).
        if refusal is None:
            refusal = _policy_refusal(cluster, contract)
        if gap is not None:
            gap = _injection_gap(cluster, contract)
        if not _quota_observed(contract, quota):
            quota = ops.get(cluster, "v1", "ResourceQuota", manifests.QUOTA_NAME, contract.namespace) or quota
        done = _quota_observed(contract, quota) and refusal is not None and gap is None
        if done or time.monotonic() >= deadline:
            return quota, refusal, gap
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _quota_condition(contract: manifests.GrantContract, quota: dict[str, Any]) -> Condition:
    key = quota_key(contract.resource)
    status = quota.get("status") or {}
    hard, used = (status.get("hard") or {}).get(key), (status.get("used") or {}).get(key, "0")
    if not _quota_observed(contract, quota):
        return Condition(
            "QuotaEnforced",
            "False",
            "QuotaNotObserved",
            f"The quota controller has not reported {key}={contract.quota_gpus} for {contract.namespace} "
            "yet.",
        )
    if contract.active:
        return Condition("QuotaEnforced", "True", "QuotaActive", f"{key}: {used} used of {hard}.")
    running = f"; {used} still held by running pods" if not same("0", used) else ""
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


def _injection_condition(contract: manifests.GrantContract, gap: str | None) -> Condition:
    if not contract.active:
        return Condition(
            "ContractInjected",
            "False",
            "GrantEnded",
            "The grant has ended: GPU pods are refused, so nothing is injected into them.",
        )
    if gap is not None:
        return Condition(
            "ContractInjected",
            "False",
            "NotInjectedYet",
            f"Policy {INJECTION_POLICY_NAME} does not complete GPU pods in {contract.namespace} yet: {gap}",
        )
    return Condition(
        "ContractInjected",
        "True",
        "Injected",
        f"Policy {INJECTION_POLICY_NAME} adds the pool's node selector, the GPU and pool tolerations and "
        f"priority class {contract.priority_class_name} to GPU pods in {contract.namespace} that leave them "
        "out.",
    )


def _grant_apply(cluster: Cluster, grant: Grant, generation: int) -> Outcome:
    contract = grant_contract(grant)
    compare = grant.observed_generation >= generation or not contract.active
    results = [
        *converge_cluster_wide(cluster, grant_shared_objects(cluster, contract), compare=compare),
        *converge(cluster, manifests.grant_objects(contract), compare=compare),
    ]
    if contract.queue is not None:
        # Last: with Kueue down its webhook refuses these, and the namespace and quota are in place.
        results += queue_apply(cluster, contract, compare=compare)
    applied = {title(r.manifest): r for r in results}
    quota_applied = applied[title(manifests.resource_quota(contract))]
    quota, refusal, gap = _await_enforcement(cluster, contract, quota_applied.live)

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
    key = quota_key(contract.resource)
    before_hard = ((quota_applied.before or {}).get("spec") or {}).get("hard") or {}
    if not contract.active and key in before_hard and not same("0", before_hard[key]):
        audits.append(
            AuditNote(
                "grant.quota_removed",
                f"Grant {contract.state}: GPU quota {key} of {contract.namespace} lowered from "
                f"{before_hard[key]} to 0.",
                before={key: str(before_hard[key])},
                after={key: "0"},
            )
        )

    if contract.queue is not None and not contract.active:
        audits += queue_quota_removed(contract, applied)
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
    injection_condition = _injection_condition(contract, gap)
    conditions = [
        Condition(
            "Applied", "True", "Applied", f"{len(results)} objects in place at generation {generation}."
        ),
        quota_condition,
        policy_condition,
        injection_condition,
    ]
    queue_waiting = False
    if contract.queue is not None:
        queued, queue_waiting = queue_conditions(cluster, contract, applied)
        conditions += queued
    blocking = next((c for c in conditions if c.status != "True"), None)
    if not contract.active:
        ended = RequestState(grant.request.state).label.lower()
        queue_note = (
            ""
            if contract.queue is None
            else f" ClusterQueue {contract.queue.cluster_queue} has no GPU quota any more: its pending "
            "Jobs stay pending."
        )
        conditions.append(
            Condition(
                "Ready",
                "False",
                RequestState(grant.request.state).label,
                f"The grant is {ended}: GPU quota set to 0 and {scaled} serving deployment(s) scaled to "
                f"zero; namespace {contract.namespace} is kept until a platform admin deletes it."
                + queue_note,
            )
        )
    elif blocking is None:
        queue = contract.queue
        how = (
            f"may use {contract.gpus} {contract.resource}"
            if queue is None
            else f"queues Jobs through LocalQueue {queue.local_queue} for {contract.gpus} {contract.resource}"
            + (f" (borrowing up to {queue.borrow_gpus} more)" if queue.borrow_gpus else "")
        )
        conditions.append(
            Condition(
                "Ready",
                "True",
                "Provisioned",
                f"Namespace {contract.namespace} {how} on pool "
                f"{contract.pool} with priority class {contract.priority_class_name}.",
            )
        )
    else:
        conditions.append(Condition("Ready", "False", blocking.reason, blocking.message))
    if policy_condition.status != "True" or injection_condition.reason == "NotInjectedYet":
        forget_cluster_wide(cluster)  # a policy or a binding may be gone: apply them next time
    waiting = (
        quota_condition.status != "True"
        or policy_condition.reason == "NotEnforcedYet"
        or injection_condition.reason == "NotInjectedYet"
        or queue_waiting
    )
    return Outcome(conditions, audits, requeue_after=POLL_SECONDS if waiting else None)


def _grant_remove(cluster: Cluster, grant: Grant) -> Outcome:
    """A platform admin deleted the namespace of an ended grant: keep it deleted."""
    contract = grant_contract(grant)
    gone = []
    manifest = manifests.namespace(contract)
    if ops.delete(cluster, manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]):
        gone.append(title(manifest))
    if contract.queue is not None:
        gone += queue_remove(cluster, contract)
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
    found = statements.bound_instances("grant to record", _grant_to_record, pk=grant_id)
    if not found:
        return None
    grant = found[0]
    grant.save(update_fields=observe(grant, conditions, generation=generation))
    write_audits(grant, audits)
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
        forget_cluster_wide(cluster)
        explained = kueue_unavailable(cluster, exc) if grant.queued else None
        _record_grant(
            grant_id,
            generation=None,
            conditions=explained or error_conditions(exc),
            audits=[],
            state_move=None,
        )
        raise
    except PermanentKubeError as exc:
        forget_cluster_wide(cluster)
        message = f"Cluster {cluster.name} refused the grant: {exc.message}"
        _record_grant(
            grant_id,
            generation=None,
            conditions=error_conditions(exc),
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
