"""Reconcile of the Kueue side of a grant that queues (docs/queueing.md): the apply of the pool's
flavour and cohort and of the grant's ClusterQueue and LocalQueue, what the cluster says back (the
Queued condition), and Kueue's fail-closed webhook explained when it does not answer.

Called by quotas.reconcile.grants for grants in AdmissionMode.KUEUE only; a ResourceQuota grant never
touches Kueue, so clusters without Kueue see nothing of this.
"""

import time
from typing import Any

from pools.kube import ops
from pools.kube.errors import Invalid, KubeError
from pools.kube.objects import (
    KUEUE_API_VERSION,
    QUEUE_NAME_LABEL,
    condition_of,
    kueue_webhook_failure,
    quota_key,
    same_quantity,
)
from pools.manifests import QUEUE_POLICY_NAME, Manifest
from pools.models import Cluster
from quotas import manifests
from quotas.reconcile.base import Applied, AuditNote, Condition, converge, converge_cluster_wide, title

# Bounded wait, as for the quota and the pod policy: a new ClusterQueue turns Active and a new
# binding is enforced within a second or so; after this the reconcile records "not yet" and polls.
QUEUE_WAIT_SECONDS = 5.0
FIRST_POLL_SECONDS = 0.05


def queue_apply(cluster: Cluster, contract: manifests.GrantContract, *, compare: bool) -> list[Applied]:
    """Apply the Kueue objects: the pool's flavour and cohort like the other shared objects (at most
    once a minute per worker and content), the grant's ClusterQueue and LocalQueue every time.
    With Kueue down its webhook refuses all of them: a TemporaryKubeError the caller explains."""
    flavor, cohort, cluster_queue, local_queue = manifests.queue_objects(contract)
    return [
        *converge_cluster_wide(cluster, [flavor, cohort], compare=compare),
        *converge(cluster, [cluster_queue, local_queue], compare=compare),
    ]


def _job_refusal(cluster: Cluster, contract: manifests.GrantContract, *, queued: bool) -> str | None:
    """The apiserver's refusal of a dry-run probe Job, or None when it admits it."""
    try:
        ops.create(cluster, manifests.queue_probe_job(contract, queued=queued), dry_run=True)
    except Invalid as exc:
        return exc.message
    return None


def _await_queue(
    cluster: Cluster, contract: manifests.GrantContract, live_queue: dict[str, Any]
) -> tuple[dict[str, Any], str | None, str | None]:
    """Wait (boundedly) until the ClusterQueue is Active and the queue contract refuses a Job that
    names no queue; returns the live ClusterQueue, that refusal (None: not enforced yet) and the
    refusal of a Job that does name the LocalQueue (None: Kueue's webhook admitted it).

    Kueue's webhook failing is a TemporaryKubeError (HTTP 500) from the second probe: the caller's."""
    q = contract.queue
    assert q is not None
    deadline = time.monotonic() + QUEUE_WAIT_SECONDS
    pause = FIRST_POLL_SECONDS
    unlabelled = None
    while True:
        if not _active(live_queue):
            live_queue = ops.get(cluster, KUEUE_API_VERSION, "ClusterQueue", q.cluster_queue) or live_queue
        if unlabelled is None:
            refusal = _job_refusal(cluster, contract, queued=False)
            unlabelled = refusal if refusal and QUEUE_POLICY_NAME in refusal else None
        if (_active(live_queue) and unlabelled is not None) or time.monotonic() >= deadline:
            return live_queue, unlabelled, _job_refusal(cluster, contract, queued=True)
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _active(cluster_queue: dict[str, Any]) -> bool:
    condition = condition_of(cluster_queue, "Active")
    return condition is not None and condition.get("status") == "True"


def queue_conditions(
    cluster: Cluster, contract: manifests.GrantContract, applied: dict[str, Applied]
) -> tuple[list[Condition], bool]:
    """The Queued condition (and whether to poll again): the ClusterQueue is Active, a Job without
    the queue label is refused by the queue contract, and one with it passes Kueue's webhook."""
    q = contract.queue
    assert q is not None
    live, unlabelled, labelled = _await_queue(
        cluster, contract, applied[title(manifests.cluster_queue(contract))].live
    )
    where = f"LocalQueue {q.local_queue} of {contract.namespace} (ClusterQueue {q.cluster_queue})"
    if unlabelled is None:
        return [
            Condition(
                "Queued",
                "False",
                "NotEnforcedYet",
                f"The apiserver still admits a Job without {QUEUE_NAME_LABEL} in "
                f"{contract.namespace}; policy {QUEUE_POLICY_NAME} is not in force yet.",
            )
        ], True
    if labelled is not None:
        return [
            Condition(
                "Queued",
                "False",
                "JobRefused",
                f"A dry-run Job naming {where} was refused: {labelled}",
            )
        ], False
    active = condition_of(live, "Active") or {}
    if active.get("status") != "True":
        reason = active.get("reason") or "NotActiveYet"
        message = active.get("message") or "Kueue has not reported on the ClusterQueue yet."
        return [Condition("Queued", "False", reason, f"ClusterQueue {q.cluster_queue}: {message}")], True
    key = quota_key(contract.resource).removeprefix("requests.")
    if not contract.active:
        return [
            Condition(
                "Queued",
                "True",
                "QueueClosed",
                f"ClusterQueue {q.cluster_queue} has no {key} quota any more: Jobs still pending stay "
                "pending (Kueue says why on each Workload), admitted ones run on until they finish.",
            )
        ], False
    borrow = f", may borrow {q.borrow_gpus} more from cohort {q.cohort}" if q.borrow_gpus else ""
    return [
        Condition(
            "Queued",
            "True",
            "QueueActive",
            f"Jobs labelled {QUEUE_NAME_LABEL}={q.local_queue} queue in {where}: "
            f"{q.gpus} {key} nominal{borrow}.",
        )
    ], False


def kueue_unavailable(cluster: Cluster, exc: KubeError) -> list[Condition] | None:
    """Conditions explaining a refusal by Kueue's fail-closed webhook, or None for other errors."""
    if not kueue_webhook_failure(exc.message):
        return None
    message = (
        f"Kueue on cluster {cluster.name} does not answer its admission webhook, and its webhooks fail "
        "closed: until it is back the cluster refuses new Jobs in queued namespaces and changes to "
        "ClusterQueues. Jobs already queued or running are not affected; the portal retries. "
        f"The cluster said: {exc.message}"
    )
    return [
        Condition("Queued", "False", "KueueUnavailable", message),
        Condition("Ready", "False", "KueueUnavailable", message),
    ]


def queue_remove(cluster: Cluster, contract: manifests.GrantContract) -> list[str]:
    """Delete what a deleted namespace leaves behind: the grant's ClusterQueue (cluster-scoped)."""
    assert contract.queue is not None
    manifest: Manifest = manifests.cluster_queue(contract)
    if ops.delete(cluster, manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]):
        return [title(manifest)]
    return []


def _nominal(cluster_queue: dict[str, Any] | None, resource: str) -> str | None:
    for group in ((cluster_queue or {}).get("spec") or {}).get("resourceGroups") or []:
        for flavor in group.get("flavors") or []:
            for entry in flavor.get("resources") or []:
                if entry.get("name") == resource:
                    return str(entry.get("nominalQuota"))
    return None


def queue_quota_removed(contract: manifests.GrantContract, applied: dict[str, Applied]) -> list[AuditNote]:
    """The audit of an ended grant's ClusterQueue losing its GPU quota (once: when it still had some)."""
    q = contract.queue
    assert q is not None
    result = applied[title(manifests.cluster_queue(contract))]
    before = _nominal(result.before, contract.resource)
    if before is None or same_quantity(before, "0"):
        return []
    return [
        AuditNote(
            "grant.queue_quota_removed",
            f"Grant {contract.state}: ClusterQueue {q.cluster_queue} nominal {contract.resource} lowered "
            f"from {before} to 0 (borrowing limit 0); its pending Jobs stay pending.",
            before={contract.resource: before},
            after={contract.resource: "0"},
        )
    ]
