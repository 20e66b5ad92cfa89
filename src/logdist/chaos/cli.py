"""Run a fault-injecting TCP proxy in front of a server until SIGINT/SIGTERM.

Prints {"event": "ready", "listen", "upstream", "control", "pid"} once listening. With --control, a small
HTTP API changes the faults at runtime (each answers with the new state as JSON; 400 on a bad value):

  POST /latency?ms=..&jitter_ms=..   POST /bandwidth?bps=..  (0 or none: unlimited)   POST /reset
  POST /blackhole?on=1|0             POST /corrupt?p=..&direction=both|up|down
  POST /pause   POST /resume         POST /refuse?on=1|0     GET /state
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable

from aiohttp import web

from logdist import runtime
from logdist.chaos.proxy import ChaosProxy

log = logging.getLogger("logdist.chaos")


class ControlServer:
    """The HTTP control API of one proxy."""

    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.address: str | None = None
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/state", self._state)
        for path, action in {
            "/latency": lambda q: proxy.set_latency(_number(q, "ms", 0.0), _number(q, "jitter_ms", 0.0)),
            "/bandwidth": lambda q: proxy.set_bandwidth(int(_number(q, "bps", 0.0)) or None),
            "/reset": lambda q: proxy.reset(),
            "/blackhole": lambda q: proxy.blackhole(_flag(q)),
            "/corrupt": lambda q: proxy.corrupt(_number(q, "p", 0.0), q.get("direction", "both")),  # type: ignore[arg-type]
            "/pause": lambda q: proxy.pause(),
            "/resume": lambda q: proxy.resume(),
            "/refuse": lambda q: proxy.refuse(_flag(q)),
        }.items():
            app.router.add_post(path, self._handler(action))
        self.app = app

    async def start(self, address: str) -> str:
        """Bind to ``address`` (port 0: any free port); returns the bound ``host:port``."""
        host, port = runtime.parse_hostport(address)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sock_host, sock_port = server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.address = f"{sock_host}:{sock_port}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _handler(self, action: Callable[[dict[str, str]], object]) -> Callable[[web.Request], object]:
        async def handle(request: web.Request) -> web.Response:
            try:
                action(dict(request.query))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(self.proxy.state())

        return handle

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.proxy.state())


def _number(query: dict[str, str], key: str, default: float) -> float:
    text = query.get(key)
    if text is None or text == "" or text.lower() == "none":
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None


def _flag(query: dict[str, str]) -> bool:
    text = query.get("on", "1").lower()
    if text not in ("1", "0", "true", "false", "on", "off"):
        raise ValueError(f"on={text!r}: expected 1 or 0")
    return text in ("1", "true", "on")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``logdist chaos``."""
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="where clients connect")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the server to forward to")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="one-way delay added in each direction")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="± uniform jitter on the delay")
    parser.add_argument(
        "--bandwidth", type=int, default=None, metavar="BYTES_PER_S", help="cap per direction (0: none)"
    )
    parser.add_argument("--corrupt", type=float, default=0.0, metavar="P", help="per-byte corruption probability")
    parser.add_argument("--corrupt-direction", choices=("both", "up", "down"), default="both")
    parser.add_argument("--max-buffer-kb", type=int, default=1024, help="bytes held per direction per connection")
    parser.add_argument("--seed", type=int, default=None, help="seed of the jitter and corruption generators")
    parser.add_argument("--control", metavar="HOST:PORT", help="serve the HTTP control API here")
    parser.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")


def main(args: argparse.Namespace) -> int:
    """Run the proxy until SIGINT/SIGTERM."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        proxy = ChaosProxy(args.listen, args.upstream, max_buffer=args.max_buffer_kb * 1024, seed=args.seed)
        proxy.set_latency(args.latency_ms, args.jitter_ms)
        proxy.set_bandwidth(args.bandwidth or None)
        proxy.corrupt(args.corrupt, args.corrupt_direction)
        if args.control:
            runtime.parse_hostport(args.control)
    except ValueError as exc:
        print(f"logdist chaos: {exc}", file=sys.stderr)
        return 2

    async def amain(stop: asyncio.Event) -> int:
        control = ControlServer(proxy) if args.control else None
        try:
            await proxy.start()
            if control is not None:
                await control.start(args.control)
        except OSError as exc:
            print(f"logdist chaos: cannot listen: {exc}", file=sys.stderr)
            await proxy.close()
            return 1
        runtime.announce(
            "ready",
            listen=proxy.address,
            upstream=proxy.upstream,
            control=control.address if control else None,
            pid=os.getpid(),
        )
        await stop.wait()
        if control is not None:
            await control.stop()
        await proxy.close()
        runtime.announce("stopped", **proxy.state()["stats"])
        return 0

    return runtime.run(amain)
