"""The HTTP JSON ingest codec (logdist.wire.http_json).

The contract: a packet or NDJSON body round-trips into blocks with payloads, severities and attributes intact;
every bad request raises a RequestError (a ProtocolError) carrying the HTTP status and, where there is one, the
exact offending field; garbage of any kind raises nothing else.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.http_json import (
    DEFAULT_MAX_BODY,
    Endpoint,
    RequestError,
    accepted_body,
    check_request,
    decode_body,
    decode_log_line,
    decode_ndjson,
    decode_packet,
    error_body,
    error_status,
)
from logdist.wire.records import StreamIds, build_block, parse_rfc3339
from logdist.wire.severity import LEVELS

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# -- strategies ------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)  # JSON strings cannot hold lone surrogates
levels = st.one_of(st.sampled_from(sorted(LEVELS)), st.integers(0, 255), st.integers(0, 255).map(str))
aware = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)).map(
    lambda d: d.replace(tzinfo=timezone(timedelta(hours=2)))
)
timestamps = st.one_of(
    st.none(),
    aware.map(lambda d: ("dt", d)),
    st.integers(0, 10**11 - 1).map(lambda s: ("s", s)),
    st.integers(10**17, 2**63 - 1).map(lambda ns: ("ns", ns)),
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = {"message": draw(text)}
    if draw(st.booleans()):
        msg["level"] = draw(levels)
    stamp = draw(timestamps)
    if stamp is not None:
        kind, value = stamp
        msg["timestamp"] = value.isoformat() if kind == "dt" else value
        msg["_ns"] = (
            (value - EPOCH) // timedelta(microseconds=1) * 1000
            if kind == "dt"
            else (value * 10**9 if kind == "s" else value)
        )
    if draw(st.booleans()):
        msg["source"] = draw(text)
    if draw(st.booleans()):
        msg["attributes"] = draw(st.dictionaries(text, text, max_size=4))
    return msg


def wire(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if not k.startswith("_")}


def expected_severity(msg: dict[str, Any]) -> int:
    level = msg.get("level", "info")
    return LEVELS[level] if isinstance(level, str) and level in LEVELS else int(level)


def check_block(sent: list[dict[str, Any]], records: Any, extra: dict[str, str]) -> None:
    ids = StreamIds()
    block = build_block(ids, 42, *records)
    got = list(block.messages())
    assert len(got) == len(sent)
    for msg, out in zip(sent, got, strict=True):
        assert out.payload == msg["message"].encode()
        assert out.severity == expected_severity(msg)
        assert out.stream == ids.stream and out.ts_ns == 42
        attrs = dict(out.attributes)
        if "_ns" in msg:
            assert parse_rfc3339(attrs.pop("timestamp")) == msg["_ns"]
        want = dict(msg.get("attributes", {}))
        want.pop("timestamp", None)
        if "source" in msg:
            want["source"] = msg["source"]
        want.update(extra)
        assert attrs == want
    assert [m.seq for m in got] == list(range(len(sent)))


# -- round trips -----------------------------------------------------------------------------------


@FAST
@given(st.lists(messages(), max_size=20), text, text)
def test_packets_round_trip(sent: list[dict[str, Any]], agent: str, packet_id: str) -> None:
    body = json.dumps({"packet_id": packet_id, "agent_id": agent, "messages": [wire(m) for m in sent]}).encode()
    got_agent, records = decode_packet(body)
    assert got_agent == agent
    check_block(sent, records, {"agent_id": agent, "packet_id": packet_id})


@FAST
@given(st.lists(messages(), max_size=20), st.sampled_from(["\n", "\r\n", "\n\n"]), st.booleans())
def test_ndjson_round_trips(sent: list[dict[str, Any]], newline: str, trailing: bool) -> None:
    body = newline.join(json.dumps(wire(m)) for m in sent) + (newline if trailing else "")
    check_block(sent, decode_ndjson(body.encode(), {"agent_id": "ag"}), {"agent_id": "ag"})


@FAST
@given(st.binary(max_size=5000), st.sampled_from(["gzip", "x-gzip", "zstd", "identity", None]))
def test_content_encodings_round_trip(data: bytes, encoding: str | None) -> None:
    if encoding in ("gzip", "x-gzip"):
        packed = gzip.compress(data)
    elif encoding == "zstd":
        packed = zstandard.ZstdCompressor().compress(data)
    else:
        packed = data
    assert decode_body(packed, encoding, DEFAULT_MAX_BODY) == data


def test_concatenated_gzip_members_are_one_body() -> None:
    assert decode_body(gzip.compress(b"abc") + gzip.compress(b"def"), "gzip", 100) == b"abcdef"


def test_structured_fields_win_over_attributes_of_the_same_name() -> None:
    body = {"packet_id": "p", "agent_id": "a", "messages": [{"message": "m", "source": "s", "attributes": {
        "source": "x", "agent_id": "y", "packet_id": "z", "other": "o"}}]}  # fmt: skip
    _, records = decode_packet(json.dumps(body).encode())
    (msg,) = build_block(StreamIds(), 0, *records).messages()
    assert msg.attributes == {"source": "s", "agent_id": "a", "packet_id": "p", "other": "o"}


def test_payload_is_the_utf8_of_the_message_text_exactly() -> None:
    text_in = 'naïve \u2603 \U0001f600 "quoted" \\ tab\t nul\x00 end'
    payload, severity, attrs = decode_log_line(json.dumps({"message": text_in, "level": "WARN"}).encode())
    assert payload == text_in.encode("utf-8") and severity == 128 and attrs == b""


def test_timestamps_become_rfc3339_attributes() -> None:
    stamps = ["2024-05-01T12:00:00.123456Z", "2024-05-01T14:00:00.123456+02:00", 1714564800, 1714564800123456789]
    body = "\n".join(json.dumps({"message": "m", "timestamp": s}) for s in stamps).encode()
    got = [m.attributes["timestamp"] for m in build_block(StreamIds(), 0, *decode_ndjson(body)).messages()]
    assert got == [
        "2024-05-01T12:00:00.123456Z",
        "2024-05-01T14:00:00.123456+02:00",
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.123456789Z",
    ]


# -- precise errors --------------------------------------------------------------------------------


def packet(msgs: list[dict[str, Any]], **top: Any) -> bytes:
    return json.dumps({"packet_id": "p", "agent_id": "a", "messages": msgs, **top}).encode()


def error_of(call: Any, *args: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        call(*args)
    assert isinstance(info.value, ProtocolError)
    return info.value


@given(st.integers(0, 30), st.data())
def test_a_bad_message_is_named_by_index_and_field(index: int, data: st.DataObject) -> None:
    msgs: list[dict[str, Any]] = [{"message": f"m{i}", "level": "info"} for i in range(index + 5)]
    field, bad = data.draw(
        st.sampled_from(
            [
                ("level", "verbose"), ("level", 256), ("level", -1), ("level", True), ("level", 1.5),
                ("timestamp", "yesterday"), ("timestamp", "2024-05-01T12:00:00"), ("timestamp", 1_700_000_000_000),
                ("timestamp", -5), ("timestamp", [1]), ("message", 7), ("message", None), ("source", 1),
            ]
        )
    )  # fmt: skip
    msgs[index][field] = bad
    error = error_of(decode_packet, packet(msgs))
    assert error.status == 400
    assert error.field == f"messages[{index}].{field}"
    assert error.reason
    payload = json.loads(error_body(error))
    assert payload == {"error": error.reason, "field": f"messages[{index}].{field}"}


def test_missing_and_mistyped_fields_are_named() -> None:
    assert error_of(decode_packet, packet([{"level": "info"}])).field == "messages[0].message"
    assert error_of(decode_packet, b'{"agent_id": "a", "messages": []}').field == "packet_id"
    assert error_of(decode_packet, packet([], agent_id=5)).field == "agent_id"
    assert error_of(decode_packet, packet([{"message": "m", "attributes": {"k": 1}}])).field.startswith(
        "messages[0].attributes"
    )
    assert error_of(decode_packet, b"[]").field is None
    assert error_of(decode_packet, b'{"packet_id": "p"').field is None
    assert "UTF-8" in error_of(decode_packet, b'{"packet_id": "\xff"}').reason
    assert error_of(decode_ndjson, b'{"message": "a"}\n\n{"message": "b", "level": "loud"}\n').field == "lines[2].level"
    assert error_of(decode_ndjson, b'{"message": "a"}\n{"msg": "b"}').field == "lines[1].message"
    assert error_of(decode_ndjson, b'{"message": "a"}\nnot json').field == "lines[1]"


def test_request_checks() -> None:
    ok = ("application/json", None, "10", 100)
    assert check_request("POST", "/v1/packets", *ok) is Endpoint.PACKETS
    assert check_request("POST", "/v1/logs", "application/x-ndjson; charset=utf-8", "gzip", None, 100) is Endpoint.LOGS
    assert check_request("POST", "/v1/packets", "Application/JSON;charset=UTF-8", "ZSTD", None, 100)
    cases = [
        (("POST", "/v1/nope", *ok), 404),
        (("GET", "/v1/packets", *ok), 405),
        (("POST", "/v1/packets", "text/plain", None, "10", 100), 415),
        (("POST", "/v1/packets", None, None, "10", 100), 415),
        (("POST", "/v1/logs", "application/json", None, "10", 100), 415),
        (("POST", "/v1/packets", "application/json", "br", "10", 100), 415),
        (("POST", "/v1/packets", "application/json", None, "101", 100), 413),
        (("POST", "/v1/packets", "application/json", None, "-1", 100), 400),
        (("POST", "/v1/packets", "application/json", None, "1e3", 100), 400),
    ]
    for args, status in cases:
        error = error_of(check_request, *args)
        assert error_status(error) == error.status == status, args
        assert json.loads(error_body(error))["error"]


def test_oversize_and_broken_compressed_bodies() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert error_of(decode_body, bomb, "gzip", 999_999).status == 413
    assert decode_body(bomb, "gzip", 1_000_000) == b"\0" * 1_000_000
    zbomb = zstandard.ZstdCompressor().compress(b"\0" * 1_000_000)
    assert error_of(decode_body, zbomb, "zstd", 999_999).status == 413
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 1_000_000)
    assert error_of(decode_body, streamed, "zstd", 999_999).status == 413
    assert error_of(decode_body, gzip.compress(b"abc")[:-3], "gzip", 100).status == 400
    assert error_of(decode_body, b"not gzip", "gzip", 100).status == 400
    assert error_of(decode_body, b"not zstd", "zstd", 100).status == 400
    assert error_of(decode_body, b"x", "br", 100).status == 415


def test_answers() -> None:
    assert json.loads(accepted_body(17)) == {"accepted": 17}
    assert error_status(ProtocolError(ErrorCode.FRAME_TOO_LARGE, "x")) == 413
    assert error_status(ProtocolError(ErrorCode.UNAUTHORIZED, "x")) == 401
    assert error_status(ProtocolError(ErrorCode.SHUTTING_DOWN, "x")) == 503
    assert error_status(ProtocolError(ErrorCode.BAD_BATCH, "x")) == 400
    assert json.loads(error_body(ProtocolError(ErrorCode.BAD_BATCH, "why"))) == {"error": "why", "field": None}


# -- garbage ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
near_packets = st.fixed_dictionaries(
    {"packet_id": json_values | text, "agent_id": json_values | text},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "message": json_values,
                    "level": json_values | levels,
                    "timestamp": json_values,
                    "source": json_values,
                    "attributes": json_values,
                },
            ),
            max_size=4,
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 near_packets.map(lambda v: json.dumps(v).encode())))  # fmt: skip
def test_garbage_raises_only_request_errors(body: bytes) -> None:
    for call in (decode_packet, decode_ndjson, decode_log_line):
        try:
            call(body)
        except RequestError as exc:
            assert 400 <= exc.status < 500 and exc.reason
            json.loads(error_body(exc))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["gzip", "zstd", "identity", "deflate", " GZIP "]))
def test_garbage_bodies_decompress_or_raise_request_errors(body: bytes, encoding: str) -> None:
    try:
        out = decode_body(body, encoding, 1000)
    except RequestError as exc:
        assert exc.status in (400, 413, 415)
    else:
        assert len(out) <= 1000
