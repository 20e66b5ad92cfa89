"""Sticky routing: weighted rendezvous hashing is stable, proportional and moves few keys."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logdist.model import Message
from logdist.routing.sticky import pick, pick_many, sticky_keys
from logdist.wire.batch import MessageBlock

KEYS = [b"key-%d" % i for i in range(20_000)]
weight_st = st.floats(0.2, 5.0)


@st.composite
def pools(draw: st.DrawFn, min_size: int = 1) -> tuple[list[str], list[float]]:
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=min_size, max_size=6, unique=True))
    return names, draw(st.lists(weight_st, min_size=len(names), max_size=len(names)))


@given(st.lists(st.binary(max_size=16), max_size=30), pools())
@settings(max_examples=100, deadline=None)
def test_deterministic_and_pick_agrees_with_pick_many(keys: list[bytes], pool: tuple[list[str], list[float]]) -> None:
    names, weights = pool
    many = pick_many(keys, names, weights)
    assert many.tolist() == pick_many(keys, names, weights).tolist()
    assert many.tolist() == [pick(k, names, weights) for k in keys]
    assert all(0 <= i < len(names) for i in many.tolist())


def test_pinned_values_keep_keys_where_they_were() -> None:
    # the hash is part of the contract: a change would move every sticky key on upgrade
    names = ["a1", "a2", "a3", "a4"]
    keys = [b"", b"web", b"db", b"\x00" * 8, b"tenant-1", b"tenant-2", b"tenant-3", b"tenant-4"]
    assert pick_many(keys, names, [1, 1, 1, 1]).tolist() == PINNED


PINNED = [2, 2, 1, 3, 2, 2, 1, 1]


def test_order_of_analyzers_does_not_matter() -> None:
    names, weights = ["a", "b", "c"], [1.0, 2.0, 3.0]
    forward = pick_many(KEYS[:2000], names, weights)
    backward = pick_many(KEYS[:2000], names[::-1], weights[::-1])
    assert [names[i] for i in forward.tolist()] == [names[::-1][i] for i in backward.tolist()]


@given(pools())
@settings(max_examples=15, deadline=None)
def test_shares_follow_weights(pool: tuple[list[str], list[float]]) -> None:
    names, weights = pool
    got = np.bincount(pick_many(KEYS, names, weights), minlength=len(names)) / len(KEYS)
    want = np.array(weights) / sum(weights)
    assert np.abs(got - want).max() < 0.02, (got, want)


@given(pools(min_size=2), st.data())
@settings(max_examples=15, deadline=None)
def test_removing_an_analyzer_moves_only_its_keys(pool: tuple[list[str], list[float]], data: st.DataObject) -> None:
    names, weights = pool
    gone = data.draw(st.integers(0, len(names) - 1))
    before = [names[i] for i in pick_many(KEYS[:5000], names, weights).tolist()]
    rest = [n for i, n in enumerate(names) if i != gone]
    after = [rest[i] for i in pick_many(KEYS[:5000], rest, [w for i, w in enumerate(weights) if i != gone]).tolist()]
    for b, a in zip(before, after, strict=True):
        assert b == a or b == names[gone]
    # weight 0 is the same as removal
    zeroed = [0.0 if i == gone else w for i, w in enumerate(weights)]
    assert [names[i] for i in pick_many(KEYS[:5000], names, zeroed).tolist()] == after


@given(pools(), st.floats(0.2, 5.0))
@settings(max_examples=15, deadline=None)
def test_adding_an_analyzer_moves_about_its_share_onto_it(pool: tuple[list[str], list[float]], weight: float) -> None:
    names, weights = pool
    new = "new-" + "".join(names)  # not among names
    before = [names[i] for i in pick_many(KEYS, names, weights).tolist()]
    grown = [*names, new]
    after = [grown[i] for i in pick_many(KEYS, grown, [*weights, weight]).tolist()]
    moved = [a for b, a in zip(before, after, strict=True) if a != b]
    assert all(a == new for a in moved)
    assert abs(len(moved) / len(KEYS) - weight / (sum(weights) + weight)) < 0.02


def test_bad_pools_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one analyzer with a positive weight"):
        pick(b"k", [], [])
    with pytest.raises(ValueError, match="at least one analyzer with a positive weight"):
        pick(b"k", ["a"], [0.0])
    with pytest.raises(ValueError, match="2 names but 1 weights"):
        pick(b"k", ["a", "b"], [1.0])
    with pytest.raises(ValueError, match="weight of 'b' must be finite and >= 0"):
        pick(b"k", ["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="names must be unique"):
        pick(b"k", ["a", "a"], [1.0, 1.0])
    assert pick_many([], ["a"], [1.0]).tolist() == []


def test_sticky_keys() -> None:
    messages = [
        Message(payload=b"p", stream=1, attributes={"source": "web", "tenant": "t1"}),
        Message(payload=b"", stream=2**64 - 1, attributes={"tenant": "\u00e9"}),
        Message(payload=b"q", stream=0),
    ]
    block = MessageBlock.from_messages(messages)
    assert sticky_keys(block, "stream") == [
        (1).to_bytes(8, "little"),
        (2**64 - 1).to_bytes(8, "little"),
        bytes(8),
    ]
    assert sticky_keys(block, "source") == [b"web", b"", b""]
    assert sticky_keys(block, "attributes.tenant") == [b"t1", "\u00e9".encode(), b""]
    assert sticky_keys(MessageBlock(0, b"", b""), "source") == []
    with pytest.raises(ValueError, match=r"'stream', 'source' or 'attributes\.NAME'"):
        sticky_keys(block, "host")
