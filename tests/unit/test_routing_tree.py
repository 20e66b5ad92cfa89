"""flatten: nested group weights to per-analyzer shares; SlowStart ramp."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logdist.routing.slowstart import SlowStart
from logdist.routing.tree import WeightNode, flatten


def test_flatten_nested_groups() -> None:
    tree = [
        WeightNode("A", 0.95, (WeightNode("a1", 1.0), WeightNode("a2", 1.0))),
        WeightNode("B", 0.05, (WeightNode("b1", 1.0),)),
    ]
    assert flatten(tree) == pytest.approx({"a1": 0.475, "a2": 0.475, "b1": 0.05})


def test_flatten_deeper_nesting_and_plain_leaves() -> None:
    tree = [
        WeightNode("solo", 2.0),
        WeightNode(
            "G", 2.0, (WeightNode("g1", 3.0), WeightNode("H", 1.0, (WeightNode("h1", 1.0), WeightNode("h2", 3.0))))
        ),
    ]
    assert flatten(tree) == pytest.approx({"solo": 0.5, "g1": 0.375, "h1": 0.03125, "h2": 0.09375})


def test_flatten_omits_zero_weight_nodes() -> None:
    tree = [
        WeightNode("a", 1.0),
        WeightNode("off", 0.0),
        WeightNode("G", 0.0, (WeightNode("g1", 1.0),)),
        WeightNode("H", 1.0, (WeightNode("h1", 1.0), WeightNode("h2", 0.0))),
    ]
    assert flatten(tree) == pytest.approx({"a": 0.5, "h1": 0.5})


def test_flatten_group_with_all_zero_children_is_redistributed() -> None:
    tree = [
        WeightNode("a", 1.0),
        WeightNode("b", 3.0),
        WeightNode("dead", 4.0, (WeightNode("d1", 0.0), WeightNode("d2", 0.0))),
    ]
    assert flatten(tree) == pytest.approx({"a": 0.25, "b": 0.75})


def test_flatten_nothing_weighted() -> None:
    assert flatten([]) == {}
    assert flatten([WeightNode("a", 0.0), WeightNode("G", 1.0, (WeightNode("g", 0.0),))]) == {}


@pytest.mark.parametrize(
    ("tree", "culprit"),
    [
        ([WeightNode("a", 1.0), WeightNode("bad", -1.0)], "bad"),
        ([WeightNode("G", 1.0, (WeightNode("nan", math.nan),))], "nan"),
        ([WeightNode("inf", math.inf)], "inf"),
        ([WeightNode("G", -0.5, (WeightNode("g", 1.0),))], "G"),
        ([WeightNode("x", 1.0), WeightNode("G", 1.0, (WeightNode("x", 1.0),))], "x"),
        ([WeightNode("G", 1.0, (WeightNode("y", 1.0), WeightNode("y", 0.0)))], "y"),
    ],
)
def test_flatten_errors_name_the_node(tree: list[WeightNode], culprit: str) -> None:
    with pytest.raises(ValueError, match=f"'{culprit}'"):
        flatten(tree)


leaf_weights = st.one_of(st.just(0.0), st.floats(0.0, 100.0), st.floats(1e-300, 1e300))
trees = st.recursive(
    st.builds(lambda w: ("leaf", w), leaf_weights),
    lambda kids: st.builds(lambda w, cs: ("group", w, cs), leaf_weights, st.lists(kids, min_size=1, max_size=4)),
    max_leaves=20,
)


def build(spec: list, counter: list[int]) -> tuple[WeightNode, ...]:
    nodes = []
    for item in spec:
        counter[0] += 1
        if item[0] == "leaf":
            nodes.append(WeightNode(f"n{counter[0]}", item[1]))
        else:
            nodes.append(WeightNode(f"g{counter[0]}", item[1], build(item[2], counter)))
    return tuple(nodes)


@given(st.lists(trees, max_size=5))
def test_flatten_shares_sum_to_one_and_are_positive(spec: list) -> None:
    shares = flatten(build(spec, [0]))
    if shares:
        assert math.fsum(shares.values()) == pytest.approx(1.0)
        assert all(share > 0 for share in shares.values())
        assert all(name.startswith("n") for name in shares)


def test_slowstart_endpoints() -> None:
    ramp = SlowStart(window_s=5.0, floor=0.05)
    assert ramp.factor(0.0) == 0.05
    assert ramp.factor(-1.0) == 0.05
    assert ramp.factor(2.5) == pytest.approx(0.525)
    assert ramp.factor(5.0) == 1.0
    assert ramp.factor(60.0) == 1.0


def test_slowstart_zero_window_is_always_full() -> None:
    ramp = SlowStart(window_s=0.0)
    assert ramp.factor(0.0) == 1.0
    assert ramp.factor(-3.0) == 1.0


@given(st.floats(0.0, 60.0), st.floats(0.0, 60.0), st.floats(0.1, 30.0), st.floats(0.0, 1.0))
def test_slowstart_monotone_and_bounded(a: float, b: float, window: float, floor: float) -> None:
    ramp = SlowStart(window_s=window, floor=floor)
    lo, hi = sorted((a, b))
    assert floor <= ramp.factor(lo) <= ramp.factor(hi) <= 1.0


@pytest.mark.parametrize(("window", "floor"), [(-1.0, 0.1), (math.inf, 0.1), (5.0, -0.1), (5.0, 1.5), (5.0, math.nan)])
def test_slowstart_rejects_bad_parameters(window: float, floor: float) -> None:
    with pytest.raises(ValueError):
        SlowStart(window_s=window, floor=floor)
