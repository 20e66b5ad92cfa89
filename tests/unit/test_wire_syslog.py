"""The ``syslog`` ingest codec (logdist.wire.syslog): RFC 6587 framing, RFC 5424 and RFC 3164 headers.

The contract: both framings, mixed on one stream and however it is chunked, yield every message; header fields
round-trip into attributes and the payload is the MSG part byte for byte (always a suffix of the frame); a bad
header never loses a message; a corrupt octet count ends the stream with a ProtocolError; nothing else raises.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from logdist.model import Message
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.records import StreamIds
from logdist.wire.severity import NOTICE
from logdist.wire.syslog import FACILITIES, SyslogDecoder, parse_syslog

printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).filter(
    lambda s: s != "-"
)
sd_name = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='=]" '), min_size=1,
                  max_size=10)  # fmt: skip
stamps = st.sampled_from(
    ["2003-10-11T22:14:15.003Z", "2003-08-24T05:14:15.000003-07:00", "1985-04-12T23:20:50.52Z", "2024-05-01T12:00:00Z"]
)


def run(decoder: SyslogDecoder, chunks: list[bytes]) -> tuple[list[Message], list[ProtocolError]]:
    messages: list[Message] = []
    errors: list[ProtocolError] = []
    for result in [*(decoder.feed(c) for c in chunks), decoder.finish()]:
        if result.block is not None:
            messages.extend(result.block.messages())
        if result.error is not None:
            errors.append(result.error)
    return messages, errors


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- headers: examples -----------------------------------------------------------------------------


def test_rfc5424_examples() -> None:
    payload, severity, attrs = parse_syslog(
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed for lonvick"
    )
    assert payload == b"\xef\xbb\xbf'su root' failed for lonvick"  # MSG exactly, BOM included
    assert severity == 2 * 32
    assert attrs == {"facility": "auth", "timestamp": "2003-10-11T22:14:15.003Z", "host": "mymachine.example.com",
                     "app": "su", "msgid": "ID47"}  # fmt: skip
    payload, severity, attrs = parse_syslog(
        b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
        b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'
    )
    assert payload == b"" and severity == 5 * 32
    assert attrs["facility"] == "local4" and attrs["app"] == "evntslog"
    assert attrs["sd.exampleSDID@32473.eventSource"] == "Application"
    assert attrs["sd.exampleSDID@32473.iut"] == "3" and attrs["sd.examplePriority@32473.class"] == "high"
    _, _, attrs = parse_syslog(b'<13>1 - - - - - [x a="q\\"uote" b="back\\\\slash" c="br\\]ack" d="\\n"] m')
    assert (attrs["sd.x.a"], attrs["sd.x.b"], attrs["sd.x.c"], attrs["sd.x.d"]) == ('q"uote', "back\\slash", "br]ack",
                                                                                 "\\n")  # fmt: skip
    assert "timestamp" not in attrs and "host" not in attrs


def test_util_linux_logger_formats() -> None:
    payload, severity, attrs = parse_syslog(
        b'<155>1 2026-11-29T09:28:50.735564+00:00 vm myapp 42 MID [timeQuality tzKnown="1" isSynced="0"]'
        b'[ex@1 k="v\\"x"] hello world  x'
    )
    assert payload == b"hello world  x" and severity == 3 * 32
    assert attrs["facility"] == "local3" and attrs["procid"] == "42" and attrs["msgid"] == "MID"
    assert attrs["sd.ex@1.k"] == 'v"x' and attrs["sd.timeQuality.tzKnown"] == "1"
    payload, severity, attrs = parse_syslog(b"<13>Nov 29 09:28:50 vm root: hello world  x")
    assert payload == b"hello world  x" and severity == 5 * 32
    assert attrs == {"facility": "user", "timestamp_rfc3164": "Nov 29 09:28:50", "host": "vm", "app": "root"}


def test_rfc3164_variants() -> None:
    cases = {
        b"<13>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8": (
            b"'su root' failed for lonvick on /dev/pts/8", {"host": "mymachine", "app": "su"}),
        b"<13>Oct  1 02:03:04 host sshd[1234]: Accepted key": (
            b"Accepted key", {"host": "host", "app": "sshd", "procid": "1234"}),
        b"<13>Oct  1 02:03:04 cron[99]: ran job": (b"ran job", {"app": "cron", "procid": "99"}),
        b"<13>Oct  1 02:03:04.123 host app:no space": (b"no space", {"host": "host", "app": "app"}),
        b"<13>Oct  1 02:03:04 host just text here": (b"just text here", {"host": "host"}),
        b"<13>2024-05-01T12:00:00.5+02:00 web1 nginx: GET /": (
            b"GET /", {"timestamp": "2024-05-01T12:00:00.5+02:00", "host": "web1", "app": "nginx"}),
        b"<13>no timestamp: all content": (b"no timestamp: all content", {}),
        b"<13>Foo 11 22:14:15 host app: bad month": (b"Foo 11 22:14:15 host app: bad month", {}),
        b"<13>": (b"", {}),
    }  # fmt: skip
    for frame, (payload, fields) in cases.items():
        got_payload, severity, attrs = parse_syslog(frame)
        attrs.pop("timestamp_rfc3164", None)
        assert (got_payload, severity, attrs) == (payload, NOTICE, {"facility": "user", **fields}), frame


def test_bad_pri_keeps_the_whole_frame_as_user_notice() -> None:
    for frame in (b"no pri at all", b"<192>1 - - - - - - m", b"<>x", b"<1a>x", b"<1234>x", b"<13", b"", b"<-1>x"):
        assert parse_syslog(frame) == (frame, NOTICE, {"facility": "user"}), frame


def test_bad_rfc5424_header_keeps_everything_after_pri_with_a_reason() -> None:
    for frame, reason in (
        (b"<11>1 2003-10-11 host app - - - m", "TIMESTAMP"),
        (b"<11>1 - host app - -", "incomplete"),
        (b"<11>1 - host app - - [bad", "STRUCTURED-DATA"),
        (b'<11>1 - host app - - [id a="1"]x', "not a space"),
        (b"<11>1 - host app - - [id a=1] m", "PARAM-VALUE"),
        (b"<11>1 - h\xc3\xa9 app - - - m", "HOST"),
        (b"<11>1 - host app - - x m", "STRUCTURED-DATA"),
    ):
        payload, severity, attrs = parse_syslog(frame)
        assert payload == frame[4:] and severity == 3 * 32, frame
        assert set(attrs) == {"facility", "parse_error"} and reason in attrs["parse_error"], (frame, attrs)


# -- headers: properties ---------------------------------------------------------------------------

nil_or = st.one_of(st.none(), printable)


def sd_escape(value: str) -> str:
    """RFC 5424 PARAM-VALUE escaping: backslash before '"', '\\' and ']'."""
    return re.sub(r'([\\"\]])', r"\\\1", value)


@st.composite
def rfc5424(draw: st.DrawFn) -> tuple[bytes, dict]:
    pri = draw(st.integers(0, 191))
    stamp, host, app, procid, msgid = draw(st.one_of(st.none(), stamps)), draw(nil_or), draw(nil_or), draw(nil_or), \
        draw(nil_or)  # fmt: skip
    elements = draw(st.dictionaries(sd_name, st.dictionaries(sd_name, st.text(max_size=10), max_size=3), max_size=3))
    msg = draw(st.one_of(st.none(), st.binary(max_size=40)))
    sd = (
        "".join(
            "[" + sid + "".join(f' {k}="{sd_escape(v)}"' for k, v in params.items()) + "]"
            for sid, params in elements.items()
        )
        or "-"
    )
    head = f"<{pri}>1 {stamp or '-'} {host or '-'} {app or '-'} {procid or '-'} {msgid or '-'} {sd}".encode()
    frame = head + (b" " + msg if msg is not None else b"")
    want = {"facility": FACILITIES[pri // 8]}
    for key, value in (("timestamp", stamp), ("host", host), ("app", app), ("procid", procid), ("msgid", msgid)):
        if value is not None:
            want[key] = value
    for sid, params in elements.items():
        want[f"sd.{sid}"] = ""
        for k, v in params.items():
            want[f"sd.{sid}.{k}"] = v
    return frame, {"payload": msg or b"", "severity": pri % 8 * 32, "attributes": want}


@settings(max_examples=300, deadline=None)
@given(rfc5424())
def test_rfc5424_round_trips(case: tuple[bytes, dict]) -> None:
    frame, want = case
    payload, severity, attrs = parse_syslog(frame)
    assert {"payload": payload, "severity": severity, "attributes": attrs} == want


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 191), st.sampled_from(["Jan", "Feb", "Dec"]), st.integers(1, 31), st.integers(0, 23),
       st.integers(0, 59), printable.filter(lambda s: not s.endswith(":") and "[" not in s),
       st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True), st.one_of(st.none(), st.integers(0, 99999)),
       st.binary(max_size=40))  # fmt: skip
def test_rfc3164_round_trips(
    pri: int, month: str, day: int, hour: int, minute: int, host: str, tag: str, pid: int | None, msg: bytes
) -> None:
    stamp = f"{month} {day:2d} {hour:02d}:{minute:02d}:07"
    frame = f"<{pri}>{stamp} {host} {tag}{'' if pid is None else f'[{pid}]'}: ".encode() + msg
    payload, severity, attrs = parse_syslog(frame)
    assert payload == msg and severity == pri % 8 * 32
    want = {"facility": FACILITIES[pri // 8], "timestamp_rfc3164": stamp, "host": host, "app": tag}
    if pid is not None:
        want["procid"] = str(pid)
    assert attrs == want


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=120), rfc5424().map(lambda c: c[0][: len(c[0]) // 2]),
                 st.builds(lambda p, b: b"<%d>" % p + b, st.integers(0, 999), st.binary(max_size=80))))  # fmt: skip
def test_any_frame_parses_without_raising(frame: bytes) -> None:
    payload, severity, attrs = parse_syslog(frame)
    assert frame.endswith(payload)
    assert severity % 32 == 0 and 0 <= severity <= 224
    assert attrs["facility"] in FACILITIES
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items())


# -- framing ---------------------------------------------------------------------------------------

frames_st = st.lists(
    st.tuples(st.binary(min_size=1, max_size=50).map(lambda b: b"<13>" + b), st.booleans()), max_size=20
)


@settings(max_examples=300, deadline=None)
@given(frames_st, st.lists(st.integers(0, 5000), max_size=8))
def test_mixed_framings_round_trip_whatever_the_chunking(frames: list[tuple[bytes, bool]], cuts: list[int]) -> None:
    data = b""
    expected: list[bytes] = []
    for frame, counted in frames:
        if counted:
            data += b"%d " % len(frame) + frame
            expected.append(frame)
        else:
            line = frame.replace(b"\n", b" ").removesuffix(b"\r")
            data += line + b"\n"
            expected.append(line)
    ids = StreamIds(stream=7)
    messages, errors = run(SyslogDecoder(ids, clock=lambda: 3), split_at(data, cuts))
    assert not errors
    assert [parse_syslog(f)[0] for f in expected] == [m.payload for m in messages]
    assert [m.seq for m in messages] == list(range(len(expected)))
    assert {m.stream for m in messages} <= {7} and {m.ts_ns for m in messages} <= {3}


def test_one_block_per_chunk_and_crlf() -> None:
    result = SyslogDecoder().feed(b"<13>a\r\n5 <13>b<13>c\n\n")
    assert result.block is not None and result.error is None
    assert [m.payload for m in result.block.messages()] == [b"a", b"b", b"c"]


def test_unterminated_last_frame_at_eof() -> None:
    decoder = SyslogDecoder()
    messages, _ = run(decoder, [b"<13>one\n<13>two"])
    assert [m.payload for m in messages] == [b"one", b"two"]
    decoder = SyslogDecoder()
    messages, _ = run(decoder, [b"<13>one\n20 <13>cut"])
    assert [m.payload for m in messages] == [b"one"] and decoder.buffered == 10  # a cut counted frame is no message


def test_corrupt_octet_counts_end_the_stream_after_the_frames_before() -> None:
    for data, code, text in (
        (b"<13>ok\n12x <13>m", ErrorCode.BAD_FRAME, "not a number"),
        (b"<13>ok\n0 ", ErrorCode.BAD_FRAME, "count 0"),
        (b"<13>ok\n99999999 <13>m", ErrorCode.FRAME_TOO_LARGE, "exceeds the limit of 1048576"),
        (b"<13>ok\n1048577 ", ErrorCode.FRAME_TOO_LARGE, "octet count 1048577 exceeds"),
        (b"<13>ok\n2024-05-01 no pri\n", ErrorCode.BAD_FRAME, "not a number"),
    ):
        decoder = SyslogDecoder()
        messages, errors = run(decoder, [data])
        assert [m.payload for m in messages] == [b"ok"], data
        assert len(errors) == 1 and errors[0].code == code and text in errors[0].reason, (data, errors)
        assert decoder.feed(b"<13>more\n").error is not None


def test_digits_arriving_one_by_one_wait_for_the_space() -> None:
    decoder = SyslogDecoder(max_message=1000)
    for byte in b"12":
        assert decoder.feed(bytes([byte])) == decoder.feed(b"")
    result = decoder.feed(b" <13>abcdefgh")
    assert result.block is not None and next(result.block.messages()).payload == b"abcdefgh"
    assert SyslogDecoder(max_message=1000).feed(b"10000").error is not None  # 5 digits > "1000": absurd


def test_over_long_newline_frames_end_the_stream() -> None:
    decoder = SyslogDecoder(max_message=100)
    assert decoder.feed(b"<13>" + b"x" * 96).error is None
    result = decoder.feed(b"y")
    assert result.error is not None and result.error.code == ErrorCode.FRAME_TOO_LARGE


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8), st.integers(1, 300))
def test_garbage_streams_never_raise(chunks: list[bytes], limit: int) -> None:
    decoder = SyslogDecoder(max_message=limit)
    messages, errors = run(decoder, chunks)
    assert all(len(m.payload) <= limit for m in messages)
    assert all(isinstance(e, ProtocolError) for e in errors)
