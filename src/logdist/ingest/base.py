"""What every ingest connection offers, and what it needs from the distributor."""

from __future__ import annotations

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
