import pytest

from quotas.states import TERMINAL_STATES, TRANSITIONS, InvalidTransition, RequestState, check_transition

ALL = list(RequestState)
PAIRS = [(a, b) for a in ALL for b in ALL]


@pytest.mark.parametrize(("current", "target"), [p for p in PAIRS if p[1] in TRANSITIONS[p[0]]])
def test_allowed_transition(current: str, target: str) -> None:
    check_transition(current, target)


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
