"""Reconcile of many new grants of one cluster in one pass: what a bulk approval queues.

Level-based like `grant_reconcile`, and each grant ends with its own conditions, observed generation,
state move and audit rows, exactly as a single reconcile records them. What the pass shares:

- the cluster-wide objects (PriorityClasses, the contract and injection policies and their
  bindings) once;
- the grants' objects applied concurrently (namespaces first, then what lives in them), as
  `kubectl apply -f DIR` would apply a directory of them, but several requests in flight;
- the quota controller's report read for every grant in the same polling rounds;
- enforcement proven by one dry-run probe per pass instead of one per grant. The policy reads each
  namespace's contract from its own annotations through one binding that selects grant namespaces
  by label (pools.manifests.grant_contract_binding), and the apiserver learns namespaces in
  resourceVersion order: a probe refused in the namespace written last proves the binding is loaded
  and every earlier namespace of the pass is known to admission. Each grant's PolicyBound condition
  also checks its own live namespace: the binding's labels and the contract annotations in place.
  The injection policy is proven the same way, by one dry-run GPU pod in that namespace.

Only the common case goes this way (`ELIGIBLE`): the first apply of an active grant that admits
through ResourceQuota (a queued grant's Kueue objects are the single reconcile's). A grant being
resynced (compare for drift), ended, or with its namespace deleted, and any grant the cluster answered
with an error, goes through `grant_reconcile` on its own, with its retries.

Every approval, single or bulk, queues `grants_provision`: its pass claims the grants it was given
and, up to RECONCILE_CHUNK, the other approved grants of the cluster still waiting for their first
apply. So approvals arriving one after another while the workers are busy share passes as a bulk
decision's grants do, and cost about what a bulk pass costs. The claim is the approved ->
provisioning move itself, made under row locks that skip what another claim holds: no grant is
applied by two passes, and a task whose grant another pass took has nothing left to do.
"""

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db import transaction
from django.db.models import BooleanField, Case, ExpressionWrapper, F, Q, QuerySet, Value, When

from pools.kube import ops
from pools.kube.errors import KubeError
from pools.kube.objects import Label, managed_labels
from pools.manifests import POLICY_NAME
from pools.models import AdmissionMode, Cluster
from pools.services import cluster_policy_objects
from portal.services import inserts_batched
from quotas import manifests, services
from quotas.models import CapacityRequest, Grant
from quotas.reconcile.base import (
    POLL_SECONDS,
    Applied,
    Condition,
    converge_cluster_wide,
    forget_cluster_wide,
    grant_contract,
    shared_objects_of,
    title,
)
from quotas.reconcile.grants import (
    ENFORCEMENT_FIRST_POLL_SECONDS,
    ENFORCEMENT_WAIT_SECONDS,
    _injection_condition,
    _injection_gap,
    _policy_condition,
    _policy_refusal,
    _quota_condition,
    _quota_observed,
    _record_grant,
)
from quotas.services.common import RECONCILE_CHUNK
from quotas.states import HOLDING_STATES, RequestState

log = logging.getLogger(__name__)

BULK_TIMING = (
    "bulk reconcile on %s: %d grants, applied in %.3f s, enforcement proven in %.3f s, recorded in %.3f s"
)

# Requests in flight against one apiserver: enough to overlap its work with ours on two cores,
# few enough not to crowd out everyone else (the client's connection pool holds 10 per cluster).
CONCURRENCY = 8

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Item:
    grant: Grant
    generation: int
    contract: manifests.GrantContract
    applied: list[Applied] = field(default_factory=list)
    quota: dict[str, Any] = field(default_factory=dict)
    error: KubeError | None = None


def _each(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: list[T]) -> list[R | KubeError]:
    """fn over items concurrently; a cluster error is returned in the item's place, not raised."""

    def guarded(item: T) -> R | KubeError:
        try:
            return fn(item)
        except KubeError as exc:
            return exc

    return list(pool.map(guarded, items))


# What a pass may take: a generation not yet applied, of a grant that holds its GPUs (its contract
# is active) and admits through ResourceQuota (a queued grant's Kueue objects and its Queued condition
# are the single reconcile's), on an enabled cluster, its namespace not deleted.
ELIGIBLE = Q(
    pool__cluster__enabled=True,
    namespace_deleted_at__isnull=True,
    observed_generation__lt=F("generation"),
    admission=AdmissionMode.QUOTA,
    request__state__in=HOLDING_STATES,
)


def _with_eligibility(grants: QuerySet[Grant]) -> QuerySet[Grant]:
    return grants.annotate(eligible=ExpressionWrapper(ELIGIBLE, output_field=BooleanField()))


def _with_cluster(grants: QuerySet[Grant]) -> QuerySet[Grant]:
    return grants.select_related("request", "team", "pool__cluster", "pool__accelerator")


def _bound(contract: manifests.GrantContract, namespace: dict[str, Any]) -> bool:
    """The live namespace is selected by the one binding and carries this grant's contract."""
    meta = namespace.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    wanted = manifests.namespace(contract)["metadata"]
    selected = all(labels.get(k) == v for k, v in managed_labels().items()) and Label.GRANT in labels
    return selected and all(annotations.get(k) == v for k, v in wanted["annotations"].items())


def _apply_pass(cluster: Cluster, items: list[_Item], pool: ThreadPoolExecutor) -> None:
    cluster_objects = cluster_policy_objects(cluster)
    needs = [shared_objects_of(item.contract, cluster_objects) for item in items]
    shared = {title(m): m for needed in needs for m in needed}
    by_title = {
        title(a.manifest): a for a in converge_cluster_wide(cluster, list(shared.values()), compare=False)
    }
    for item, needed in zip(items, needs, strict=True):
        item.applied = [by_title[title(m)] for m in needed]
    # Namespaces first: what lives in them can only be applied once they exist.
    objects = [(item, manifests.grant_objects(item.contract)) for item in items]
    for step in (lambda objs: objs[:1], lambda objs: objs[1:]):
        work = [(item, m) for item, objs in objects if item.error is None for m in step(objs)]
        for (item, manifest), live in zip(
            work, _each(pool, lambda pair: ops.apply(cluster, pair[1]), work), strict=True
        ):
            if isinstance(live, KubeError):
                item.error = item.error or live
            else:
                item.applied.append(Applied(manifest, None, live, []))


def _live(item: _Item, kind: str) -> dict[str, Any]:
    return next(a.live for a in item.applied if a.manifest["kind"] == kind)


def _namespace_version(item: _Item) -> int:
    """The resourceVersion of the grant's namespace as the apply left it: the latest one written."""
    return int((_live(item, "Namespace").get("metadata") or {}).get("resourceVersion") or 0)


def _await_enforcement(
    cluster: Cluster, items: list[_Item], pool: ThreadPoolExecutor
) -> tuple[str | None, str | None]:
    """Poll (boundedly) until every grant's quota is reported, and probe the contract policy and
    the injection policy once, in the newest namespace (one binding each selects them all); returns
    the policy's refusal of the probe (None while the apiserver still admits it) and what the
    injection still misses (None once it completes pods)."""

    ok = [item for item in items if item.error is None]
    if not ok:
        return None, "not checked"
    gap: str | None = "not checked yet"
    for item in ok:
        item.quota = _live(item, "ResourceQuota")

    probe = max(ok, key=_namespace_version)
    deadline = time.monotonic() + ENFORCEMENT_WAIT_SECONDS
    refusal = None
    pause = ENFORCEMENT_FIRST_POLL_SECONDS
    while True:
        waiting = [item for item in ok if not _quota_observed(item.contract, item.quota)]

        def read(item: _Item) -> dict[str, Any] | None:
            return ops.get(cluster, "v1", "ResourceQuota", manifests.QUOTA_NAME, item.contract.namespace)

        try:
            # As the single reconcile orders them (grants._await_enforcement): the probes, then the
            # quotas, which the quota controller reports meanwhile.
            if refusal is None:
                refusal = _policy_refusal(cluster, probe.contract)
            if gap is not None:
                gap = _injection_gap(cluster, probe.contract)
        except KubeError as exc:
            probe.error = exc
            return None, gap
        for item, quota in zip(waiting, _each(pool, read, waiting), strict=True):
            if isinstance(quota, dict):
                item.quota = quota
        done = all(_quota_observed(item.contract, item.quota) for item in ok)
        if (done and refusal is not None and gap is None) or time.monotonic() >= deadline:
            return refusal, gap
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _conditions(
    item: _Item, refusal: str | None, gap: str | None, probe_namespace: str
) -> tuple[list[Condition], bool]:
    """The grant's conditions, as `_grant_apply` words them; and whether it must be polled again."""
    contract = item.contract
    quota_condition = _quota_condition(contract, item.quota)
    policy_condition = _policy_condition(contract, _live(item, "ValidatingAdmissionPolicy"), refusal)
    bound = _bound(contract, _live(item, "Namespace"))
    # The injection binding selects namespaces as the contract binding does: bound for one, for both.
    injection_condition = _injection_condition(
        contract, gap if bound else "the namespace lacks the labels or contract annotations the binding reads"
    )
    if policy_condition.status == "True":
        if bound:
            policy_condition = Condition(
                "PolicyBound",
                "True",
                "Enforced",
                f"Policy {POLICY_NAME} applies to namespace {contract.namespace} through its binding (the "
                "namespace carries the binding's labels and the contract annotations); a dry-run pod that "
                f"breaks the contract was refused in {probe_namespace}, applied last in the same pass.",
            )
        else:
            policy_condition = Condition(
                "PolicyBound",
                "False",
                "NotBound",
                f"Namespace {contract.namespace} lacks the labels or contract annotations the binding reads.",
            )
    conditions = [
        Condition(
            "Applied",
            "True",
            "Applied",
            f"{len(item.applied)} objects in place at generation {item.generation}.",
        ),
        quota_condition,
        policy_condition,
        injection_condition,
    ]
    blocking = next((c for c in conditions if c.status != "True"), None)
    if blocking is None:
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
        conditions.append(Condition("Ready", "False", blocking.reason, blocking.message))
    waiting = (
        quota_condition.status != "True"
        or policy_condition.reason == "NotEnforcedYet"
        or injection_condition.reason == "NotInjectedYet"
    )
    return conditions, waiting


@dataclass
class BulkOutcome:
    """What the task does next: batches of grants (one per cluster) to reconcile again together after
    `requeue_after` seconds, and grants to hand to `grant_reconcile` one by one (errors, resyncs,
    ended or queued grants)."""

    again: list[list[int]] = field(default_factory=list)
    requeue_after: float | None = None
    single: list[int] = field(default_factory=list)


def grants_provision(*, grant_ids: list[int]) -> BulkOutcome:
    """Provision grants just approved (one, or a chunk of a bulk decision), each cluster's in one pass
    with the other grants of the cluster that wait for their first apply (see the module docstring).
    A grant already taken (by another pass, or moved on by a reconcile) is left alone; one that cannot
    go in a pass is returned for `grant_reconcile`."""
    outcome = BulkOutcome()
    rows = (
        _with_eligibility(Grant.objects.filter(pk__in=grant_ids))
        .order_by("pk")
        .values_list("pk", "pool__cluster_id", "eligible", "request__state")
    )
    wanted: dict[int, list[int]] = {}
    for pk, cluster_id, eligible, state in rows:
        if state != RequestState.APPROVED:
            continue  # taken: its pass, or its reconcile, records it
        if eligible:
            wanted.setdefault(cluster_id, []).append(pk)
        else:
            outcome.single.append(pk)
    for cluster_id, ids in wanted.items():
        started = time.monotonic()
        claimed = _claim(cluster_id, ids)
        if claimed:
            _reconcile_cluster(claimed[0].pool.cluster, claimed, outcome, started)
    return outcome


def _claim(cluster_id: int, ids: list[int]) -> list[Grant]:
    """Take the grants `ids` of the cluster and, up to RECONCILE_CHUNK, its other approved grants that
    wait for their first apply: each moves approved -> provisioning (audited) in one transaction. Rows
    another transaction holds are skipped (its claim, or a revoke, has them); the grant rows are
    locked with their requests, in the order every state move takes them (grant, then request)."""
    given_first = Case(When(pk__in=ids, then=Value(0)), default=Value(1))
    with transaction.atomic(), inserts_batched():
        grants = list(
            _with_cluster(Grant.objects)
            .select_for_update(skip_locked=True, of=("self", "request"))
            .filter(ELIGIBLE, pool__cluster_id=cluster_id, request__state=RequestState.APPROVED)
            .order_by(given_first, "pk")[: max(len(ids), RECONCILE_CHUNK)]
        )
        # Under the locks each move succeeds; without them (SQLite, `make run`) a concurrent claim may
        # have moved one first, and that one is its claim's.
        return [grant for grant in grants if services.grant_provisioning_start(grant=grant)]


def grants_reconcile(*, grant_ids: list[int]) -> BulkOutcome:
    """Make the clusters of these grants match the database, the eligible ones of a cluster in one
    pass: what a pass queues again for the grants it must poll; the rest are returned for one-by-one
    reconciles."""
    outcome = BulkOutcome()
    grants = list(_with_eligibility(_with_cluster(Grant.objects)).filter(pk__in=grant_ids).order_by("pk"))
    by_cluster: dict[int, list[Grant]] = {}
    for grant in grants:
        if grant.eligible:
            by_cluster.setdefault(grant.pool.cluster_id, []).append(grant)
        else:
            outcome.single.append(grant.pk)
    for batch in by_cluster.values():
        started = time.monotonic()
        # The pass's audit rows go in with one statement per transaction (inserts_batched), as a bulk
        # decision's do: per grant, the state moves and their audit rows are exactly a single reconcile's.
        with transaction.atomic(), inserts_batched():
            for grant in batch:
                services.grant_provisioning_start(grant=grant)
        _reconcile_cluster(batch[0].pool.cluster, batch, outcome, started)
    return outcome


def _reconcile_cluster(cluster: Cluster, grants: list[Grant], outcome: BulkOutcome, started: float) -> None:
    """One pass over grants of `cluster` already moved to provisioning; what follows goes in `outcome`."""
    # Their requests moved (approved -> provisioning) on rows of their own: read the states back at once.
    states = dict(
        CapacityRequest.objects.filter(pk__in=[g.request_id for g in grants]).values_list("pk", "state")
    )
    items = []
    for grant in grants:
        grant.request.state = states[grant.request_id]
        items.append(_Item(grant, grant.generation, grant_contract(grant)))
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix=f"apply-{cluster.name}") as pool:
        try:
            _apply_pass(cluster, items, pool)
        except KubeError as exc:  # the cluster-wide objects: every grant goes one by one, with retries
            forget_cluster_wide(cluster)
            log.info("bulk reconcile on %s: %s; reconciling one by one", cluster.name, exc.message)
            outcome.single += [item.grant.pk for item in items]
            return
        applied = time.monotonic()
        refusal, gap = _await_enforcement(cluster, items, pool)
    proven = time.monotonic()
    probe = max((i for i in items if i.error is None), key=_namespace_version, default=None)
    again: list[int] = []
    with transaction.atomic(), inserts_batched():
        for item in items:
            if item.error is not None:
                # The single reconcile records the cluster's answer and retries with backoff.
                outcome.single.append(item.grant.pk)
                continue
            conditions, waiting = _conditions(item, refusal, gap, probe.contract.namespace if probe else "")
            ready = next(c for c in conditions if c.type == "Ready")

            def succeed(g: Grant, ready: Condition = ready) -> bool:
                return ready.status == "True" and services.grant_provisioning_succeed(
                    grant=g, message=ready.message
                )

            recorded = _record_grant(
                item.grant.pk,
                generation=item.generation,
                conditions=conditions,
                audits=[],
                state_move=succeed,
            )
            if recorded is not None and recorded.generation != item.generation:
                outcome.single.append(item.grant.pk)  # changed while we applied
            elif waiting:
                again.append(item.grant.pk)
    if refusal is None or gap is not None:
        forget_cluster_wide(cluster)  # a policy or a binding may be gone: apply them next time
    # What proving enforcement costs beside applying (make bench reads this line: BULK_TIMING).
    log.info(
        BULK_TIMING,
        cluster.name,
        len(items),
        applied - started,
        proven - applied,
        time.monotonic() - proven,
    )
    if again:
        outcome.again.append(again)
        outcome.requeue_after = POLL_SECONDS
