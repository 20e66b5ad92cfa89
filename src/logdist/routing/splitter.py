"""Exact weighted splitting of a message stream into per-destination counts.

The splitter works in exact integer arithmetic: each weight is converted to its exact rational
value and scaled to an integer ``w_i`` over a common denominator, so the ideal count of index
``i`` after ``T`` messages is the rational ``w_i * T / S`` (``S = sum(w)``) with no float drift,
however many messages pass.

Seat ``k`` of index ``i`` (its ``k``-th message) may be given once ``k - 1 < share_i * T`` (upper
quota) and must be given as soon as ``share_i * T >= k`` (lower quota).  Each batch first gives
every index its lower quota, then hands the remaining messages to the indexes whose next seat
falls due soonest, in messages (earliest deadline first, as in Balinski and Young's quota method).
Largest-remainder ("Hamilton") rounding is not enough here: it can leave too many small indexes a
message ahead and force a later batch to miss a lower quota.  Earliest deadline first never does,
so at every batch boundary ``floor(share_i * T) <= counts[i] <= ceil(share_i * T)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import reduce


def _integer_weights(weights: Sequence[float]) -> list[int]:
    """Exact integers proportional to ``weights`` (each must be finite and > 0)."""
    if not len(weights):
        raise ValueError("ExactSplitter needs at least one weight")
    ratios: list[Fraction] = []
    for i, weight in enumerate(weights):
        value = float(weight)
        if not math.isfinite(value) or value <= 0.0:
            raise ValueError(f"weight {i} must be a finite number > 0, got {weight!r}")
        ratios.append(Fraction(value))
    denominator = reduce(math.lcm, (r.denominator for r in ratios))
    scaled = [r.numerator * (denominator // r.denominator) for r in ratios]
    common = reduce(math.gcd, scaled)
    return [w // common for w in scaled]


class ExactSplitter:
    """Per-batch message counts for K weights: exact over time, O(K) per batch.

    After every :meth:`split`, ``abs(counts[i] - share_i * routed) < 1`` for every index, where
    ``share_i = weights[i] / sum(weights)`` computed exactly.
    """

    __slots__ = ("_counts", "_indexes", "_routed", "_total_weight", "_weights")

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = _integer_weights(weights)
        self._total_weight = sum(self._weights)
        self._indexes = range(len(self._weights))
        self._counts = [0] * len(self._weights)
        self._routed = 0

    @property
    def routed(self) -> int:
        """Messages split so far."""
        return self._routed

    @property
    def counts(self) -> list[int]:
        """Cumulative messages given to each index (a copy)."""
        return list(self._counts)

    @property
    def shares(self) -> tuple[float, ...]:
        """The normalised weights."""
        total = self._total_weight
        return tuple(w / total for w in self._weights)

    def split(self, n: int) -> list[int]:
        """Counts for the next ``n`` messages: K non-negative ints summing to ``n``."""
        if n <= 0:
            if n < 0:
                raise ValueError(f"cannot split a negative number of messages ({n})")
            return [0] * len(self._weights)
        routed = self._routed + n
        total_weight = self._total_weight
        counts = self._counts
        give: list[int] = []
        due: list[tuple[int, int]] = []  # (messages until the index's next seat falls due, index)
        left = n
        for i, weight, have in zip(self._indexes, self._weights, counts, strict=True):
            lower, rem = divmod(weight * routed, total_weight)
            owed = lower - have
            if owed >= 0:
                give.append(owed)
                left -= owed
                if rem:  # the ideal is not an integer, so one more seat is allowed now
                    due.append(((total_weight - rem + weight - 1) // weight, i))
            else:  # already one seat ahead of the lower quota
                give.append(0)
        if left:
            due.sort()
            for _, i in due[:left]:
                give[i] += 1
        self._counts = [have + g for have, g in zip(counts, give, strict=True)]
        self._routed = routed
        return give
