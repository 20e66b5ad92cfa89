"""The pool's scaling decision: hysteresis, cooldown and bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logdist.pool.cli import backlog_of
from logdist.pool.scaler import ScalePolicy, Scaler

POLICY = ScalePolicy(min_size=1, max_size=3, up_backlog=100, down_backlog=10, up_readings=2, down_readings=3,
                     cooldown_s=5)  # fmt: skip


def run(readings: list[tuple[float, float]], size: int = 1, policy: ScalePolicy = POLICY) -> list[int]:
    scaler = Scaler(policy, size)
    return [scaler.observe(backlog, now).delta for now, backlog in readings]


@pytest.mark.parametrize(
    ("readings", "size", "expected"),
    [
        # two consecutive readings above the threshold: +1
        ([(0, 500), (1, 500)], 1, [0, 1]),
        # not consecutive: nothing
        ([(0, 500), (1, 50), (2, 500), (3, 50)], 1, [0, 0, 0, 0]),
        # exactly at the threshold is not above it
        ([(0, 100), (1, 100), (2, 100)], 1, [0, 0, 0]),
        # inside the hysteresis band: never changes
        ([(t, 50) for t in range(20)], 2, [0] * 20),
        # cooldown: the second +1 waits 5 s after the first
        ([(0, 500), (1, 500), (2, 500), (3, 500), (5, 500), (6, 500)], 1, [0, 1, 0, 0, 0, 1]),
        # at the maximum: no more
        ([(t * 10, 500) for t in range(4)], 3, [0, 0, 0, 0]),
        # three readings below: -1; readings keep counting in the cooldown; -1 again once it is over; min reached
        ([(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (6, 0), (7, 0), (8, 0), (20, 0)], 3, [0, 0, -1, 0, 0, 0, -1, 0, 0]),
        # at the minimum: no less
        ([(t, 0) for t in range(10)], 1, [0] * 10),
        # below the minimum (a child died): +1 at once, whatever the backlog
        ([(0, 0)], 0, [1]),
    ],
)
def test_decision_table(readings: list[tuple[float, float]], size: int, expected: list[int]) -> None:
    assert run(readings, size) == expected


def test_counters_reset_after_a_change() -> None:
    scaler = Scaler(ScalePolicy(1, 5, 100, 10, 2, 2, cooldown_s=0), 1)
    assert [scaler.observe(500, t).delta for t in range(4)] == [0, 1, 0, 1]
    assert scaler.size == 3


def test_resync_follows_the_real_size() -> None:
    scaler = Scaler(POLICY, 3)
    scaler.resync(1)
    assert [scaler.observe(0, t).delta for t in range(5)] == [0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "policy",
    [
        ScalePolicy(min_size=3, max_size=2),
        ScalePolicy(up_backlog=10, down_backlog=10),
        ScalePolicy(up_readings=0),
        ScalePolicy(cooldown_s=-1),
    ],
)
def test_invalid_policies(policy: ScalePolicy) -> None:
    with pytest.raises(ValueError):
        Scaler(policy, 1)


@given(
    backlogs=st.lists(st.integers(0, 1000), max_size=200),
    gaps=st.lists(st.floats(0, 10), min_size=200, max_size=200),
    min_size=st.integers(0, 3),
    extra=st.integers(0, 4),
    cooldown=st.floats(0, 20),
)
def test_properties(backlogs: list[int], gaps: list[float], min_size: int, extra: int, cooldown: float) -> None:
    policy = ScalePolicy(min_size, min_size + extra or 1, 300, 50, 2, 3, cooldown)
    scaler = Scaler(policy, policy.min_size)
    now, last_change, previous = 0.0, None, None
    for backlog, gap in zip(backlogs, gaps, strict=False):
        now += gap
        size = scaler.size
        delta = scaler.observe(backlog, now).delta
        assert delta in (-1, 0, 1)
        assert scaler.size == size + delta
        assert policy.min_size <= scaler.size <= policy.max_size  # bounds
        if delta:
            assert last_change is None or now - last_change >= cooldown  # cooldown
            assert (delta > 0) == (backlog > policy.up_backlog)  # direction follows the reading
            assert previous is not None and (previous > policy.up_backlog) == (delta > 0)  # 2+ readings
            last_change = now
        previous = backlog


def test_backlog_counts_only_the_pool() -> None:
    stats = {
        "analyzers": [
            {"name": "fixed", "queued": 1000, "in_flight": 1000},
            {"name": "pool-1", "queued": 10, "in_flight": 5},
            {"name": "pool-2", "queued": 1, "in_flight": 2, "lag": 3},
        ]
    }
    assert backlog_of(stats, {"pool-1", "pool-2"}) == 21
    assert backlog_of({}, {"pool-1"}) == 0
