"""Sans-IO codec of the ``lines`` ingest: newline-delimited messages over TCP.

Each line (without its ``\\n``, and without one ``\\r`` before it) is a message; empty lines are skipped. A line
that is a JSON object with a string ``message`` field is decoded like an HTTP message (level, timestamp, source,
attributes); any other line, including JSON that fails validation, is kept whole as the payload at severity
info (a JSON object with a ``message`` field that fails validation gets a ``parse_error`` attribute saying why).
A line longer than the limit ends the stream with a :class:`ProtocolError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from logdist.wire.batch import MessageBlock
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.http_json import RequestError, decode_log_line
from logdist.wire.records import Decoded, StreamIds, build_block, encode_attributes
from logdist.wire.severity import INFO

DEFAULT_MAX_LINE = 1024 * 1024
_MISSING_MESSAGE = "Object missing required field `message`"


def parse_line(line: bytes) -> tuple[bytes, int, bytes]:
    """One line (no terminator) -> ``(payload, severity, encoded attributes)``; never raises."""
    if line[:1] != b"{":
        return line, INFO, b""
    try:
        return decode_log_line(line)
    except RequestError as exc:
        if exc.field is None or exc.reason.startswith(_MISSING_MESSAGE):
            return line, INFO, b""  # not a structured message: plain text that starts with "{"
        return line, INFO, encode_attributes({"parse_error": f"{exc.field}: {exc.reason}"})


class LineDecoder:
    """Turns a byte stream into one block per :meth:`feed` of the whole lines it completes."""

    __slots__ = ("_error", "_pending", "_size", "clock", "ids", "max_line")

    def __init__(
        self, ids: StreamIds | None = None, max_line: int = DEFAULT_MAX_LINE, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.ids = ids or StreamIds()
        self.max_line = max_line
        self.clock = clock
        self._pending: list[bytes] = []  # the unterminated last line, in chunks
        self._size = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unterminated line held."""
        return self._size

    def feed(self, data: bytes) -> Decoded:
        """Add ``data``; the lines it completes as one block, and the error that ends the stream, if any."""
        if self._error is not None:
            return Decoded(error=ProtocolError(ErrorCode.BAD_FRAME, "the stream already failed and cannot resume"))
        end = data.rfind(b"\n")
        if end < 0:
            if data:
                self._pending.append(bytes(data))
                self._size += len(data)
                if self._size > self.max_line:
                    return Decoded(error=self._fail(self._size))
            return Decoded()
        if self._pending:
            data = b"".join((*self._pending, data))
            end += self._size
            self._pending = []
        rest = data[end + 1 :]
        lines = data[:end].split(b"\n")
        error: ProtocolError | None = None
        if max(map(len, lines)) > self.max_line:
            bad = next(i for i, line in enumerate(lines) if len(line) > self.max_line)
            error = self._fail(len(lines[bad]))
            lines = lines[:bad]
        elif len(rest) > self.max_line:
            error = self._fail(len(rest))
        else:
            if rest:
                self._pending.append(bytes(rest))
            self._size = len(rest)
        return Decoded(self._block(lines), error)

    def finish(self) -> Decoded:
        """At the end of the stream: the unterminated last line, if any, as a block."""
        if self._error is not None or not self._pending:
            return Decoded()
        line = b"".join(self._pending)
        self._pending = []
        self._size = 0
        return Decoded(self._block([line]))

    def _fail(self, length: int) -> ProtocolError:
        self._error = ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"line of {length}+ bytes exceeds the limit of {self.max_line} bytes"
        )
        self._pending = []
        self._size = 0
        return self._error

    def _block(self, lines: list[bytes]) -> MessageBlock | None:
        payloads: list[bytes] = []
        severities: list[int] = []
        attributes: list[bytes] = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                continue
            if line[0] == 0x7B:  # "{"
                payload, severity, attrs = parse_line(line)
            else:
                payload, severity, attrs = line, INFO, b""
            payloads.append(payload)
            severities.append(severity)
            attributes.append(attrs)
        if not payloads:
            return None
        return build_block(self.ids, self.clock(), payloads, severities, attributes)
