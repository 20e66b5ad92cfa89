"""HTTP ingest (kind ``http``): ``POST /v1/packets`` (JSON) and ``POST /v1/logs`` (NDJSON) on aiohttp's low-level
server (measured faster than ``web.Application``: see benchmarks/http_ingest.json).

The codec (:mod:`logdist.wire.http_json`) does all parsing; this module reads bodies within the size limit, picks
the message stream (one per ``agent_id``, or per connection for ``/v1/logs`` without ``X-Agent-Id``), hands one
block per request to the sink and answers. Backpressure: while the distributor has paused ingest, new requests
get 429 with ``Retry-After: 1`` (HTTP cannot stop reading in the middle of a request).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from logdist.ingest.base import IngestSink
from logdist.runtime import parse_hostport
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.http_json import (
    DEFAULT_MAX_BODY,
    Endpoint,
    RequestError,
    accepted_body,
    body_too_large,
    check_request,
    decode_body,
    decode_ndjson,
    decode_packet,
    error_body,
    error_status,
)
from logdist.wire.records import StreamIds, build_block

_ids = itertools.count(1)
MAX_AGENT_STREAMS = 65536  # agents remembered; the oldest is forgotten (and gets a new stream) beyond this
AGENT_HEADER = "X-Agent-Id"
JSON = "application/json"


@dataclass(slots=True, eq=False)
class HttpClient:
    """The peer of one bad request, as reported to the sink (HTTP requests are not paused or closed one by one)."""

    peer: str
    conn_id: int

    def pause(self) -> None:
        """Nothing to do: the listener's :class:`HttpGate` pauses all HTTP ingest at once."""

    def resume(self) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do: a bad request does not end its connection."""


@dataclass(slots=True, eq=False)
class HttpGate:
    """What the sink sees of an HTTP listener: one ingest connection whose pause() turns requests into 429s."""

    peer: str
    conn_id: int
    paused: bool = False
    closing: bool = False

    def pause(self) -> None:
        """Answer new requests with 429 and ``Retry-After: 1`` until :meth:`resume`."""
        self.paused = True

    def resume(self) -> None:
        """Accept requests again."""
        self.paused = False

    def close(self) -> None:
        """Answer new requests with 503 (shutting down)."""
        self.closing = True


class _Server(web.Server):
    """aiohttp's low-level server, telling the listener when a connection ends (to forget its stream)."""

    def __init__(self, listener: HttpIngest) -> None:
        super().__init__(listener.handle, access_log=None, auto_decompress=False)
        self.listener = listener

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.listener.connection_streams.pop(handler, None)


class HttpIngest:
    """The ``http`` listener (a :class:`~logdist.ingest.listeners.Listener`)."""

    kind = "http"

    def __init__(self, sink: IngestSink, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.sink = sink
        self.max_body = max_body
        self.address = "?"
        self.gate = HttpGate("http", next(_ids))
        self.agent_streams: dict[str, StreamIds] = {}
        self.connection_streams: dict[object, StreamIds] = {}
        self.requests = 0
        self.messages = 0
        self._web = _Server(self)
        self._server: asyncio.base_events.Server | None = None

    async def start(self, address: str) -> HttpIngest:
        """Bind ``address`` (port 0: any free port; :attr:`address` tells which) and register with the sink."""
        host, port = parse_hostport(address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web, host, port, reuse_address=True, backlog=1024)
        sock_host, sock_port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{sock_host}:{sock_port}"
        self.gate.peer = f"http {self.address}"
        self.sink.register(self.gate)
        return self

    async def close(self) -> None:
        """Stop accepting connections; finish requests in progress (up to 2 s) and close the rest."""
        self.gate.closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
            await self._web.shutdown(2.0)
            self.sink.unregister(self.gate)

    # -- requests ----------------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request: 202 ``{"accepted": n}``, or an error status with ``{"error", "field"}``."""
        self.requests += 1
        headers = request.headers
        encoding = headers.get(hdrs.CONTENT_ENCODING)
        try:
            endpoint = check_request(
                request.method,
                request.path,
                headers.get(hdrs.CONTENT_TYPE),
                encoding,
                headers.get(hdrs.CONTENT_LENGTH),
                self.max_body,
            )
        except RequestError as exc:
            return self._refuse(request, exc, close=True)
        gate = self.gate
        if gate.closing:
            return _retry_later(503, "the distributor is shutting down")
        if gate.paused:
            return _retry_later(429, "the distributor is holding too much undelivered data; retry shortly")
        try:
            body = decode_body(await self._read(request), encoding, self.max_body)
            if endpoint is Endpoint.PACKETS:
                agent, records = decode_packet(body)
                ids = self._agent_stream(agent)
            else:
                agent = headers.get(AGENT_HEADER)
                records = decode_ndjson(body, {"agent_id": agent} if agent else None)
                ids = self._agent_stream(agent) if agent else self._connection_stream(request.protocol)
        except ProtocolError as exc:
            return self._refuse(request, exc, close=False)  # aiohttp drains the rest (<= 10 s) or closes
        count = len(records.payloads)
        if count:
            self.sink.accept(build_block(ids, time.time_ns(), *records))
            self.messages += count
        return web.Response(status=202, body=accepted_body(count), content_type=JSON)

    async def _read(self, request: web.BaseRequest) -> bytes:
        """The raw body, never more than ``max_body`` bytes (a chunked body is checked while it is read)."""
        content = request.content
        limit = self.max_body
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise body_too_large(limit)
                chunks.append(chunk)
        except (HttpProcessingError, OSError, asyncio.IncompleteReadError) as exc:
            raise RequestError(ErrorCode.BAD_FRAME, f"request body could not be read: {exc}") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _refuse(self, request: web.BaseRequest, error: ProtocolError, close: bool) -> web.Response:
        status = error_status(error)
        self.sink.bad_input(HttpClient(f"{request.remote} via {self.gate.peer}", self.gate.conn_id), error)
        response = web.Response(status=status, body=error_body(error), content_type=JSON)
        if status == 405:
            response.headers[hdrs.ALLOW] = "POST"
        if close:  # refused on its headers: do not read a body of unknown size, close after answering
            response.force_close()
        return response

    def _agent_stream(self, agent: str) -> StreamIds:
        streams = self.agent_streams
        ids = streams.get(agent)
        if ids is None:
            if len(streams) >= MAX_AGENT_STREAMS:
                del streams[next(iter(streams))]
            ids = streams[agent] = StreamIds()
        return ids

    def _connection_stream(self, connection: object) -> StreamIds:
        ids = self.connection_streams.get(connection)
        if ids is None:
            ids = self.connection_streams[connection] = StreamIds()
        return ids


def _retry_later(status: int, reason: str) -> web.Response:
    body = error_body(ProtocolError(ErrorCode.SHUTTING_DOWN if status == 503 else ErrorCode.UNKNOWN, reason))
    return web.Response(status=status, body=body, content_type=JSON, headers={hdrs.RETRY_AFTER: "1"})
