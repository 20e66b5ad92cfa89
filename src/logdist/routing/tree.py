"""Weight trees: groups of analyzers with nested weights, flattened to one share per analyzer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WeightNode:
    """A weighted node: a group when it has children, otherwise an analyzer (leaf)."""

    name: str
    weight: float
    children: tuple[WeightNode, ...] = ()


def _check(nodes: Sequence[WeightNode], path: str, leaves: set[str]) -> None:
    for node in nodes:
        where = f"{path}{node.name}"
        if not math.isfinite(node.weight) or node.weight < 0:
            raise ValueError(
                f"node {node.name!r} ({where}) has invalid weight {node.weight!r}: must be finite and >= 0"
            )
        if node.children:
            _check(node.children, f"{where}/", leaves)
        elif node.name in leaves:
            raise ValueError(f"duplicate analyzer name {node.name!r} ({where})")
        else:
            leaves.add(node.name)


def _spread(nodes: Sequence[WeightNode], share: float, out: dict[str, float]) -> None:
    top = max((node.weight for node in nodes), default=0.0)
    if top <= 0:
        return
    total = math.fsum(node.weight / top for node in nodes)  # scaled by the largest: no overflow
    for node in nodes:
        part = share * (node.weight / top / total)
        if part <= 0:  # zero weight, or too small a share to represent
            continue
        if node.children:
            _spread(node.children, part, out)
        else:
            out[node.name] = part


def flatten(nodes: Sequence[WeightNode]) -> dict[str, float]:
    """Leaf name -> share (summing to 1.0, or empty when nothing has weight).

    Each group's share is split among its children in proportion to their weights.  Zero-weight
    nodes are omitted; a group whose children all weigh zero drops out and the remaining shares are
    renormalised.  Raises ValueError for negative or non-finite weights and duplicate leaf names.
    """
    _check(nodes, "", set())
    out: dict[str, float] = {}
    _spread(nodes, 1.0, out)
    total = math.fsum(out.values())
    if total <= 0:
        return {}
    return {name: share / total for name, share in out.items()}
