"""Circuit breaker state machine and the panic threshold."""

from __future__ import annotations

from logdist.delivery.breaker import BreakerPolicy, BreakerState, CircuitBreaker, ejection_budget


def test_opens_after_consecutive_failures_and_successes_reset_the_count() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive=3, min_samples=100))
    breaker.failure(0, "x")
    breaker.failure(0, "x")
    breaker.success()
    assert not breaker.failure(0, "x") and breaker.state == BreakerState.CLOSED
    breaker.failure(0, "x")
    assert breaker.failure(0, "x") is True
    assert breaker.state == BreakerState.OPEN and not breaker.allows(0.5)


def test_opens_on_failure_rate_over_the_window() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive=100, rate=0.5, window=10, min_samples=10))
    for _ in range(4):
        breaker.success()
        assert not breaker.failure(0, "flaky")
    breaker.success()
    assert breaker.failure(0, "flaky") is True
    assert breaker.state == BreakerState.OPEN  # 5 of the last 10 failed


def test_half_open_after_ejection_closes_on_probe_successes_and_reopens_longer_on_failure() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive=1, base_ejection_s=1.0, max_ejection_s=2.5, probes=2))
    breaker.failure(10.0, "down")
    assert not breaker.allows(10.9)
    assert breaker.allows(11.0) and breaker.state == BreakerState.HALF_OPEN
    breaker.failure(11.0, "still down")
    assert breaker.state == BreakerState.OPEN and breaker.ejections == 2 and breaker.ejection_s == 2.0
    assert not breaker.allows(12.9) and breaker.allows(13.0)
    breaker.success()
    assert breaker.state == BreakerState.HALF_OPEN
    breaker.success()
    assert breaker.state == BreakerState.CLOSED
    for _ in range(5):
        breaker.failure(20.0, "again")
    assert breaker.ejection_s == 2.5, "capped"


def test_panic_threshold_never_ejects_everything() -> None:
    assert ejection_budget(4, 0.5) == 2
    assert ejection_budget(1, 1.0) == 0
    assert ejection_budget(3, 1.0) == 2
    assert ejection_budget(0, 0.5) == 0
