"""Admin HTTP API on its own port.

``/stats`` (JSON snapshot), ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (can take and deliver
traffic) and ``/debug/profile?seconds=N`` (cProfile of the event loop, text).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from logdist.control import metrics, profiling
from logdist.runtime import parse_hostport

if TYPE_CHECKING:
    from logdist.distributor import Distributor

# A readiness check returns None when satisfied, else why not (a short sentence for the /readyz body).
ReadinessCheck = Callable[[], str | None]


def listener_serving(listener: Any) -> bool:
    """Whether an ingest listener still accepts connections (True when it cannot tell)."""
    is_serving = getattr(listener, "is_serving", None)
    if callable(is_serving):
        return bool(is_serving())
    for attr in ("server", "_server"):
        if hasattr(listener, attr):
            server = getattr(listener, attr)
            return server is not None and bool(server.is_serving())
    return True


def _routable(link: Any) -> bool:
    return link.state == "up" and not getattr(link, "drained", False)


def _state(link: Any) -> str:
    return "drained" if link.state == "up" and getattr(link, "drained", False) else str(link.state)


class AdminServer:
    """A small aiohttp application bound to the distributor it reports on."""

    def __init__(self, distributor: Distributor, middlewares: Iterable[Any] = ()) -> None:
        self.distributor = distributor
        self.address: str | None = None
        self._runner: web.AppRunner | None = None
        self.registry = metrics.build_registry(distributor)
        # name -> check; /readyz is 503 while any fails. Built in: listeners, analyzers. The spool adds its own:
        #     admin.add_readiness_check("spool", spool.readiness)   # None when writable, else the reason
        self.readiness_checks: dict[str, ReadinessCheck] = {
            "listeners": self._listeners_ready,
            "analyzers": self._analyzers_ready,
        }
        app = web.Application(middlewares=list(middlewares))
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/debug/profile", profiling.handle_profile)
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

    # -- readiness ---------------------------------------------------------------------------------

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Make /readyz also require ``check()`` to return None (it returns the reason otherwise)."""
        self.readiness_checks[name] = check

    def _listeners_ready(self) -> str | None:
        listeners = self.distributor.listeners
        if self.distributor.listen_address is None or not listeners:
            return "not listening yet"
        down = [f"{lst.kind} {lst.address}" for lst in listeners if not listener_serving(lst)]
        return f"listeners not accepting: {', '.join(down)}" if down else None

    def _analyzers_ready(self) -> str | None:
        links = self.distributor.links
        if any(_routable(link) for link in links.values()):
            return None
        if not links:
            return "no analyzer configured or connected"
        states = ", ".join(f"{name}: {_state(link)}" for name, link in sorted(links.items()))
        return f"no analyzer is up ({states})"

    def readiness(self) -> dict[str, Any]:
        """The /readyz body: ``ready``, the names of the failed checks in ``missing``, and their reasons."""
        reasons: dict[str, str] = {}
        for name, check in self.readiness_checks.items():
            try:
                reason = check()
            except Exception as exc:  # a broken check means not ready, and says why
                reason = f"check failed: {exc!r}"
            if reason is not None:
                reasons[name] = reason
        dist = self.distributor
        return {
            "ready": not reasons,
            "missing": list(reasons),
            "reasons": reasons,
            "listening": dist.listen_address is not None,
            "analyzers_up": sum(1 for link in dist.links.values() if _routable(link)),
        }

    # -- handlers ----------------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.distributor.stats())

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = metrics.render(self.registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        uptime = time.monotonic() - self.distributor.started_at
        return web.json_response({"status": "alive", "uptime_s": round(uptime, 3)})

    async def _readyz(self, request: web.Request) -> web.Response:
        body = self.readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)
