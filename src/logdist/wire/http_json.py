"""Sans-IO codec of the HTTP JSON ingest API (see docs/protocols.md).

* ``POST /v1/packets`` (``application/json``): ``{packet_id, agent_id, messages: [message, ...]}``;
* ``POST /v1/logs`` (``application/x-ndjson``): one message object per line;

a message is ``{message, level?, timestamp?, source?, attributes?}``. Request bodies may be gzip or zstd
encoded. A request is all or nothing: the first invalid message rejects it, with an error naming the field,
e.g. ``messages[3].level``. Every error is a :class:`RequestError` (a :class:`ProtocolError`) carrying the HTTP
status to answer with.
"""

from __future__ import annotations

import re
import zlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, NamedTuple

import msgspec
from msgspec import to_builtins

from logdist.wire.compression import decompress
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.records import encode_attributes, ns_to_rfc3339, number_to_ns
from logdist.wire.severity import INFO, level_to_severity

DEFAULT_MAX_BODY = 64 * 1024 * 1024
_MAX_GZIP_MEMBERS = 1024
_ERROR_PATH = re.compile(r" - at `\$(.*)`$")
_MISSING_FIELD = re.compile(r"Object missing required field `(.*)`")


class Endpoint(StrEnum):
    """The ingest routes."""

    PACKETS = "/v1/packets"
    LOGS = "/v1/logs"


CONTENT_TYPES: dict[Endpoint, frozenset[str]] = {
    Endpoint.PACKETS: frozenset({"application/json"}),
    Endpoint.LOGS: frozenset({"application/x-ndjson", "application/ndjson"}),
}
ENCODINGS = frozenset({"identity", "gzip", "x-gzip", "zstd"})


class LogIn(msgspec.Struct):
    """One message as emitters send it; unknown fields are ignored."""

    message: str
    level: str | int = "info"
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)] | int | float | None = None  # RFC 3339 / unix s / unix ns
    source: str | None = None
    attributes: dict[str, str] = {}


class PacketIn(msgspec.Struct):
    """A packet of messages from one agent."""

    packet_id: str
    agent_id: str
    messages: list[LogIn]


class Records(NamedTuple):
    """Decoded messages in columns, ready for :func:`logdist.wire.records.build_block`."""

    payloads: list[bytes]
    severities: list[int]
    attributes: list[bytes]


class RequestError(ProtocolError):
    """A request that cannot be accepted: the HTTP ``status`` to answer and, if known, the offending ``field``."""

    def __init__(self, code: ErrorCode, reason: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(code, f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.status = status
        self.field = field


_packet_decoder = msgspec.json.Decoder(PacketIn)
_log_decoder = msgspec.json.Decoder(LogIn)
_json_encoder = msgspec.json.Encoder()
_attr_encode = msgspec.msgpack.Encoder().encode


# -- request line and headers ------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``."""
    return (content_type or "").partition(";")[0].strip().lower()


def check_request(
    method: str,
    path: str,
    content_type: str | None,
    content_encoding: str | None,
    content_length: str | None,
    max_body: int,
) -> Endpoint:
    """Validate what is known before the body is read; the endpoint, or RequestError (404, 405, 415, 413, 400)."""
    try:
        endpoint = Endpoint(path)
    except ValueError:
        raise RequestError(
            ErrorCode.UNEXPECTED_FRAME, f"no such endpoint {path[:200]!r}; use /v1/packets or /v1/logs", 404
        ) from None
    if method != "POST":
        raise RequestError(ErrorCode.UNEXPECTED_FRAME, f"{endpoint} takes POST, not {method[:20]}", 405)
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES[endpoint]:
        wanted = " or ".join(sorted(CONTENT_TYPES[endpoint]))
        raise RequestError(ErrorCode.BAD_BATCH, f"{endpoint} takes Content-Type {wanted}, not {kind!r}", 415)
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise RequestError(
            ErrorCode.BAD_BATCH, f"Content-Encoding {encoding[:40]!r} is not supported (gzip, zstd, identity)", 415
        )
    if content_length is not None:
        if not (content_length.isascii() and content_length.isdigit()):
            raise RequestError(ErrorCode.BAD_FRAME, f"Content-Length {content_length[:40]!r} is not a number")
        if int(content_length) > max_body:
            raise body_too_large(max_body)
    return endpoint


def body_too_large(max_body: int) -> RequestError:
    """The 413 error for a body over ``max_body`` bytes."""
    return RequestError(ErrorCode.FRAME_TOO_LARGE, f"request body exceeds the limit of {max_body} bytes", 413)


# -- body ------------------------------------------------------------------------------------------


def decode_body(body: bytes, content_encoding: str | None, max_size: int) -> bytes:
    """Undo the Content-Encoding (gzip, zstd); more than ``max_size`` decompressed bytes -> 413."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(body, max_size)
    if encoding == "zstd":
        try:
            return decompress("zstd", body, max_size)
        except ProtocolError as exc:
            if exc.code == ErrorCode.FRAME_TOO_LARGE:
                raise body_too_large(max_size) from None
            raise RequestError(ErrorCode.BAD_BATCH, exc.reason) from None
    raise RequestError(ErrorCode.BAD_BATCH, f"Content-Encoding {encoding[:40]!r} is not supported", 415)


def _gunzip(data: bytes, max_size: int) -> bytes:
    """Decompress one or more concatenated gzip members, never producing more than ``max_size + 1`` bytes."""
    parts: list[bytes] = []
    size = 0
    rest = data
    for _ in range(_MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(rest, max_size - size + 1)
        except zlib.error as exc:
            raise RequestError(ErrorCode.BAD_BATCH, f"gzip body does not decompress: {exc}") from None
        size += len(out)
        if size > max_size:
            raise body_too_large(max_size)
        parts.append(out)
        if not inflater.eof:
            raise RequestError(ErrorCode.BAD_BATCH, "gzip body is truncated")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
    raise RequestError(ErrorCode.BAD_BATCH, f"gzip body has more than {_MAX_GZIP_MEMBERS} members")


def _decode_error(exc: Exception, prefix: str) -> RequestError:
    """A msgspec error -> RequestError with the JSON path turned into a field name (``messages[3].level``)."""
    if isinstance(exc, UnicodeDecodeError):
        return RequestError(ErrorCode.BAD_BATCH, f"body is not valid UTF-8: {exc.reason} at byte {exc.start}", 400)
    text = str(exc)
    match = _ERROR_PATH.search(text)
    path = match.group(1) if match is not None else ""
    reason = text[: match.start()] if match is not None else text
    missing = _MISSING_FIELD.fullmatch(reason)
    if missing is not None:
        path += "." + missing.group(1)
    return RequestError(ErrorCode.BAD_BATCH, reason, 400, (prefix + path).lstrip(".") or None)


def _field(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _severity(level: str | int) -> int:
    return INFO if level == "info" else level_to_severity(level)


def _stamps(messages: list[LogIn]) -> list[str | None]:
    """The messages' timestamps as RFC 3339 text (datetimes rendered in C, to the microsecond; numbers exact)."""
    stamps = to_builtins([msg.timestamp for msg in messages])
    for i, value in enumerate(stamps):
        if value is not None and type(value) is not str:
            stamps[i] = ns_to_rfc3339(number_to_ns(value))
    return stamps


def _attributes(msg: LogIn, stamp: str | None, extra: dict[str, str]) -> bytes:
    """The encoded attributes of ``msg``: its own, then source and timestamp, then ``extra`` (later ones win)."""
    source = msg.source
    if stamp is not None:
        if source is not None:
            return _attr_encode({**msg.attributes, "source": source, "timestamp": stamp, **extra})
        return _attr_encode({**msg.attributes, "timestamp": stamp, **extra})
    if source is not None:
        return _attr_encode({**msg.attributes, "source": source, **extra})
    return encode_attributes({**msg.attributes, **extra})


def _records(messages: list[LogIn], extra: dict[str, str], names: list[str] | None, prefix: str) -> Records:
    """Columns of ``messages``; on an invalid level or timestamp, a RequestError naming the first bad field.

    ``names[i]`` (or ``prefix[i]``) names message ``i`` in errors.
    """
    try:
        stamps = _stamps(messages)
        encode = _attr_encode
        return Records(
            [msg.message.encode() for msg in messages],
            [INFO if msg.level == "info" else level_to_severity(msg.level) for msg in messages],
            [
                encode({**msg.attributes, "source": msg.source, "timestamp": stamp, **extra})  # the common case
                if stamp is not None and msg.source is not None
                else _attributes(msg, stamp, extra)
                for msg, stamp in zip(messages, stamps, strict=True)
            ],
        )
    except ValueError:
        pass  # find the first offending message to name it (slow path, errors only)
    for i, msg in enumerate(messages):
        where = names[i] if names is not None else f"{prefix}[{i}]"
        try:
            _severity(msg.level)
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_BATCH, str(exc), 400, _field(where, "level")) from None
        try:
            _stamps([msg])
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_BATCH, str(exc), 400, _field(where, "timestamp")) from None
    raise RequestError(ErrorCode.BAD_BATCH, "invalid message", 400)  # not reached: the fast path failed somewhere


def decode_packet(body: bytes) -> tuple[str, Records]:
    """A ``/v1/packets`` body -> ``(agent_id, records)``; attributes gain source, agent_id and packet_id."""
    try:
        packet = _packet_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _decode_error(exc, "") from None
    extra = {"agent_id": packet.agent_id, "packet_id": packet.packet_id}
    return packet.agent_id, _records(packet.messages, extra, None, "messages")


def decode_ndjson(body: bytes, extra: dict[str, str] | None = None) -> Records:
    """A ``/v1/logs`` body: one message object per line (blank lines skipped; errors name ``lines[i]``, 0-based)."""
    decode = _log_decoder.decode
    messages: list[LogIn] = []
    names: list[str] = []
    for i, line in enumerate(body.split(b"\n")):
        if not line or line.isspace():
            continue
        try:
            messages.append(decode(line))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise _decode_error(exc, f"lines[{i}]") from None
        names.append(f"lines[{i}]")
    return _records(messages, extra or {}, names, "lines")


def decode_log_line(line: bytes) -> tuple[bytes, int, bytes]:
    """One JSON message object (a ``lines`` ingest line) -> ``(payload, severity, attributes)``.

    Raises RequestError like :func:`decode_ndjson` does (fields without a line prefix).
    """
    try:
        msg = _log_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _decode_error(exc, "") from None
    out = _records([msg], {}, [""], "")
    return out.payloads[0], out.severities[0], out.attributes[0]


# -- answers ---------------------------------------------------------------------------------------


def accepted_body(count: int) -> bytes:
    """The 202 answer."""
    return b'{"accepted":%d}' % count


def error_status(error: ProtocolError) -> int:
    """The HTTP status for ``error``."""
    if isinstance(error, RequestError):
        return error.status
    if error.code == ErrorCode.FRAME_TOO_LARGE:
        return 413
    if error.code == ErrorCode.UNAUTHORIZED:
        return 401
    if error.code == ErrorCode.SHUTTING_DOWN:
        return 503
    return 400


def error_body(error: ProtocolError) -> bytes:
    """``{"error": reason, "field": "messages[3].level" | null}``."""
    field = error.field if isinstance(error, RequestError) else None
    return _json_encoder.encode({"error": error.reason, "field": field})
