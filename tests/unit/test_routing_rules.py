"""Routing rules: first match wins, each match field, drops, the vectorised severity path, split_by_rule."""

from __future__ import annotations

import re

import msgspec
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import logdist.routing.rules as rules_module
from logdist.model import Message
from logdist.routing.rules import Match, Rule, RuleSet, split_by_rule
from logdist.wire.batch import MessageBlock
from logdist.wire.severity import LEVELS


def msg(severity: int = 128, payload: bytes = b"x", seq: int = 0, **attributes: str) -> Message:
    return Message(payload=payload, severity=severity, seq=seq, stream=9, attributes=attributes)


def block_of(*messages: Message) -> MessageBlock:
    return MessageBlock.from_messages(list(messages))


def route(name: str, group: str = "g", **match: object) -> Rule:
    return Rule(name=name, group=group, match=Match(**match))


def classes(rules: list[Rule], *messages: Message) -> list[int]:
    out = RuleSet(rules).classify(block_of(*messages))
    return [-1] * len(messages) if out is None else out.tolist()


# -- matching ----------------------------------------------------------------------------------------


def test_no_rules_and_empty_blocks_take_the_fast_path() -> None:
    block = block_of(msg(0), msg(255))
    assert RuleSet([]).classify(block) is None
    assert RuleSet([route("a", severity_max=10)]).classify(MessageBlock(0, b"", b"")) is None
    assert RuleSet([route("a", severity_max=10)]).classify(block_of(msg(200))) is None  # nothing matches


def test_first_match_wins() -> None:
    rules = [
        route("errors", severity_max=127),
        route("web", source="web"),
        route("all", group="h"),
    ]
    got = classes(rules, msg(96, source="web"), msg(200, source="web"), msg(200, source="db"), msg(0))
    assert got == [0, 1, 2, 0]


def test_slow_rule_ahead_of_fast_rule_still_wins() -> None:
    rules = [route("boom", payload_regex="boom"), route("errors", severity_max=127)]
    assert classes(rules, msg(96, b"boom!"), msg(96, b"fine"), msg(200, b"boom"), msg(200)) == [0, 1, 0, -1]


def test_severity_range_is_inclusive() -> None:
    rules = [route("mid", severity_min=10, severity_max=20)]
    assert classes(rules, *(msg(s) for s in (9, 10, 15, 20, 21))) == [-1, 0, 0, 0, -1]
    assert classes([route("min", severity_min=250)], msg(249), msg(255)) == [-1, 0]
    assert classes([route("max", severity_max=0)], msg(0), msg(1)) == [0, -1]


def test_levels_match_their_bucket_of_32_in_any_case() -> None:
    rules = [route("warn", levels=["Warning", "ERR"])]
    sev = [95, 96, 127, 128, 159, 160]
    assert classes(rules, *(msg(s) for s in sev)) == [-1, 0, 0, 0, 0, -1]
    # trace (240) runs to the end of the debug bucket; debug covers trace too
    assert classes([route("trace", levels=["trace"])], msg(224), msg(239), msg(240), msg(255)) == [-1, -1, 0, 0]
    assert classes([route("debug", levels=["debug"])], msg(223), msg(224), msg(255)) == [-1, 0, 0]


def test_levels_and_range_intersect() -> None:
    rules = [route("r", levels=["error"], severity_min=100)]
    assert classes(rules, msg(96), msg(100), msg(127), msg(128)) == [-1, 0, 0, -1]


def test_source_and_attributes_are_exact() -> None:
    rules = [route("web-eu", source="web", attributes={"region": "eu"}), route("any-eu", attributes={"region": "eu"})]
    got = classes(
        rules,
        msg(source="web", region="eu"),
        msg(source="web", region="us"),
        msg(source="webx", region="eu"),
        msg(region="eu"),
        msg(source="web"),
        msg(),
        msg(region="EU"),
    )
    assert got == [0, -1, 1, 1, -1, -1, -1]


@pytest.mark.parametrize("payload", [b"", b"web" * 50], ids=["rare", "common"])  # common: per-message fallback
def test_attribute_prefilter_ignores_the_value_elsewhere(payload: bytes) -> None:
    messages = [
        msg(payload=payload, source="web"),
        msg(payload=payload, host="web"),
        msg(payload=payload + b"web"),
        msg(payload=payload, source="webs"),
        msg(payload=payload, source="db", other="web"),
        msg(payload=payload, web="source"),
        msg(payload=payload, source="web", host="x"),
    ]
    assert classes([route("web", source="web")], *messages) == [0, -1, -1, -1, -1, -1, 0]
    assert classes([route("none", source="nowhere")], *messages) == [-1] * 7


def test_payload_regex_searches_the_payload_only() -> None:
    rules = [route("re", payload_regex=r"^ERR\d+")]
    got = classes(rules, msg(payload=b"ERR42 x"), msg(payload=b"x ERR42"), msg(payload=b"", ERR1="ERR1"), msg())
    assert got == [0, -1, -1, -1]
    # the pattern is UTF-8 text; searches see bytes
    assert classes([route("u", payload_regex="é+")], msg(payload="caf\u00e9".encode()), msg(payload=b"cafe")) == [0, -1]


def test_empty_match_is_a_catch_all() -> None:
    assert classes([route("x", severity_max=5), route("rest")], msg(0), msg(9), msg(255)) == [0, 1, 1]


def test_unreadable_attributes_match_no_attribute_condition() -> None:
    good = block_of(msg(payload=b"p", source="web"))
    array = good.array.copy()
    bad = MessageBlock(1, array.tobytes(), b"\xc1" * int(array["attr_len"][0]) + b"p")  # 0xc1: never valid msgpack
    assert RuleSet([route("web", source="web")]).classify(bad) is None
    assert RuleSet([route("p", payload_regex="^p$")]).classify(bad).tolist() == [0]


def test_drop_rules() -> None:
    rules = RuleSet([Rule(name="no-debug", action="drop", match=Match(levels=["debug"])), route("rest")])
    assert rules.drops.tolist() == [True, False]
    assert rules.names == ("no-debug", "rest")
    got = rules.classify(block_of(msg(230), msg(10), msg(255)))
    assert got is not None and got.tolist() == [0, 1, 0]


def test_decodes_only_messages_no_earlier_fast_rule_took(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = rules_module._attr_decoder

    class Spy:
        def decode(self, data: object) -> dict[str, str]:
            calls.append(data)
            return real.decode(data)

    monkeypatch.setattr(rules_module, "_attr_decoder", Spy())
    urgent = [msg(0, source="web") for _ in range(10)]
    chatty = [msg(200, source="web") for _ in range(7)] + [msg(200) for _ in range(3)]  # no attributes: no decode
    block = block_of(*urgent, *chatty)
    out = RuleSet([route("urgent", severity_max=10), route("web", source="web")]).classify(block)
    assert out is not None and out.tolist() == [0] * 10 + [1] * 7 + [-1] * 3
    assert len(calls) == 7
    calls.clear()
    RuleSet([route("urgent", severity_max=10), route("rest")]).classify(block)
    assert calls == []


# -- against a naive reference ------------------------------------------------------------------------


def reference(rules: list[Rule], messages: list[Message]) -> list[int]:
    """Per message, the first rule whose every condition holds (written straight from the docs)."""

    def holds(m: Match, message: Message) -> bool:
        s = message.severity
        if m.severity_min is not None and s < m.severity_min:
            return False
        if m.severity_max is not None and s > m.severity_max:
            return False
        if m.levels is not None and not any(
            LEVELS[level.lower()] <= s < (LEVELS[level.lower()] // 32 + 1) * 32 for level in m.levels
        ):
            return False
        if m.source is not None and message.attributes.get("source") != m.source:
            return False
        if any(message.attributes.get(k) != v for k, v in m.attributes.items()):
            return False
        return m.payload_regex is None or re.search(m.payload_regex.encode(), message.payload) is not None

    return [next((i for i, r in enumerate(rules) if holds(r.match, message)), -1) for message in messages]


LEVEL_NAMES = sorted(LEVELS)
severities = st.one_of(st.integers(0, 255), st.sampled_from([0, 31, 32, 96, 127, 128, 224, 239, 240, 255]))


@st.composite
def severity_matches(draw: st.DrawFn) -> dict[str, object]:
    fields: dict[str, object] = {}
    if draw(st.booleans()):
        low, high = sorted((draw(severities), draw(severities)))
        if draw(st.booleans()):
            fields["severity_min"] = low
        if draw(st.booleans()):
            fields["severity_max"] = high
    if draw(st.booleans()):
        fields["levels"] = draw(st.lists(st.sampled_from(LEVEL_NAMES), min_size=1, max_size=3))
    return fields


@st.composite
def any_matches(draw: st.DrawFn) -> dict[str, object]:
    fields = draw(severity_matches())
    if draw(st.booleans()):
        fields["source"] = draw(st.sampled_from(["web", "db"]))
    if draw(st.booleans()):
        fields["attributes"] = draw(st.dictionaries(st.sampled_from(["k", "region"]), st.sampled_from(["a", "b"])))
    if draw(st.booleans()):
        fields["payload_regex"] = draw(st.sampled_from(["err", r"^a", r"\d{2}", "x|y"]))
    return fields


messages_st = st.lists(
    st.builds(
        Message,
        payload=st.sampled_from([b"", b"a", b"err 12", b"xa", b"ab1", b"y99"]),
        severity=severities,
        attributes=st.dictionaries(
            st.sampled_from(["source", "k", "region"]), st.sampled_from(["web", "db", "a", "b"])
        ),
    ),
    max_size=40,
)


def build_rules(matches: list[dict[str, object]], drops: list[bool]) -> list[Rule]:
    rules = [
        Rule(name=f"r{i}", match=Match(**m), action="drop" if d else "route", group=None if d else "g")
        for i, (m, d) in enumerate(zip(matches, drops, strict=False))
    ]
    try:
        RuleSet(rules)
    except ValueError:
        assume(False)
    return rules


@given(st.lists(severity_matches(), max_size=6), st.lists(st.booleans(), min_size=6, max_size=6), messages_st)
@settings(max_examples=150, deadline=None)
def test_severity_only_rules_agree_with_reference(
    matches: list[dict[str, object]], drops: list[bool], messages: list[Message]
) -> None:
    rules = build_rules(matches, drops)
    got = RuleSet(rules).classify(MessageBlock.from_messages(messages))
    want = reference(rules, messages)
    assert ([-1] * len(messages) if got is None else got.tolist()) == want
    if got is None:  # None only when nothing matches
        assert all(w == -1 for w in want)


@given(st.lists(any_matches(), max_size=6), st.lists(st.booleans(), min_size=6, max_size=6), messages_st)
@settings(max_examples=150, deadline=None)
def test_mixed_rules_agree_with_reference(
    matches: list[dict[str, object]], drops: list[bool], messages: list[Message]
) -> None:
    rules = build_rules(matches, drops)
    got = RuleSet(rules).classify(MessageBlock.from_messages(messages))
    want = reference(rules, messages)
    assert ([-1] * len(messages) if got is None else got.tolist()) == want


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (Rule(name="", group="g", match=Match()), r"^rules\[1\]\.name: must not be empty"),
        (Rule(name="x", group="g", action="sample", match=Match()), r"^rules\[1\] \('x'\)\.action: must be one of"),
        (Rule(name="x", group="g", action="drop", match=Match()), r"^rules\[1\] \('x'\)\.group: a drop rule takes no"),
        (Rule(name="x", action="drop", sticky_key="stream", match=Match()), r"\.sticky_key: a drop rule takes no"),
        (Rule(name="x", match=Match()), r"^rules\[1\] \('x'\)\.group: a route rule needs a group"),
        (Rule(name="x", group="g", sticky_key="attributes.", match=Match()), r"\.sticky_key: must be 'stream'"),
        (Rule(name="x", group="g", sticky_key="host", match=Match()), r"\.sticky_key: must be 'stream'"),
        (Rule(name="x", group="g", match=Match(severity_min=-1)), r"\('x'\)\.match\.severity_min: must be an integer"),
        (Rule(name="x", group="g", match=Match(severity_max=256)), r"\.match\.severity_max: must be an integer 0-255"),
        (Rule(name="x", group="g", match=Match(severity_min=9, severity_max=8)), r"\.severity_min: 9 is above"),
        (Rule(name="x", group="g", match=Match(levels=[])), r"\.match\.levels: must be a non-empty list"),
        (Rule(name="x", group="g", match=Match(levels=["info", "loud"])), r"\.levels\[1\]: unknown level 'loud'"),
        (Rule(name="x", group="g", match=Match(levels=["3"])), r"\.match\.levels\[0\]: unknown level '3'"),
        (Rule(name="x", group="g", match=Match(levels=["debug"], severity_max=100)), r"\.match: levels and severity"),
        (Rule(name="x", group="g", match=Match(payload_regex="(")), r"\('x'\)\.match\.payload_regex: invalid regex"),
        (
            Rule(name="x", group="g", match=Match(source="a", attributes={"source": "b"})),
            r"\.match\.source: 'a' conflicts with match\.attributes\['source'\] 'b'",
        ),
        (Rule(name="ok", group="g", match=Match()), r"^rules\[1\]\.name: duplicate rule name 'ok' \(also rules\[0\]\)"),
    ],
)
def test_validation_errors_name_the_rule_and_field(rule: Rule, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RuleSet([Rule(name="ok", group="g", match=Match()), rule])


def test_unknown_group_when_groups_are_given() -> None:
    RuleSet([route("a", group="fast")], groups={"fast", "default"})
    with pytest.raises(ValueError, match=r"^rules\[0\] \('a'\)\.group: unknown group 'slow'; known: \['default'"):
        RuleSet([route("a", group="slow")], groups={"fast", "default"})


def test_rules_decode_from_config_and_forbid_unknown_fields() -> None:
    raw = [{"name": "d", "action": "drop", "match": {"levels": ["debug"]}}, {"name": "w", "group": "g", "match": {}}]
    rules = msgspec.convert(raw, list[Rule])
    assert rules[0].match.levels == ["debug"] and rules[1].action == "route"
    with pytest.raises(msgspec.ValidationError, match="unknown field `sevrity_max`"):
        msgspec.convert([{"name": "x", "match": {"sevrity_max": 3}}], list[Rule])


# -- split_by_rule -----------------------------------------------------------------------------------


def test_split_without_classes_or_with_one_class_does_not_copy() -> None:
    block = block_of(msg(1), msg(2))
    assert split_by_rule(block, None) == [(-1, block)]
    [(cls, same)] = split_by_rule(block, np.array([3, 3], dtype=np.int32))
    assert cls == 3 and same is block
    assert split_by_rule(MessageBlock(0, b"", b""), None) == []
    with pytest.raises(ValueError, match="3 classes for a block of 2"):
        split_by_rule(block, np.zeros(3, dtype=np.int32))


def test_split_keeps_the_ticket() -> None:
    block = block_of(msg(1), msg(2), msg(3))
    block.ticket = ticket = object()  # type: ignore[assignment]
    parts = split_by_rule(block, np.array([0, -1, 0], dtype=np.int32))
    assert [c for c, _ in parts] == [-1, 0]
    assert all(part.ticket is ticket for _, part in parts)


@given(st.lists(st.tuples(st.integers(-1, 4), severities, st.binary(max_size=8)), max_size=80))
@settings(max_examples=200, deadline=None)
def test_split_preserves_every_message_exactly_once(rows: list[tuple[int, int, bytes]]) -> None:
    messages = [
        Message(payload=p, severity=s, seq=i, stream=1, attributes={"i": str(i)} if i % 2 else {})
        for i, (_, s, p) in enumerate(rows)
    ]
    block = MessageBlock.from_messages(messages)
    cls = np.array([c for c, _, _ in rows], dtype=np.int32)
    parts = split_by_rule(block, cls)
    assert [c for c, _ in parts] == sorted({c for c, _, _ in rows})  # ascending, no empty group
    seen: list[Message] = []
    for c, part in parts:
        got = list(part.messages())
        assert got == [m for m, k in zip(messages, cls.tolist(), strict=True) if k == c]  # order kept
        assert part.checksum_failures() == 0
        seen.extend(got)
    assert sorted(m.seq for m in seen) == list(range(len(messages)))
