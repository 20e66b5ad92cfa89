"""The whole routing decision for a block: rules, weighted route groups, sticky keys (pure, no I/O).

* Messages no rule takes go to the root router, whose table spreads them over the route groups by group
  weight and within each group by analyzer weight (so "5 % to the experimental group" is one group weight).
* A rule's messages go to its group's own router (exact within the group) or, with a sticky key, to the
  analyzer that weighted rendezvous hashing picks for the key; drop rules drop them (counted by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from logdist.routing.rules import NO_RULE, Rule, RuleSet, split_by_rule
from logdist.routing.sticky import pick_many, sticky_keys
from logdist.routing.table import Router, RouteTable
from logdist.routing.tree import WeightNode, flatten
from logdist.wire.batch import MessageBlock

DEFAULT_GROUP = "default"


@dataclass
class Routed:
    """The outcome of routing one block."""

    runs: list[tuple[str, MessageBlock]] = field(default_factory=list)  # analyzer name, messages
    dropped: list[tuple[str, MessageBlock]] = field(default_factory=list)  # rule name, messages
    unroutable: list[MessageBlock] = field(default_factory=list)  # no analyzer up for them (park)


class RoutingPlan:
    """Root router over weighted groups, one router per rule group, and the rule set."""

    def __init__(self, group_weights: Mapping[str, float], rules: Sequence[Rule] = ()) -> None:
        self.group_weights = dict(group_weights) or {DEFAULT_GROUP: 1.0}
        self.rules = RuleSet(rules, groups=self.group_weights.keys())
        self.root = Router()
        self.groups = {rule.group: Router() for rule in self.rules.rules if rule.group is not None}
        self._version = 0

    @property
    def table(self) -> RouteTable:
        """The root table (the split of messages no rule takes)."""
        return self.root.table

    def rebuild(self, weights: Mapping[str, float], group_of: Mapping[str, str]) -> bool:
        """New tables from effective analyzer weights; swaps only tables that changed. True if any did."""
        members: dict[str, list[WeightNode]] = {name: [] for name in self.group_weights}
        for name, weight in weights.items():
            if weight > 0:
                members.setdefault(group_of.get(name, DEFAULT_GROUP), []).append(WeightNode(name, weight))
        nodes = [
            WeightNode(group, self.group_weights.get(group, 0.0), tuple(children))
            for group, children in members.items()
            if children
        ]
        changed = self._swap(self.root, flatten(nodes) if nodes else {})
        for group, router in self.groups.items():
            changed |= self._swap(router, {n.name: n.weight for n in members.get(group, [])})
        return changed

    def _swap(self, router: Router, shares: Mapping[str, float]) -> bool:
        table = RouteTable.from_weights(shares, self._version + 1)
        if table.names == router.table.names and table.shares == router.table.shares:
            return False
        self._version += 1
        router.set_table(table)
        return True

    def route(self, block: MessageBlock) -> Routed:
        """Decide where every message of ``block`` goes."""
        out = Routed()
        for index, part in split_by_rule(block, self.rules.classify(block)):
            if index == NO_RULE:
                self._assign(self.root, part, None, out)
                continue
            rule = self.rules.rules[index]
            if rule.action == "drop":
                out.dropped.append((rule.name, part))
            else:
                assert rule.group is not None
                self._assign(self.groups[rule.group], part, rule.sticky_key, out)
        return out

    @staticmethod
    def _assign(router: Router, part: MessageBlock, sticky_key: str | None, out: Routed) -> None:
        table = router.table
        if not table.names:
            out.unroutable.append(part)
        elif sticky_key is None:
            out.runs.extend(router.assign(part))
        else:
            picks = pick_many(sticky_keys(part, sticky_key), table.names, table.shares)
            out.runs.extend((table.names[i], sub) for i, sub in split_by_rule(part, picks))

    def tables(self) -> dict[str, dict[str, float]]:
        """Every table's shares, for /stats: the root and one per rule group."""
        out = {"(root)": dict(zip(self.root.table.names, self.root.table.shares, strict=True))}
        for group, router in self.groups.items():
            out[group] = dict(zip(router.table.names, router.table.shares, strict=True))
        return out
