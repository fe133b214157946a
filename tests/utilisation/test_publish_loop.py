"""The collector's publish loop: changes are published together, at most once every DEBOUNCE seconds."""

import threading
from types import SimpleNamespace

import pytest

from pools.utilisation import watching
from pools.utilisation.watching import DEBOUNCE, publish_loop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


class Stop(threading.Event):
    """Records every pause the loop asks for, without sleeping; set after `rounds` pauses."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.pauses: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(round(timeout or 0.0, 6))
        if len(self.pauses) >= self.rounds:
            self.set()
        return self.is_set()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(watching, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def run(clock: Clock, durations: list[float | Exception]) -> list[float]:
    """Publishes taking `durations` seconds each (or failing), a change always waiting."""
    changed = threading.Event()
    changed.set()
    stop = Stop(len(durations))
    steps = iter(durations)

    def publish() -> None:
        step = next(steps)
        changed.set()  # more changes arrived meanwhile
        if isinstance(step, Exception):
            raise step
        clock.now += step

    publish_loop(what="test", publish=publish, changed=changed, stop=stop, wait=lambda: 5.0)
    return stop.pauses


def test_a_quick_publish_waits_out_the_rest_of_the_debounce(clock):
    assert run(clock, [0.1, 0.2]) == [round(DEBOUNCE - 0.1, 6), round(DEBOUNCE - 0.2, 6)]


def test_a_publish_longer_than_the_debounce_is_followed_at_once(clock):
    assert run(clock, [DEBOUNCE + 0.3, 2.0]) == [0.0, 0.0]


def test_a_failed_publish_waits_the_whole_debounce(clock):
    assert run(clock, [RuntimeError("database down"), 0.1]) == [DEBOUNCE, round(DEBOUNCE - 0.1, 6)]
