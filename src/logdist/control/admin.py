"""Admin HTTP API on its own port: /stats (JSON snapshot), /healthz (alive), /readyz (can deliver)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from logdist.runtime import parse_hostport

if TYPE_CHECKING:
    from logdist.distributor import Distributor


class AdminServer:
    """A small aiohttp application bound to the distributor it reports on."""

    def __init__(self, distributor: Distributor) -> None:
        self.distributor = distributor
        self.address: str | None = None
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self.app = app

    async def start(self, address: str) -> None:
        """Bind to ``address`` (port 0 picks a free port; ``self.address`` tells which)."""
        host, port = parse_hostport(address)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sock_host, sock_port = server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.address = f"{sock_host}:{sock_port}"

    async def stop(self) -> None:
        """Close the listener."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.distributor.stats())

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        table = self.distributor.router.table
        listening = self.distributor.listen_address is not None
        ready = listening and bool(table.names)
        body = {"ready": ready, "listening": listening, "analyzers_up": len(table.names)}
        return web.json_response(body, status=200 if ready else 503)
