"""What every ingest connection offers, and what it needs from the distributor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from logdist.ingest.dedup import DedupWindow
from logdist.wire.batch import MessageBlock
from logdist.wire.errors import ProtocolError
from logdist.wire.native import AckStatus


class IngestConnection(Protocol):
    """One emitter connection of any protocol."""

    peer: str
    conn_id: int

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def close(self) -> None: ...


class IngestSink(Protocol):
    """Where accepted blocks go, and who controls reading (backpressure)."""

    dedup: DedupWindow | None  # retransmitted batches of emitter sessions (native protocol)

    def ack_mode_for(self, address: str) -> str: ...
    def accept(self, block: MessageBlock, durable: Callable[[AckStatus], None] | None = None) -> None: ...
    def register(self, conn: IngestConnection) -> None: ...
    def unregister(self, conn: IngestConnection) -> None: ...
    def bad_input(self, conn: IngestConnection, error: ProtocolError) -> None: ...


class TcpIngest(asyncio.Protocol):
    """Plumbing every TCP ingest connection shares: reading control for backpressure, and closing."""

    _transport: asyncio.Transport | None = None
    _closing = False
    sink: IngestSink
    peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.sink.register(self)  # type: ignore[arg-type]

    def pause(self) -> None:
        """Stop reading (TCP backpressure)."""
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self._transport is not None and not self._closing and not self._transport.is_reading():
            self._transport.resume_reading()

    def close(self) -> None:
        """Close the connection (after what was written so far has been sent)."""
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.close()
