"""The ``lines`` ingest codec (logdist.wire.lines).

The contract: every line becomes one message, whatever the chunking, with the payload byte for byte; JSON lines
with a ``message`` become structured messages; over-long lines end the stream with a ProtocolError while the
lines before them are kept; garbage never raises.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logdist.model import Message
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.lines import LineDecoder, parse_line
from logdist.wire.records import Decoded, StreamIds
from logdist.wire.severity import INFO

plain_lines = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"\n" not in b and not b.startswith(b"{") and not b.endswith(b"\r")
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run(decoder: LineDecoder, chunks: list[bytes], finish: bool = True) -> tuple[list[Message], list[ProtocolError]]:
    messages: list[Message] = []
    errors: list[ProtocolError] = []
    results: list[Decoded] = [decoder.feed(c) for c in chunks]
    if finish:
        results.append(decoder.finish())
    for result in results:
        if result.block is not None:
            assert result.block.count > 0
            messages.extend(result.block.messages())
        if result.error is not None:
            errors.append(result.error)
    return messages, errors


@given(st.lists(plain_lines, max_size=30), st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_lines_round_trip_whatever_the_chunking(lines: list[bytes], cuts: list[int], crlf: bool) -> None:
    sep = b"\r\n" if crlf else b"\n"
    data = b"".join(line + sep for line in lines)
    ids = StreamIds(stream=99)
    messages, errors = run(LineDecoder(ids, clock=lambda: 5), split_at(data, cuts))
    assert not errors
    assert [m.payload for m in messages] == lines
    assert {m.severity for m in messages} <= {INFO}
    assert [m.seq for m in messages] == list(range(len(lines)))
    assert {m.stream for m in messages} <= {99} and {m.ts_ns for m in messages} <= {5}
    assert all(m.attributes == {} for m in messages)


def test_one_block_per_chunk() -> None:
    result = LineDecoder().feed(b"a\nb\nc\npartial")
    assert result.block is not None and result.block.count == 3 and result.error is None


def test_empty_lines_are_skipped_and_the_unterminated_last_line_counts_at_eof() -> None:
    decoder = LineDecoder()
    messages, errors = run(decoder, [b"\n\r\none\n\n", b"two", b" halves"])
    assert [m.payload for m in messages] == [b"one", b"two halves"]
    assert decoder.buffered == 0 and not errors


def test_json_lines_are_structured() -> None:
    line = json.dumps({"message": "disk full", "level": "error", "source": "df", "attributes": {"dev": "sda"}})
    payload, severity, _ = parse_line(line.encode())
    assert (payload, severity) == (b"disk full", 96)
    (msg,), _ = run(LineDecoder(), [line.encode() + b"\n"])
    assert msg.attributes == {"dev": "sda", "source": "df"}


def test_other_lines_starting_with_a_brace_are_plain_text() -> None:
    for text in (b"{not json}", b'{"msg": "other shape"}', b"{", b'{"message": "a"} trailing'):
        assert parse_line(text) == (text, INFO, b"")


def test_a_structured_line_that_fails_validation_is_kept_whole_with_the_reason() -> None:
    line = b'{"message": "m", "level": "loud"}'
    (msg,), _ = run(LineDecoder(), [line + b"\n"])
    assert msg.payload == line and msg.severity == INFO
    assert msg.attributes["parse_error"].startswith("level: unknown level 'loud'")


@given(st.integers(1, 3), st.integers(0, 5))
def test_an_over_long_line_ends_the_stream_after_the_lines_before_it(extra: int, before: int) -> None:
    decoder = LineDecoder(max_line=100)
    data = b"".join(b"ok%d\n" % i for i in range(before)) + b"x" * (100 + extra) + b"\nafter\n"
    messages, errors = run(decoder, [data])
    assert [m.payload for m in messages] == [b"ok%d" % i for i in range(before)]
    assert len(errors) == 1 and errors[0].code == ErrorCode.FRAME_TOO_LARGE
    assert "exceeds the limit of 100 bytes" in errors[0].reason
    again = decoder.feed(b"more\n")
    assert again.block is None and isinstance(again.error, ProtocolError)


def test_an_over_long_unterminated_line_is_caught_before_its_newline() -> None:
    decoder = LineDecoder(max_line=100)
    assert decoder.feed(b"x" * 60).error is None
    assert decoder.feed(b"y" * 40).error is None
    result = decoder.feed(b"z")
    assert result.error is not None and result.error.code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0
    decoder = LineDecoder(max_line=100)
    result = decoder.feed(b"fine\n" + b"w" * 101)
    assert result.block is not None and result.block.count == 1 and result.error is not None


def test_a_line_of_exactly_the_limit_is_fine() -> None:
    messages, errors = run(LineDecoder(max_line=100), [b"q" * 100 + b"\n", b"r" * 100])
    assert not errors and [len(m.payload) for m in messages] == [100, 100]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10), st.integers(1, 200))
def test_garbage_never_raises(chunks: list[bytes], max_line: int) -> None:
    decoder = LineDecoder(max_line=max_line)
    try:
        messages, errors = run(decoder, chunks)
    except Exception as exc:  # pragma: no cover - the assertion below explains
        pytest.fail(f"the decoder raised {exc!r}")
    assert len(errors) <= len(chunks) + 1
    assert all(len(m.payload) <= max_line for m in messages)
