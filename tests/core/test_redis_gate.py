"""core/redis_gate.py alone (no I/O, a clock of the test's own): healthy it admits
everyone; tripped it refuses all but one probe at a time, with a doubling, capped
back-off between probes; any answer opens it again at once."""

from __future__ import annotations

import pytest
import redis.exceptions

from core.redis_gate import RedisGate, RedisUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(clock: Clock) -> RedisGate:
    return RedisGate(
        "Redis under test", probe_seconds=3.0, first_backoff=0.5, max_backoff=2.0, clock=clock
    )


def refused(gate: RedisGate, caller: object) -> bool:
    try:
        gate.admit(caller)
    except RedisUnavailable:
        return True
    return False


def test_a_healthy_gate_admits_everyone(gate: RedisGate) -> None:
    assert not gate.down
    assert not any(refused(gate, object()) for _ in range(3))
    gate.answered()  # an answer while healthy changes nothing
    assert not gate.down


def test_a_tripped_gate_refuses_at_once_with_a_redis_connection_error(
    gate: RedisGate, clock: Clock
) -> None:
    gate.failed(object(), TimeoutError("no answer"))
    assert gate.down
    with pytest.raises(redis.exceptions.ConnectionError, match="unavailable"):
        gate.admit(object())
    clock.now += 0.49
    assert refused(gate, object())


def test_one_probe_at_a_time_after_the_backoff(gate: RedisGate, clock: Clock) -> None:
    gate.failed(object(), OSError("refused"))
    clock.now += 0.5
    probe = object()
    assert not refused(gate, probe)
    assert not refused(gate, probe)  # the probe goes on (its connect, then its send)
    assert refused(gate, object())  # the others are told at once meanwhile
    clock.now += 2.9
    assert refused(gate, object())


def test_a_failed_probe_doubles_the_backoff_up_to_the_cap(gate: RedisGate, clock: Clock) -> None:
    gate.failed(object(), OSError("refused"))
    waits = []
    for _ in range(4):
        wait = 0.0
        while refused(gate, probe := object()):
            clock.now += 0.25
            wait += 0.25
        waits.append(wait)
        gate.failed(probe, OSError("refused"))
    assert waits == [0.5, 1.0, 2.0, 2.0]


def test_failures_of_calls_sent_before_the_trip_do_not_extend_the_backoff(
    gate: RedisGate, clock: Clock
) -> None:
    gate.failed(object(), TimeoutError("first"))
    clock.now += 0.4
    for _ in range(10):
        gate.failed(object(), TimeoutError("in flight before the trip"))
    clock.now += 0.1
    assert not refused(gate, object())  # 0.5 s after the trip, as without them


def test_an_answer_opens_the_gate_for_everyone_and_resets_the_backoff(
    gate: RedisGate, clock: Clock
) -> None:
    gate.failed(object(), OSError("refused"))
    for _ in range(3):  # back-off grown to the cap
        clock.now += 5
        probe = object()
        gate.admit(probe)
        gate.failed(probe, OSError("refused"))
    gate.answered()
    assert not gate.down
    assert not any(refused(gate, object()) for _ in range(3))
    gate.failed(object(), OSError("refused again"))
    clock.now += 0.5
    assert not refused(gate, object())  # the first back-off again, not the cap


def test_a_probe_that_never_reports_expires(gate: RedisGate, clock: Clock) -> None:
    gate.failed(object(), OSError("refused"))
    clock.now += 0.5
    gate.admit(object())  # a probe that is cancelled and never says how it went
    clock.now += 2.9
    assert refused(gate, object())
    clock.now += 0.1
    assert not refused(gate, object())  # probe_seconds later, another caller probes
