"""Ingest listeners by kind: each binds an address and feeds accepted blocks to the distributor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from logdist.ingest.base import IngestSink
from logdist.ingest.legacy import LegacyIngest
from logdist.ingest.lines import lines_ingest, syslog_ingest
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
    """The native protocol (acked batches); ack mode and dedup window come from the sink."""
    ack_mode = sink.ack_mode_for(address)
    return await _protocol_listener(
        "native", address, lambda: NativeIngest(sink, server_id, max_frame, ack_mode=ack_mode, dedup=sink.dedup)
    )


async def start_legacy(address: str, sink: IngestSink, server_id: str, max_frame: int) -> Listener:
    """The original Go system's emitter protocol (length+severity frames, no acks)."""
    return await _protocol_listener("legacy", address, lambda: LegacyIngest(sink, max_frame))


async def start_lines(address: str, sink: IngestSink, server_id: str, max_frame: int) -> Listener:
    """Newline-delimited messages (plain text or JSON objects), one stream per connection."""
    return await _protocol_listener("lines", address, lambda: lines_ingest(sink))


async def start_syslog(address: str, sink: IngestSink, server_id: str, max_frame: int) -> Listener:
    """Syslog over TCP (RFC 6587 octet counting or newline framing; RFC 5424 and RFC 3164 headers)."""
    return await _protocol_listener("syslog", address, lambda: syslog_ingest(sink))


async def start_http(address: str, sink: IngestSink, server_id: str, max_frame: int) -> Listener:
    """The HTTP JSON API (``POST /v1/packets``, ``POST /v1/logs``); bodies up to ``max_frame`` bytes."""
    from logdist.ingest.http import HttpIngest  # aiohttp: imported only when an HTTP listener is wanted

    return await HttpIngest(sink, max_body=max_frame).start(address)


ListenerStarter = Callable[[str, IngestSink, str, int], Awaitable[Listener]]

# kind -> starter(address, sink, server_id, max_frame). Other protocols register here.
STARTERS: dict[str, ListenerStarter] = {
    "native": start_native,
    "legacy": start_legacy,
    "http": start_http,
    "lines": start_lines,
    "syslog": start_syslog,
}
