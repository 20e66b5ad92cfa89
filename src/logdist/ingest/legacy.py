"""Ingest for the original Go system's emitters: length+severity frames, no handshake, no acks."""

from __future__ import annotations

import asyncio
import logging
import secrets

from logdist.ingest.base import IngestSink, TcpIngest
from logdist.wire.errors import ProtocolError
from logdist.wire.legacy import DEFAULT_MAX_MESSAGE, LegacyFrameDecoder

log = logging.getLogger("logdist.ingest.legacy")


class LegacyIngest(TcpIngest):
    """One legacy emitter connection; each connection is a message stream with its own random id.

    The protocol has no error frame: a malformed frame is logged with the peer and reason, counted, and only
    this connection is closed.
    """

    def __init__(self, sink: IngestSink, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.sink = sink
        self.peer = "?"
        self.conn_id = secrets.randbits(63)
        self.messages = 0
        self._decoder = LegacyFrameDecoder(stream=self.conn_id, max_message=max_message)
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._decoder.buffered:
            log.warning(
                "legacy emitter %s closed with %d bytes of an unfinished frame", self.peer, self._decoder.buffered
            )
        self.sink.unregister(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            block = self._decoder.feed(data)
        except ProtocolError as exc:
            self.sink.bad_input(self, exc)
            self.close()
            return
        if block is not None:
            self.messages += block.count
            self.sink.accept(block)
