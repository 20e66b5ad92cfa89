"""Ingest listeners by kind: each binds an address and feeds accepted blocks to the distributor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from logdist.ingest.base import IngestSink
from logdist.ingest.legacy import LegacyIngest
from logdist.ingest.native import NativeIngest
from logdist.runtime import parse_hostport


class Listener(Protocol):
    """A bound ingest endpoint."""

    kind: str
    address: str  # the bound HOST:PORT (port 0 resolved)

    async def close(self) -> None: ...


class ServerListener:
    """A listener backed by an ``asyncio`` server of ``asyncio.Protocol`` connections."""

    def __init__(self, kind: str, server: asyncio.base_events.Server) -> None:
        self.kind = kind
        self.server = server
        host, port = server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"

    async def close(self) -> None:
        """Stop accepting new connections (existing ones are closed by the distributor)."""
        self.server.close()


async def _protocol_listener(kind: str, address: str, factory: Callable[[], asyncio.Protocol]) -> ServerListener:
    host, port = parse_hostport(address)
    server = await asyncio.get_running_loop().create_server(factory, host, port, reuse_address=True, backlog=1024)
    return ServerListener(kind, server)


async def start_native(address: str, sink: IngestSink, server_id: str, max_frame: int) -> Listener:
    """The native protocol (acked batches)."""
    return await _protocol_listener("native", address, lambda: NativeIngest(sink, server_id, max_frame))


async def start_legacy(address: str, sink: IngestSink, server_id: str, max_frame: int) -> Listener:
    """The original Go system's emitter protocol (length+severity frames, no acks)."""
    return await _protocol_listener("legacy", address, lambda: LegacyIngest(sink, max_frame))


ListenerStarter = Callable[[str, IngestSink, str, int], Awaitable[Listener]]

# kind -> starter(address, sink, server_id, max_frame). Other protocols register here.
STARTERS: dict[str, ListenerStarter] = {"native": start_native, "legacy": start_legacy}
