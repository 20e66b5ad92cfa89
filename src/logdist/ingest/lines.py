"""Text stream ingest over TCP: kinds ``lines`` (newline-delimited) and ``syslog`` (RFC 6587 framing).

One connection is one message stream with a random id. Each ``data_received`` chunk becomes at most one block.
Bad input (an over-long line, a corrupt octet count) is logged and counted by the sink, and closes only that
connection; the messages before it in the same chunk are still accepted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from logdist.ingest.base import IngestSink, TcpIngest
from logdist.wire.lines import DEFAULT_MAX_LINE, LineDecoder
from logdist.wire.records import Decoded, StreamIds
from logdist.wire.syslog import DEFAULT_MAX_MESSAGE, SyslogDecoder

log = logging.getLogger("logdist.ingest.text")


class StreamDecoder(Protocol):
    """What :class:`TextIngest` needs of a codec."""

    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes) -> Decoded: ...
    def finish(self) -> Decoded: ...


class TextIngest(TcpIngest):
    """One ``lines`` or ``syslog`` connection."""

    def __init__(self, sink: IngestSink, kind: str, decoder: StreamDecoder, ids: StreamIds) -> None:
        self.sink = sink
        self.kind = kind
        self.peer = "?"
        self.conn_id = ids.stream
        self.messages = 0
        self._decoder = decoder
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{self.kind} {peer[0]}:{peer[1]}" if peer else self.kind
        self.sink.register(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._decoder.buffered:  # a clean EOF (eof_received) would have taken it: this one was cut short
            log.warning("%s closed with %d bytes of an unfinished message", self.peer, self._decoder.buffered)
        self.sink.unregister(self)

    def eof_received(self) -> bool:
        """The peer finished sending: its unterminated last line is a message too."""
        self._take(self._decoder.finish())
        return False  # close our side as well

    def data_received(self, data: bytes) -> None:
        if not self._closing:
            self._take(self._decoder.feed(data))

    def _take(self, decoded: Decoded) -> None:
        if decoded.block is not None:
            self.messages += decoded.block.count
            self.sink.accept(decoded.block)
        if decoded.error is not None:
            self.sink.bad_input(self, decoded.error)
            self.close()


def lines_ingest(sink: IngestSink, max_line: int = DEFAULT_MAX_LINE) -> TextIngest:
    """A ``lines`` connection."""
    ids = StreamIds()
    return TextIngest(sink, "lines", LineDecoder(ids, max_line), ids)


def syslog_ingest(sink: IngestSink, max_message: int = DEFAULT_MAX_MESSAGE) -> TextIngest:
    """A ``syslog`` connection."""
    ids = StreamIds()
    return TextIngest(sink, "syslog", SyslogDecoder(ids, max_message), ids)
