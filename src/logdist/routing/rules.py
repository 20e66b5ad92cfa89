"""Routing rules: classify each message of a block by the first rule that matches it (pure code, no I/O).

A :class:`Rule` sends the messages its :class:`Match` selects to a route group, or drops them.  Every
field of a match must hold (an empty match matches everything).  Severity conditions are compiled into
a 256-entry lookup table, so rules that only look at severity cost one numpy gather per block; rules
on attributes, source or payload look only into the messages that no earlier rule took.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import pairwise

import msgspec
import numpy as np

from logdist.wire.batch import MessageBlock

try:
    from logdist.wire.severity import LEVELS
except ImportError:  # pragma: no cover - the syslog names, each a bucket of 32
    LEVELS = {
        name: s * 32
        for s, name in enumerate(("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"))
    }

ACTIONS = ("route", "drop")
NO_RULE = -1
_attr_decoder = msgspec.msgpack.Decoder(dict[str, str])


class Match(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a rule selects; every field given must hold.

    ``levels`` are level names (any case, see :mod:`logdist.wire.severity`); a level matches severities
    from its value to the end of its syslog bucket of 32 (``error``: 96-127, ``trace``: 240-255).
    """

    severity_min: int | None = None  # inclusive, 0..255
    severity_max: int | None = None  # inclusive
    levels: list[str] | None = None
    source: str | None = None  # exact match on attributes["source"]
    attributes: dict[str, str] = {}  # exact matches on attributes
    payload_regex: str | None = None  # re.search on the payload (bytes pattern from the UTF-8 string)


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Route the messages ``match`` selects to ``group`` (``action="route"``), or drop them."""

    name: str
    match: Match
    group: str | None = None
    action: str = "route"  # "route" or "drop" (drops are counted per rule, never sampled)
    sticky_key: str | None = None  # "source", "attributes.NAME" or "stream": one key -> one analyzer


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A rule's match in executable form."""

    index: int
    lut: np.ndarray  # bool[256]: severities the rule admits
    attributes: tuple[tuple[str, str], ...]  # required (key, value) pairs, source included
    regex: re.Pattern[bytes] | None

    @property
    def slow(self) -> bool:
        """Whether the rule looks past the header (decodes attributes or reads the payload)."""
        return bool(self.attributes) or self.regex is not None


def check_sticky_key(key: str) -> None:
    """Raise ValueError unless ``key`` is ``stream``, ``source`` or ``attributes.NAME``."""
    if key in ("stream", "source"):
        return
    if key.startswith("attributes.") and len(key) > len("attributes."):
        return
    raise ValueError(f"must be 'stream', 'source' or 'attributes.NAME', got {key!r}")


def _severity_lut(match: Match, where: str) -> np.ndarray:
    lut = np.ones(256, dtype=bool)
    for field in ("severity_min", "severity_max"):
        value = getattr(match, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255):
            raise ValueError(f"{where}.match.{field}: must be an integer 0-255, got {value!r}")
    low, high = match.severity_min, match.severity_max
    if low is not None and high is not None and low > high:
        raise ValueError(f"{where}.match.severity_min: {low} is above severity_max {high}")
    if low is not None:
        lut[:low] = False
    if high is not None:
        lut[high + 1 :] = False
    if match.levels is not None:
        if not isinstance(match.levels, list | tuple) or not match.levels:
            raise ValueError(f"{where}.match.levels: must be a non-empty list of level names, got {match.levels!r}")
        wanted = np.zeros(256, dtype=bool)
        for j, level in enumerate(match.levels):
            value = LEVELS.get(level.lower()) if isinstance(level, str) else None
            if value is None:
                raise ValueError(
                    f"{where}.match.levels[{j}]: unknown level {level!r}; use one of {', '.join(LEVELS)} "
                    "(or severity_min/severity_max for numbers)"
                )
            wanted[value : (value // 32 + 1) * 32] = True
        lut &= wanted
    if not lut.any():
        raise ValueError(f"{where}.match: levels and severity_min/severity_max admit no severity")
    return lut


def _compile(index: int, rule: Rule, groups: Collection[str] | None) -> _Compiled:
    where = f"rules[{index}]"
    if not isinstance(rule.name, str) or not rule.name:
        raise ValueError(f"{where}.name: must not be empty")
    where = f"rules[{index}] ({rule.name!r})"
    if rule.action not in ACTIONS:
        raise ValueError(f"{where}.action: must be one of {', '.join(ACTIONS)}, got {rule.action!r}")
    if rule.action == "drop":
        if rule.group is not None:
            raise ValueError(f"{where}.group: a drop rule takes no group, got {rule.group!r}")
        if rule.sticky_key is not None:
            raise ValueError(f"{where}.sticky_key: a drop rule takes no sticky_key")
    else:
        if not rule.group:
            raise ValueError(f"{where}.group: a route rule needs a group")
        if groups is not None and rule.group not in groups:
            raise ValueError(f"{where}.group: unknown group {rule.group!r}; known: {sorted(groups)}")
        if rule.sticky_key is not None:
            try:
                check_sticky_key(rule.sticky_key)
            except ValueError as exc:
                raise ValueError(f"{where}.sticky_key: {exc}") from None
    match = rule.match
    lut = _severity_lut(match, where)
    attributes = dict(match.attributes)
    if match.source is not None:
        if attributes.get("source", match.source) != match.source:
            raise ValueError(
                f"{where}.match.source: {match.source!r} conflicts with match.attributes['source'] "
                f"{attributes['source']!r}"
            )
        attributes["source"] = match.source
    regex = None
    if match.payload_regex is not None:
        try:
            regex = re.compile(match.payload_regex.encode("utf-8"))
        except re.error as exc:
            raise ValueError(f"{where}.match.payload_regex: invalid regex {match.payload_regex!r}: {exc}") from None
    return _Compiled(index, lut, tuple(sorted(attributes.items())), regex)


class RuleSet:
    """An ordered list of rules; :meth:`classify` gives each message the index of the first that matches."""

    __slots__ = ("_fast_first", "_need_slow", "_slow", "drops", "rules")

    def __init__(self, rules: Sequence[Rule], *, groups: Collection[str] | None = None) -> None:
        """Validate and compile ``rules``; with ``groups``, route rules must name one of them.

        Raises ValueError naming the rule index and field (``rules[2] ('x').match.levels[0]: ...``).
        """
        self.rules: tuple[Rule, ...] = tuple(rules)
        compiled: list[_Compiled] = []
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, Rule):
                raise ValueError(f"rules[{i}]: expected a Rule, got {type(rule).__name__}")
            c = _compile(i, rule, groups)
            if rule.name in seen:
                raise ValueError(f"rules[{i}].name: duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])")
            seen[rule.name] = i
            compiled.append(c)
        self.drops = np.array([r.action == "drop" for r in self.rules], dtype=bool)  # per rule index
        # Per severity: the first rule with no condition past severity that admits it (-1: none) ...
        fast_first = np.full(256, NO_RULE, dtype=np.int32)
        for c in reversed(compiled):
            if not c.slow:
                fast_first[c.lut] = c.index
        # ... and whether some slow rule ahead of it admits it too (so messages must be looked into).
        self._slow = tuple(c for c in compiled if c.slow)
        need = np.zeros(256, dtype=bool)
        for c in self._slow:
            need |= c.lut & ((fast_first < 0) | (fast_first > c.index))
        self._fast_first = fast_first
        self._need_slow = need if need.any() else None

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def names(self) -> tuple[str, ...]:
        """Rule names, by index."""
        return tuple(r.name for r in self.rules)

    def classify(self, block: MessageBlock) -> np.ndarray | None:
        """Per message, the index of the first matching rule (int32, -1 for none); None when none matches."""
        if not self.rules or not block.count:
            return None
        severity = block.array["severity"]
        classes = self._fast_first[severity]
        if self._need_slow is not None and self._need_slow[severity].any():
            self._classify_slow(block, severity, classes)
        if classes.max() < 0:
            return None
        return classes

    def _classify_slow(self, block: MessageBlock, severity: np.ndarray, classes: np.ndarray) -> None:
        """Apply the slow rules in order, one rule at a time, to the messages no earlier rule took."""
        array = block.array
        offsets = block.offsets
        attr_len = array["attr_len"]
        has_attributes = attr_len > 0
        bodies = block.bodies if isinstance(block.bodies, bytes) else bytes(block.bodies)
        decoded: dict[int, dict[str, str]] = {}
        for rule in self._slow:
            # still open to this rule: no earlier rule matched (classes is -1 or a later fast rule's index)
            open_ = rule.lut[severity] & ((classes < 0) | (classes > rule.index))
            if rule.attributes:
                open_ &= has_attributes
            idx = np.flatnonzero(open_)
            if not len(idx):
                continue
            if rule.attributes:
                idx = _with_attributes(rule.attributes, idx, bodies, offsets, attr_len, decoded)
            if rule.regex is not None and len(idx):
                search = rule.regex.search
                view = memoryview(bodies)
                starts = (offsets[idx] + attr_len[idx]).tolist()
                ends = offsets[idx + 1].tolist()
                hits = [search(view[a:b]) is not None for a, b in zip(starts, ends, strict=True)]
                idx = idx[np.array(hits, dtype=bool)]
            classes[idx] = rule.index


def _with_attributes(
    pairs: tuple[tuple[str, str], ...],
    idx: np.ndarray,
    bodies: bytes,
    offsets: np.ndarray,
    attr_len: np.ndarray,
    decoded: dict[int, dict[str, str]],
) -> np.ndarray:
    """The messages of ``idx`` whose attributes hold every ``(key, value)`` of ``pairs``."""
    # A decoded string is its raw UTF-8 bytes in the msgpack, so the value must occur there: an exact prefilter.
    needle = max((v for _, v in pairs), key=len).encode("utf-8")
    if needle:
        idx = _containing(needle, idx, bodies, offsets, attr_len)
    starts = offsets[idx].tolist()
    ends = (offsets[idx] + attr_len[idx]).tolist()
    decode = _attr_decoder.decode
    view = memoryview(bodies)
    (key, value), rest = pairs[0], pairs[1:]
    keep = []
    for m, a, b in zip(idx.tolist(), starts, ends, strict=True):
        attributes = decoded.get(m)
        if attributes is None:
            try:
                attributes = decode(view[a:b])
            except (msgspec.DecodeError, UnicodeDecodeError):
                attributes = {}  # unreadable attributes match no attribute condition
            decoded[m] = attributes
        keep.append(attributes.get(key) == value and (not rest or all(attributes.get(k) == v for k, v in rest)))
    return idx[np.array(keep, dtype=bool)]


def _containing(needle: bytes, idx: np.ndarray, bodies: bytes, offsets: np.ndarray, attr_len: np.ndarray) -> np.ndarray:
    """The messages of ``idx`` whose attribute bytes contain ``needle``.

    Scans the buffer for occurrences (one ``find`` each) and maps them to messages with numpy; falls
    back to one ``find`` per message when the needle turns up more often than there are messages.
    """
    starts = offsets[idx]
    ends = starts + attr_len[idx]
    find = bodies.find
    lo, hi = int(starts[0]), int(ends[-1])
    found: list[int] = []
    limit = 2 * len(idx)
    at = find(needle, lo, hi)
    while at >= 0 and len(found) < limit:
        found.append(at)
        at = find(needle, at + 1, hi)
    if at >= 0:  # too common: per message is cheaper
        keep = [find(needle, a, b) >= 0 for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        return idx[np.array(keep, dtype=bool)]
    if not found:
        return idx[:0]
    positions = np.array(found, dtype=np.int64)
    owner = np.searchsorted(starts, positions, side="right") - 1  # the candidate starting at or before it
    inside = (owner >= 0) & (positions + len(needle) <= ends[np.maximum(owner, 0)])
    return np.unique(idx[owner[inside]])


def split_by_rule(block: MessageBlock, classes: np.ndarray | None) -> list[tuple[int, MessageBlock]]:
    """``(class, sub-block)`` per distinct class in ascending order, message order kept within each.

    ``classes`` is :meth:`RuleSet.classify`'s output (or any per-message int array, e.g. analyzer
    picks).  Empty groups are skipped; a block whose messages all share one class is returned as is,
    uncopied (``[(-1, block)]`` when ``classes`` is None).  Sub-blocks keep the block's ticket.
    """
    if not block.count:
        return []
    if classes is None:
        return [(NO_RULE, block)]
    if len(classes) != block.count:
        raise ValueError(f"{len(classes)} classes for a block of {block.count} messages")
    first = int(classes[0])
    if (classes == first).all():
        return [(first, block)]
    order = np.argsort(classes, kind="stable")
    ordered = classes[order]
    cuts = (np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist()
    groups: list[tuple[int, MessageBlock]] = []
    for a, b in pairwise([0, *cuts, block.count]):
        part = block.take(order[a:b])
        part.ticket = block.ticket
        groups.append((int(ordered[a]), part))
    return groups
