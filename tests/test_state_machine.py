from collections.abc import Callable
from datetime import timedelta

import pytest

from portal.models import AuditEvent
from quotas import services
from quotas.models import CapacityRequest, Grant
from quotas.states import TERMINAL_STATES, TRANSITIONS, InvalidTransition, RequestState, check_transition
from tests import factories
from tests.conftest import World

S = RequestState
ALL = list(RequestState)
PAIRS = [(a, b) for a in ALL for b in ALL]


# --- every allowed transition is one a service performs -------------------------------------------


def _draft(w: World) -> CapacityRequest:
    return factories.request(w.alice, w.vision, w.a100, gpus=2, submit=False)


def _approved(w: World) -> CapacityRequest:
    req = factories.request(w.bob, w.vision, w.a100, gpus=2)
    return services.capacity_request_approve(capacity_request=req, actor=w.admin)


def _provisioning(w: World) -> CapacityRequest:
    req = _approved(w)
    assert services.grant_provisioning_start(grant=req.grant)
    return req


def _active(w: World) -> CapacityRequest:
    req = _provisioning(w)
    assert services.grant_provisioning_succeed(grant=req.grant, message="ready")
    return req


def _failed(w: World) -> CapacityRequest:
    req = _provisioning(w)
    assert services.grant_provisioning_fail(grant=req.grant, message="refused")
    return req


SETUP: dict[str, Callable[[World], CapacityRequest]] = {
    S.DRAFT: _draft,
    S.PENDING_LEAD: lambda w: factories.request(w.alice, w.vision, w.a100, gpus=2),
    S.PENDING_PLATFORM: lambda w: factories.request(w.bob, w.vision, w.a100, gpus=2),
    S.APPROVED: _approved,
    S.PROVISIONING: _provisioning,
    S.ACTIVE: _active,
    S.FAILED: _failed,
}


def _auto_approved_draft(w: World) -> CapacityRequest:
    return factories.experiment(w.alice, w.vision, w.mig, gpus=2, days=1, submit=False)


def _expire(req: CapacityRequest, w: World) -> None:
    services.grants_expire_due(now=req.ends_at + timedelta(seconds=1))


def _revoke(req: CapacityRequest, w: World) -> None:
    services.grant_revoke(grant=Grant.objects.get(request=req), actor=w.admin, reason="done")


def _succeed(req: CapacityRequest, w: World) -> None:
    assert services.grant_provisioning_succeed(grant=Grant.objects.get(request=req), message="ready")


def _fail(req: CapacityRequest, w: World) -> None:
    assert services.grant_provisioning_fail(grant=Grant.objects.get(request=req), message="refused")


Drive = Callable[[CapacityRequest, World], object]
# (from, to) -> the service call that makes the move; the request comes from SETUP[from], except
# where the pair names its own (the auto-approved draft).
DRIVERS: dict[tuple[str, str], Drive | tuple[Callable[[World], CapacityRequest], Drive]] = {
    (S.DRAFT, S.PENDING_LEAD): lambda r, w: services.capacity_request_submit(
        capacity_request=r, actor=w.alice
    ),
    (S.DRAFT, S.PENDING_PLATFORM): (
        lambda w: factories.request(w.bob, w.vision, w.a100, gpus=2, submit=False),
        lambda r, w: services.capacity_request_submit(capacity_request=r, actor=w.bob),
    ),
    (S.DRAFT, S.APPROVED): (
        _auto_approved_draft,
        lambda r, w: services.capacity_request_submit(capacity_request=r, actor=w.alice),
    ),
    (S.DRAFT, S.CANCELLED): lambda r, w: services.capacity_request_cancel(capacity_request=r, actor=w.alice),
    (S.PENDING_LEAD, S.PENDING_PLATFORM): lambda r, w: services.capacity_request_approve(
        capacity_request=r, actor=w.bob
    ),
    (S.PENDING_LEAD, S.REJECTED): lambda r, w: services.capacity_request_reject(
        capacity_request=r, actor=w.bob, comment="no"
    ),
    (S.PENDING_LEAD, S.CANCELLED): lambda r, w: services.capacity_request_cancel(
        capacity_request=r, actor=w.alice
    ),
    (S.PENDING_LEAD, S.EXPIRED): _expire,
    (S.PENDING_PLATFORM, S.APPROVED): lambda r, w: services.capacity_request_approve(
        capacity_request=r, actor=w.admin
    ),
    (S.PENDING_PLATFORM, S.REJECTED): lambda r, w: services.capacity_request_reject(
        capacity_request=r, actor=w.admin, comment="no"
    ),
    (S.PENDING_PLATFORM, S.CANCELLED): lambda r, w: services.capacity_request_cancel(
        capacity_request=r, actor=w.bob
    ),
    (S.PENDING_PLATFORM, S.EXPIRED): _expire,
    (S.APPROVED, S.PROVISIONING): lambda r, w: services.grant_provisioning_start(grant=r.grant),
    (S.APPROVED, S.ACTIVE): _succeed,
    (S.APPROVED, S.FAILED): _fail,
    (S.APPROVED, S.REVOKED): _revoke,
    (S.APPROVED, S.EXPIRED): _expire,
    (S.PROVISIONING, S.ACTIVE): _succeed,
    (S.PROVISIONING, S.FAILED): _fail,
    (S.PROVISIONING, S.REVOKED): _revoke,
    (S.PROVISIONING, S.EXPIRED): _expire,
    (S.ACTIVE, S.FAILED): _fail,
    (S.ACTIVE, S.REVOKED): _revoke,
    (S.ACTIVE, S.EXPIRED): _expire,
    (S.FAILED, S.ACTIVE): _succeed,
    (S.FAILED, S.REVOKED): _revoke,
    (S.FAILED, S.EXPIRED): _expire,
}


def test_every_allowed_transition_has_a_service_that_performs_it() -> None:
    allowed = {(current, target) for current, targets in TRANSITIONS.items() for target in targets}
    assert allowed == set(DRIVERS)


@pytest.mark.parametrize(("current", "target"), sorted(DRIVERS))
def test_service_performs_transition(world: World, current: str, target: str) -> None:
    driver = DRIVERS[(current, target)]
    setup, drive = driver if isinstance(driver, tuple) else (SETUP[current], driver)
    req = setup(world)
    req.refresh_from_db()
    assert req.state == current
    drive(req, world)
    req.refresh_from_db()
    assert req.state == target
    # Every move is audited with the state before and after it.
    moves = AuditEvent.objects.filter(before__state=current, after__state=target)
    subjects = [req, *Grant.objects.filter(request=req)]
    assert any(
        moves.filter(object_type=obj._meta.label_lower, object_id=str(obj.pk)).exists() for obj in subjects
    )


@pytest.mark.parametrize(("current", "target"), [p for p in PAIRS if p[1] not in TRANSITIONS[p[0]]])
def test_refused_transition_names_both_states(current: str, target: str) -> None:
    with pytest.raises(InvalidTransition) as exc:
        check_transition(current, target)
    message = exc.value.messages[0]
    assert RequestState(current).label.lower() in message
    assert RequestState(target).label.lower() in message
    assert exc.value.code == "invalid_transition"


def test_terminal_states_are_final() -> None:
    assert {
        RequestState.REJECTED,
        RequestState.CANCELLED,
        RequestState.EXPIRED,
        RequestState.REVOKED,
    } == TERMINAL_STATES


def test_every_state_is_reachable_from_draft() -> None:
    seen, frontier = {RequestState.DRAFT}, [RequestState.DRAFT]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(RequestState)
