"""RouteTable and Router: tables from weights, blocks cut into contiguous runs by share."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logdist.model import Message
from logdist.routing.table import Router, RouteTable
from logdist.wire.batch import MessageBlock


def make_block(start: int, count: int) -> MessageBlock:
    return MessageBlock.from_messages(
        [
            Message(payload=b"m%d" % i * (i % 5), seq=i, stream=7, attributes={"k": str(i)} if i % 3 else {})
            for i in range(start, start + count)
        ]
    )


def test_from_weights_drops_non_positive_sorts_and_normalises() -> None:
    table = RouteTable.from_weights({"c": 1.0, "a": 3.0, "zero": 0.0, "neg": -1.0, "b": 4.0}, version=7)
    assert table.names == ("a", "b", "c")
    assert table.shares == pytest.approx((0.375, 0.5, 0.125))
    assert sum(table.shares) == pytest.approx(1.0)
    assert table.version == 7
    assert table.share_of("b") == pytest.approx(0.5)
    assert table.share_of("zero") == 0.0
    assert table.share_of("missing") == 0.0


def test_from_weights_empty() -> None:
    table = RouteTable.from_weights({"a": 0.0})
    assert table.names == ()
    assert table.shares == ()


def test_from_weights_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="'a'"):
        RouteTable.from_weights({"a": float("nan"), "b": 1.0})


def test_table_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        RouteTable(("a", "b"), (1.0,))


def test_empty_table_assigns_nothing() -> None:
    router = Router()
    assert router.table.names == ()
    assert router.assign(make_block(0, 10)) == []
    assert router.assign_counts(10) == []
    assert router.routed == {}


def test_assign_counts_skips_zero_and_keeps_table_order() -> None:
    router = Router(RouteTable.from_weights({"b": 1.0, "a": 1.0, "c": 1.0}))
    assert router.assign_counts(1) == [("a", 1)]
    assert router.assign_counts(2) == [("b", 1), ("c", 1)]
    assert router.assign_counts(0) == []
    assert router.routed == {"a": 1, "b": 1, "c": 1}


@settings(max_examples=60, deadline=None)
@given(
    weights=st.dictionaries(st.sampled_from("abcdefgh"), st.floats(0.01, 100.0), min_size=1),
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8),
)
def test_runs_concatenate_back_to_the_block(weights: dict[str, float], sizes: list[int]) -> None:
    router = Router(RouteTable.from_weights(weights))
    start = 0
    for size in sizes:
        block = make_block(start, size)
        runs = router.assign(block)
        names = [name for name, _ in runs]
        assert names == [n for n in router.table.names if n in names]  # table order, each name once
        assert all(run.count > 0 for _, run in runs)
        assert sum(run.count for _, run in runs) == size
        if size:
            seqs = np.concatenate([run.array["seq"] for _, run in runs])
            np.testing.assert_array_equal(seqs, block.array["seq"])
            joined = MessageBlock.concat([run for _, run in runs])
            assert joined.encode() == block.encode()
            assert [m.payload for m in joined.messages()] == [m.payload for m in block.messages()]
        start += size
    assert sum(router.routed.values()) == start


def test_assign_follows_shares_within_one_message() -> None:
    weights = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    router = Router(RouteTable.from_weights(weights))
    rng = random.Random(5)
    total = 0
    for _ in range(200):
        n = rng.randint(0, 200)
        got = dict((name, run.count) for name, run in router.assign(make_block(0, n)) if run.count)
        total += n
        routed = router.routed
        assert sum(routed.values()) == total
        assert sum(got.values()) == n
        for name, weight in weights.items():
            assert abs(routed[name] - weight * total) <= 1


def test_set_table_measures_exactness_from_the_change() -> None:
    router = Router(RouteTable.from_weights({"a": 1.0, "b": 1.0}))
    for _ in range(101):
        router.assign_counts(1)  # leaves "a" one ahead
    assert router.routed == {"a": 51, "b": 50}
    new = RouteTable.from_weights({"a": 1.0, "b": 2.0, "c": 1.0}, version=2)
    router.set_table(new)
    assert router.table is new
    assert router.routed == {"a": 0, "b": 0, "c": 0}
    rng = random.Random(9)
    total = 0
    for _ in range(300):
        n = rng.randint(0, 40)
        router.assign_counts(n)
        total += n
        for name, count in router.routed.items():
            assert abs(count - new.share_of(name) * total) <= 1
    assert sum(router.routed.values()) == total


def test_set_empty_table_stops_routing() -> None:
    router = Router(RouteTable.from_weights({"a": 1.0}))
    block = make_block(0, 4)
    assert [(name, run.count) for name, run in router.assign(block)] == [("a", 4)]
    router.set_table(RouteTable.from_weights({}))
    assert router.assign(block) == []
    assert router.routed == {}


def test_router_is_deterministic() -> None:
    table = RouteTable.from_weights({"x": 0.7, "y": 0.2, "z": 0.1})
    a, b = Router(table), Router(table)
    sizes = [random.Random(2).randint(0, 100) for _ in range(50)]
    assert [a.assign_counts(n) for n in sizes] == [b.assign_counts(n) for n in sizes]
