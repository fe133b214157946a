"""Bulk decisions: approve or reject many capacity requests at once, with the rules of single ones.

The same checks as `capacity_request_approve` / `capacity_request_reject` (quotas.policies says who
may decide each request at its stage: never one's own, the two-person rule; the window; for final
approvals the cluster pre-flight and the capacity rules: headroom, the batch cap, the per-team
maximum), and the same audit rows, one decision at a time. What is shared is done once:

- the pre-flight (`pools.services.pool_preflight_refusal`) runs once per pool per batch, before any
  lock, as for a single approval;
- each pool's decisions run in one transaction that holds the pool's row lock, so its capacity is
  read once and then counted up in memory as requests are granted, instead of re-read per request;
- the grants of a pool are queued for the reconciler together (`grants_provision`, in chunks).

Partial success is the normal case: every request gets its own result. Every rule is checked before
a request's first write (`_check_one`, then `_apply_one`, which refuses nothing), so a refused request
has written nothing and the others of its pool stand; a database error aborts the pool's whole
transaction. The audit rows of a pool's decisions are inserted together, in its transaction. Locks
are taken in a fixed order (pools by id, then requests by id), so two bulk decisions never deadlock
each other.
"""

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from pools.models import NodePool, PoolClass
from pools.services import pool_preflight_refusal
from portal.models import User
from portal.querysets import locked
from portal.services import inserts_batched
from quotas import policies, rules
from quotas.models import ApprovalDecision, CapacityRequest
from quotas.selectors import pool_capacity_bulk
from quotas.services.common import decision_record, queue_grants_provision
from quotas.services.requests import _approve_final, _check_window, capacity_refusal
from quotas.states import RequestState

S = RequestState
APPROVE, REJECT = ApprovalDecision.Decision.APPROVE, ApprovalDecision.Decision.REJECT
# One call decides at most this many requests: a page of the inbox is 50; automation may send more,
# but one batch holds its pools' row locks while it runs.
MAX_BATCH = 500


@dataclass(frozen=True)
class DecisionResult:
    """What happened to one request of a batch: `outcome` is approved (granted), lead_approved (now
    awaiting a platform admin), rejected, or refused with `error` (PermissionDenied or
    ValidationError, as the single decision would have raised it)."""

    request_id: int
    outcome: str
    error: Exception | None = None
    grant_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _validate(*, decision: str, comment: str, request_ids: Sequence[int]) -> list[int]:
    errors: dict[str, list[str]] = {}
    if decision not in (APPROVE, REJECT):
        errors["decision"] = [f"Choose {APPROVE} or {REJECT}, not {decision!r}."]
    if decision == REJECT and not comment.strip():
        errors["comment"] = ["Say why the requests are rejected; each requester reads it."]
    ids = list(request_ids)
    if not ids:
        errors["requests"] = ["Name at least one request."]
    elif len(ids) > MAX_BATCH:
        errors["requests"] = [f"At most {MAX_BATCH} requests per batch; {len(ids)} were named."]
    elif len(set(ids)) != len(ids):
        repeated = sorted({pk for pk in ids if ids.count(pk) > 1})
        errors["requests"] = [f"Each request once: {', '.join(f'#{pk}' for pk in repeated)} repeated."]
    if errors:
        raise ValidationError(errors)
    return ids


def _preflight(pool_id: int) -> str | None:
    """The pool's pre-flight refusal (settings.PORTAL_PREFLIGHT), as a single final approval runs it."""
    if not settings.PORTAL_PREFLIGHT:
        return None
    pool = NodePool.objects.select_related("cluster", "accelerator").get(pk=pool_id)
    return pool_preflight_refusal(pool=pool)


class _PoolLedger:
    """A pool's capacity figures under its row lock, counted up as the batch grants its requests."""

    def __init__(self, pool: NodePool, team_ids: set[int]) -> None:
        self.pool = pool
        figures = pool_capacity_bulk(pairs=[(pool, team_id) for team_id in sorted(team_ids)])
        any_team = next(iter(figures.values()))
        self.granted = any_team.granted
        self.batch_granted = any_team.batch_granted
        self.team_granted = {team_id: figures[(pool.pk, team_id)].team_granted for team_id in team_ids}
        self.base = any_team

    def figures(self, team_id: int) -> rules.PoolCapacity:
        return dataclasses.replace(
            self.base,
            granted=self.granted,
            batch_granted=self.batch_granted,
            team_granted=self.team_granted[team_id],
        )

    def take(self, req: CapacityRequest) -> None:
        self.granted += req.gpus
        if req.pool_class == PoolClass.BATCH:
            self.batch_granted += req.gpus
        self.team_granted[req.team_id] += req.gpus


def _check_one(
    req: CapacityRequest,
    *,
    actor: User,
    decision: str,
    preflight: dict[int | None, str | None],
    ledger: "_PoolLedger | None",
    own_lead_decisions: set[int],
) -> str:
    """Every rule of capacity_request_approve / _reject for one row-locked request, before anything is
    written: the stage the actor decides, or PermissionDenied / ValidationError saying why not."""
    stage = policies.decision_stage(
        user=actor, capacity_request=req, made_lead_decision=req.pk in own_lead_decisions
    )
    if decision == REJECT:
        return stage
    _check_window(req)
    if stage == ApprovalDecision.Stage.LEAD:
        return stage
    if req.pool_id not in preflight:
        # Moved to the platform stage after the batch looked (another lead approved it meanwhile):
        # its pool's pre-flight had not been needed yet. Still once per pool.
        preflight[req.pool_id] = _preflight(req.pool_id)
    if preflight[req.pool_id]:
        raise ValidationError(preflight[req.pool_id], code="preflight")
    assert ledger is not None  # a pool of final approvals is locked before its requests
    refusal = capacity_refusal(req, pool=ledger.pool, figures=ledger.figures(req.team_id))
    if refusal:
        raise ValidationError(refusal, code="capacity")
    return stage


def _apply_one(
    req: CapacityRequest,
    *,
    actor: User,
    decision: str,
    stage: str,
    comment: str,
    ledger: "_PoolLedger | None",
) -> DecisionResult:
    """The writes of a decision _check_one allowed: they refuse nothing, so a request is never left
    half-decided (a database error aborts the pool's whole transaction)."""
    if decision == REJECT:
        decision_record(
            req,
            actor=actor,
            stage=stage,
            decision=REJECT,
            comment=comment,
            to=S.REJECTED,
            action="capacity_request.rejected",
        )
        return DecisionResult(req.pk, "rejected")
    if stage == ApprovalDecision.Stage.LEAD:
        decision_record(
            req,
            actor=actor,
            stage=stage,
            decision=APPROVE,
            comment=comment,
            to=S.PENDING_PLATFORM,
            action="capacity_request.lead_approved",
        )
        return DecisionResult(req.pk, "lead_approved")
    assert ledger is not None
    grant = _approve_final(req, actor=actor, stage=stage, comment=comment, queue=False)
    ledger.take(req)
    return DecisionResult(req.pk, "approved", grant_id=grant.pk)


def _decide_pool(
    pool_id: int | None,
    ids: list[int],
    *,
    actor: User,
    decision: str,
    comment: str,
    preflight: dict[int | None, str | None],
) -> list[DecisionResult]:
    """Every request of one pool in one transaction, the pool row locked for final approvals."""
    results: list[DecisionResult] = []
    granted: list[int] = []
    with transaction.atomic(), inserts_batched():
        requests = list(
            locked(
                CapacityRequest.objects.select_related(
                    "team", "pool__cluster", "pool__accelerator", "accelerator"
                )
            )
            .filter(pk__in=ids)
            .order_by("pk")
        )
        ledger = None
        finals = decision == APPROVE and any(r.state == S.PENDING_PLATFORM for r in requests)
        if finals and pool_id is not None:
            pool = locked(NodePool.objects.select_related("cluster")).get(pk=pool_id)
            ledger = _PoolLedger(pool, {r.team_id for r in requests})
        # The two-person rule's lookup, once for the batch instead of once per request.
        own_lead_decisions = set(
            ApprovalDecision.objects.filter(
                request_id__in=ids, stage=ApprovalDecision.Stage.LEAD, approver=actor
            ).values_list("request_id", flat=True)
        )
        for req in requests:
            try:
                stage = _check_one(
                    req,
                    actor=actor,
                    decision=decision,
                    preflight=preflight,
                    ledger=ledger,
                    own_lead_decisions=own_lead_decisions,
                )
            except (PermissionDenied, ValidationError) as exc:
                results.append(DecisionResult(req.pk, "refused", error=exc))
                continue
            result = _apply_one(
                req, actor=actor, decision=decision, stage=stage, comment=comment, ledger=ledger
            )
            if result.grant_id is not None:
                granted.append(result.grant_id)
            results.append(result)
        found = {r.pk for r in requests}
        results += [
            DecisionResult(pk, "refused", error=CapacityRequest.DoesNotExist(f"No request #{pk}."))
            for pk in ids
            if pk not in found
        ]
        queue_grants_provision(granted)
    return results


def capacity_requests_decide(
    *, actor: User, request_ids: Sequence[int], decision: str, comment: str = ""
) -> list[DecisionResult]:
    """Approve or reject each of `request_ids` (read by the caller through a scoped selector) with one
    comment; one result per request, in the order given. Raises ValidationError only for a batch that
    is malformed as a whole (unknown decision, no comment on a rejection, empty, too big, repeats)."""
    ids = _validate(decision=decision, comment=comment, request_ids=request_ids)
    by_pool: dict[int | None, list[int]] = defaultdict(list)
    needs_preflight: set[int] = set()
    for pk, pool_id, state in CapacityRequest.objects.filter(pk__in=ids).values_list(
        "pk", "pool_id", "state"
    ):
        by_pool[pool_id].append(pk)
        if decision == APPROVE and state == S.PENDING_PLATFORM and pool_id is not None:
            needs_preflight.add(pool_id)
    # Before any lock, as for a single approval: the pre-flight may read the cluster.
    preflight: dict[int | None, str | None] = {
        pool_id: _preflight(pool_id) for pool_id in sorted(needs_preflight)
    }
    results: dict[int, DecisionResult] = {}
    known = {pk for pks in by_pool.values() for pk in pks}
    for pk in ids:
        if pk not in known:
            results[pk] = DecisionResult(
                pk, "refused", error=CapacityRequest.DoesNotExist(f"No request #{pk}.")
            )
    # Pools in id order (requests without a pool last): the lock order every bulk decision shares.
    for pool_id in sorted(by_pool, key=lambda p: (p is None, p or 0)):
        for result in _decide_pool(
            pool_id,
            sorted(by_pool[pool_id]),
            actor=actor,
            decision=decision,
            comment=comment,
            preflight=preflight,
        ):
            results[result.request_id] = result
    return [results[pk] for pk in ids]
