"""Route tables (analyzer -> share) and the router that cuts blocks by them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from logdist.routing.splitter import ExactSplitter
from logdist.wire.batch import MessageBlock


@dataclass(frozen=True)
class RouteTable:
    """Analyzer names and their normalised shares (summing to 1.0; both empty when no analyzer)."""

    names: tuple[str, ...]
    shares: tuple[float, ...]
    version: int = 0

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shares):
            raise ValueError(f"RouteTable has {len(self.names)} names but {len(self.shares)} shares")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"RouteTable names must be unique, got {self.names!r}")
        for name, share in zip(self.names, self.shares, strict=True):
            if not math.isfinite(share) or share <= 0:
                raise ValueError(f"RouteTable share of {name!r} must be finite and > 0, got {share!r}")

    @classmethod
    def from_weights(cls, weights: Mapping[str, float], version: int = 0) -> RouteTable:
        """Table from raw weights: drops names with weight <= 0, normalises, orders by name."""
        kept: list[tuple[str, float]] = []
        for name, weight in sorted(weights.items()):
            value = float(weight)
            if not math.isfinite(value):
                raise ValueError(f"weight of {name!r} must be finite, got {weight!r}")
            if value > 0:
                kept.append((name, value))
        total = math.fsum(w for _, w in kept)
        return cls(tuple(n for n, _ in kept), tuple(w / total for _, w in kept), version)

    def share_of(self, name: str) -> float:
        """The share of ``name`` (0.0 when it is not in the table)."""
        try:
            return self.shares[self.names.index(name)]
        except ValueError:
            return 0.0


EMPTY_TABLE = RouteTable((), ())


class Router:
    """Assigns contiguous runs of each block to analyzers by the current table."""

    __slots__ = ("_state",)

    def __init__(self, table: RouteTable | None = None) -> None:
        self._state: tuple[RouteTable, ExactSplitter | None] = (EMPTY_TABLE, None)
        self.set_table(EMPTY_TABLE if table is None else table)

    @property
    def table(self) -> RouteTable:
        """The table in force."""
        return self._state[0]

    def set_table(self, table: RouteTable) -> None:
        """Swap in ``table``; exactness (and :attr:`routed`) is measured afresh from here on."""
        self._state = (table, ExactSplitter(table.shares) if table.names else None)

    def assign_counts(self, n: int) -> list[tuple[str, int]]:
        """``(name, count)`` for the next ``n`` messages, counts > 0 only, in table order."""
        table, splitter = self._state
        if splitter is None:
            return []
        return [(name, count) for name, count in zip(table.names, splitter.split(n), strict=True) if count]

    def assign(self, block: MessageBlock) -> list[tuple[str, MessageBlock]]:
        """Cut ``block`` into contiguous runs, one per analyzer; [] when the table is empty."""
        counts = self.assign_counts(block.count)
        if len(counts) == 1:
            return [(counts[0][0], block)]
        runs: list[tuple[str, MessageBlock]] = []
        start = 0
        for name, count in counts:
            runs.append((name, block.slice(start, start + count)))
            start += count
        return runs

    @property
    def routed(self) -> dict[str, int]:
        """Messages assigned to each name since the last :meth:`set_table`."""
        table, splitter = self._state
        if splitter is None:
            return {}
        return dict(zip(table.names, splitter.counts, strict=True))
