"""Sans-IO codec of the ``syslog`` ingest: syslog over TCP (RFC 6587) with RFC 5424 and RFC 3164 headers.

Framing, decided per frame by its first byte: a digit starts octet counting (``LEN SP MSG``), anything else is
non-transparent framing (the frame ends at ``\\n``; one ``\\r`` before it is dropped; empty frames are skipped).
A corrupt octet count (not a number, zero, longer than the limit) ends the stream with a :class:`ProtocolError`.

Headers (see :func:`parse_syslog`): PRI gives facility and severity (logdist severity = syslog severity * 32);
RFC 5424 (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD [MSG]``) and RFC 3164
(``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG``) fields become attributes; the payload is the MSG part, byte for
byte. A message is never dropped for a bad header: without a valid PRI the whole frame is the payload at
user.notice (RFC 3164 section 4.3.3); with a valid PRI but a malformed RFC 5424 header, everything after PRI is
the payload and a ``parse_error`` attribute says what was wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from logdist.wire.batch import MessageBlock
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.records import Decoded, StreamIds, build_block, encode_attributes, parse_rfc3339
from logdist.wire.severity import NOTICE

DEFAULT_MAX_MESSAGE = 1024 * 1024
FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
)  # fmt: skip
_SP = 0x20
_MONTHS = frozenset(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_TIME_3164 = re.compile(rb"([A-Z][a-z]{2}) ([ 0-3][0-9]) ([0-2][0-9]):([0-5][0-9]):([0-5][0-9]|60)(\.[0-9]{1,6})?")
_TAG = re.compile(rb"([^\s:\[\]]{1,48})(?:\[([^\s\[\]]{1,128})\])?:( ?)")
_SD_ESCAPE = re.compile(rb'\\([\\"\]])')
_FIELD_LIMITS = (("host", 255), ("app", 48), ("procid", 128), ("msgid", 32))


class _HeaderError(ValueError):
    """A malformed RFC 5424 header (turned into a ``parse_error`` attribute, never raised out of the codec)."""


def parse_syslog(frame: bytes) -> tuple[bytes, int, dict[str, str]]:
    """One syslog message -> ``(payload, severity 0-255, attributes)``; never raises.

    The payload is always a suffix of ``frame``.
    """
    close = frame.find(b">", 1, 5) if frame[:1] == b"<" else -1
    digits = frame[1:close]
    if close < 0 or not digits.isdigit() or int(digits) > 191:
        return frame, NOTICE, {"facility": "user"}  # RFC 3164 4.3.3: no valid PRI -> user.notice, all content
    facility, severity = divmod(int(digits), 8)
    attributes = {"facility": FACILITIES[facility]}
    rest = frame[close + 1 :]
    if rest[:2] == b"1 ":
        try:
            payload = _parse_5424(rest, attributes)
        except _HeaderError as exc:
            attributes = {"facility": FACILITIES[facility], "parse_error": str(exc)}
            payload = rest
    else:
        payload = _parse_3164(rest, attributes)
    return payload, severity * 32, attributes


def _header_field(value: bytes, name: str, limit: int) -> str | None:
    if value == b"-":
        return None
    if not value or len(value) > limit or not all(33 <= c <= 126 for c in value):
        raise _HeaderError(f"RFC 5424 {name} {value[:64]!r} is not 1-{limit} printable ASCII characters")
    return value.decode("ascii")


def _parse_5424(rest: bytes, attributes: dict[str, str]) -> bytes:
    parts = rest.split(b" ", 6)
    if len(parts) < 7:
        raise _HeaderError("RFC 5424 header is incomplete (want VERSION TIMESTAMP HOST APP PROCID MSGID SD)")
    stamp = parts[1]
    if stamp != b"-":
        try:
            text = stamp.decode("ascii")
            parse_rfc3339(text)
        except (UnicodeDecodeError, ValueError):
            raise _HeaderError(f"RFC 5424 TIMESTAMP {stamp[:64]!r} is not an RFC 3339 timestamp") from None
        attributes["timestamp"] = text
    for (name, limit), value in zip(_FIELD_LIMITS, parts[2:6], strict=True):
        text = _header_field(value, name.upper(), limit)
        if text is not None:
            attributes[name] = text
    data = parts[6]
    end = _parse_structured_data(data, attributes)
    if end == len(data):
        return b""
    if data[end] != _SP:
        raise _HeaderError(f"RFC 5424 STRUCTURED-DATA is followed by {data[end : end + 1]!r}, not a space")
    return data[end + 1 :]


def _sd_name(data: bytes, start: int, stops: bytes, what: str) -> int:
    """End index of an SD-NAME starting at ``start`` (1-32 printable ASCII, none of ``= ] " SP``)."""
    i = start
    n = len(data)
    while i < n and data[i] not in stops:
        c = data[i]
        if c < 33 or c > 126 or c in b'="]':
            raise _HeaderError(f"RFC 5424 {what} contains {bytes([c])!r}")
        i += 1
    if not 1 <= i - start <= 32:
        raise _HeaderError(f"RFC 5424 {what} {data[start:i][:40]!r} is not 1-32 characters")
    if i >= n:
        raise _HeaderError(f"RFC 5424 STRUCTURED-DATA ends inside {what}")
    return i


def _parse_structured_data(data: bytes, attributes: dict[str, str]) -> int:
    """Parse SD-ELEMENTs (or ``-``) at the start of ``data`` into ``sd.ID.PARAM`` attributes; the end index."""
    if data[:1] == b"-":
        return 1
    if data[:1] != b"[":
        raise _HeaderError(f"RFC 5424 STRUCTURED-DATA starts with {data[:1]!r}, not '[' or '-'")
    i = 0
    n = len(data)
    while i < n and data[i] == 0x5B:  # "["
        end = _sd_name(data, i + 1, b" ]", "SD-ID")
        sd_id = data[i + 1 : end].decode("ascii")
        attributes[f"sd.{sd_id}"] = ""
        i = end
        while data[i] == _SP:
            eq = _sd_name(data, i + 1, b"=", "PARAM-NAME")
            name = data[i + 1 : eq].decode("ascii")
            if data[eq + 1 : eq + 2] != b'"':
                raise _HeaderError(f"RFC 5424 PARAM-VALUE of {name!r} does not start with '\"'")
            start = eq + 2
            quote = _closing_quote(data, start)
            value = _SD_ESCAPE.sub(rb"\1", data[start:quote]).decode("utf-8", "replace")
            attributes[f"sd.{sd_id}.{name}"] = value
            i = quote + 1
            if i >= n:
                raise _HeaderError("RFC 5424 STRUCTURED-DATA ends inside an SD-ELEMENT")
        if data[i] != 0x5D:  # "]"
            raise _HeaderError(f"RFC 5424 SD-ELEMENT has {data[i : i + 1]!r} where ']' or a space belongs")
        i += 1
    return i


def _closing_quote(data: bytes, start: int) -> int:
    """Index of the first unescaped ``"`` from ``start`` on."""
    k = start
    while True:
        quote = data.find(b'"', k)
        if quote < 0:
            raise _HeaderError("RFC 5424 PARAM-VALUE has no closing '\"'")
        backslashes = 0
        while quote - 1 - backslashes >= start and data[quote - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return quote
        k = quote + 1


def _parse_3164(rest: bytes, attributes: dict[str, str]) -> bytes:
    """RFC 3164 ``TIMESTAMP HOSTNAME TAG: MSG``; without a valid timestamp all of ``rest`` is the content."""
    match = _TIME_3164.match(rest)
    if match is not None and _valid_3164_time(match) and rest[match.end() : match.end() + 1] == b" ":
        attributes["timestamp_rfc3164"] = match.group(0).decode("ascii")
        rest = rest[match.end() + 1 :]
    else:
        stamp, sp, after = rest.partition(b" ")  # an RFC 3339 timestamp in a traditional header (rsyslog does that)
        try:
            text = stamp.decode("ascii")
            parse_rfc3339(text)
        except (UnicodeDecodeError, ValueError):
            return rest
        if not sp:
            return rest
        attributes["timestamp"] = text
        rest = after
    word, sp, after = rest.partition(b" ")
    if sp and word and not word.endswith(b":") and b"[" not in word:
        attributes["host"] = word.decode("utf-8", "replace")
        rest = after
    tag = _TAG.match(rest)
    if tag is None:
        return rest
    attributes["app"] = tag.group(1).decode("utf-8", "replace")
    if tag.group(2) is not None:
        attributes["procid"] = tag.group(2).decode("utf-8", "replace")
    return rest[tag.end() :]


def _valid_3164_time(match: re.Match[bytes]) -> bool:
    month, day, hour = match.group(1), match.group(2), match.group(3)
    return month in _MONTHS and 1 <= int(day.strip() or b"0") <= 31 and int(hour) <= 23


class SyslogDecoder:
    """Turns a syslog TCP byte stream into one block per :meth:`feed` of the messages it completes."""

    __slots__ = ("_buf", "_digits", "_error", "clock", "ids", "max_message")

    def __init__(
        self,
        ids: StreamIds | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.ids = ids or StreamIds()
        self.max_message = max_message
        self.clock = clock
        self._digits = len(str(max_message))
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held."""
        return len(self._buf)

    def feed(self, data: bytes) -> Decoded:
        """Add ``data``; the frames it completes as one block, and the error that ends the stream, if any."""
        if self._error is not None:
            return Decoded(error=ProtocolError(ErrorCode.BAD_FRAME, "the stream already failed and cannot resume"))
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        error: ProtocolError | None = None
        try:
            while pos < end:
                if 0x30 <= buf[pos] <= 0x39:  # octet counting
                    frame, pos = self._counted(buf, pos, end)
                else:
                    frame, pos = self._terminated(buf, pos, end)
                if frame is None:
                    break
                if frame:
                    frames.append(frame)
        except ProtocolError as exc:
            error = self._error = exc
            pos = end
        del buf[:pos]
        return Decoded(self._block(frames), error)

    def finish(self) -> Decoded:
        """At the end of the stream: an unterminated non-transparent frame, if any, as a block.

        An unfinished octet-counted frame is not a message (it was cut short); see :attr:`buffered`.
        """
        buf = self._buf
        if self._error is not None or not buf or 0x30 <= buf[0] <= 0x39:
            return Decoded()
        frame = bytes(buf).removesuffix(b"\r")
        buf.clear()
        return Decoded(self._block([frame] if frame else []))

    def _counted(self, buf: bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
        digits_end = buf.find(b" ", pos, pos + self._digits + 1)
        head = bytes(buf[pos : digits_end if digits_end >= 0 else min(end, pos + self._digits + 1)])
        if not head.isdigit():
            raise ProtocolError(ErrorCode.BAD_FRAME, f"corrupt octet count {head[:20]!r}: not a number")
        if digits_end < 0:
            if end - pos > self._digits:
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"octet count {head[:20].decode()}... exceeds the limit of {self.max_message} bytes",
                )
            return None, pos
        length = int(head)
        if length > self.max_message:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"octet count {length} exceeds the limit of {self.max_message} bytes"
            )
        if length == 0:
            raise ProtocolError(ErrorCode.BAD_FRAME, "corrupt octet count 0: a message has at least one byte")
        stop = digits_end + 1 + length
        if stop > end:
            return None, pos
        return bytes(buf[digits_end + 1 : stop]), stop

    def _terminated(self, buf: bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
        newline = buf.find(b"\n", pos)
        if newline < 0:
            if end - pos > self.max_message:
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"syslog message of {end - pos}+ bytes without a newline exceeds the limit of {self.max_message}",
                )
            return None, pos
        stop = newline - 1 if newline > pos and buf[newline - 1] == 0x0D else newline
        if stop - pos > self.max_message:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"syslog message of {stop - pos} bytes exceeds the limit of {self.max_message} bytes",
            )
        return bytes(buf[pos:stop]), newline + 1

    def _block(self, frames: list[bytes]) -> MessageBlock | None:
        if not frames:
            return None
        payloads: list[bytes] = []
        severities: list[int] = []
        attributes: list[bytes] = []
        for frame in frames:
            payload, severity, attrs = parse_syslog(frame)
            payloads.append(payload)
            severities.append(severity)
            attributes.append(encode_attributes(attrs))
        return build_block(self.ids, self.clock(), payloads, severities, attributes)
