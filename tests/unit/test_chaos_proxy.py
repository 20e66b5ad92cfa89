"""The chaos proxy in-process, in front of a tiny echo server: each fault does what it says, and no more."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import uvloop

from logdist.chaos import ChaosProxy
from logdist.chaos.cli import ControlServer

pytestmark = pytest.mark.timeout(60)

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test coroutine on the default asyncio loop and on uvloop (the CLI's loop)."""
    return uvloop.run if request.param == "uvloop" else asyncio.run  # type: ignore[return-value]


class Upstream(asyncio.Protocol):
    """One connection to :class:`EchoServer`."""

    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.accepted += 1
        self.server.transports.append(self.transport)
        if not self.server.reading:  # uvloop ignores pause_reading() within connection_made: pause just after
            asyncio.get_running_loop().call_soon(transport.pause_reading)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.server.received += len(data)
        if self.server.echo and self.transport is not None:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost.append(exc)


class EchoServer:
    """Echoes (or with ``echo=False`` just counts) what it receives; with ``reading=False`` it never reads."""

    def __init__(self, echo: bool = True, reading: bool = True) -> None:
        self.echo = echo
        self.reading = reading
        self.accepted = 0
        self.received = 0
        self.lost: list[Exception | None] = []
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Upstream(self), "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for transport in self.transports:
            transport.abort()


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the loop until it is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


async def with_proxy(
    body: Callable[[ChaosProxy, EchoServer], Awaitable[None]], server: EchoServer | None = None, **kwargs: Any
) -> None:
    """Start an echo server and a proxy in front of it, run ``body``, close both."""
    server = server or EchoServer()
    upstream = await server.start()
    proxy = ChaosProxy("127.0.0.1:0", upstream, **kwargs)
    await proxy.start()
    try:
        await body(proxy, server)
    finally:
        await proxy.close()
        server.close()


async def connect(proxy: ChaosProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = (proxy.address or "").rpartition(":")
    return await asyncio.open_connection(host, int(port), limit=1 << 20)


async def echo(proxy: ChaosProxy, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` through the proxy on a new connection; what comes back and the seconds it took."""
    reader, writer = await connect(proxy)
    try:
        started = time.monotonic()
        writer.write(data)
        back = await asyncio.wait_for(reader.readexactly(len(data)), timeout)
        return back, time.monotonic() - started
    finally:
        writer.close()


def test_bytes_pass_unchanged_both_ways_and_a_half_close_is_passed_on(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        data = os.urandom(3 * 1024 * 1024)
        reader, writer = await connect(proxy)
        writer.write(data)
        writer.write_eof()
        back = await asyncio.wait_for(reader.read(), 10)  # until EOF: the echo server closes after our FIN
        assert back == data
        writer.close()
        await until(lambda: not proxy.links, what="the proxy forgets the closed connection")
        assert proxy.state()["stats"]["bytes_up"] == proxy.state()["stats"]["bytes_down"] == len(data)

    run(with_proxy(body))


def test_latency_delays_each_direction_and_jitter_keeps_order(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        proxy.set_latency(100)
        _, took = await echo(proxy, b"ping")
        assert 0.2 <= took < 1.0, f"100 ms each way: round trip took {took * 1000:.0f} ms"
        proxy.set_latency(20, jitter_ms=15)
        reader, writer = await connect(proxy)
        chunks = [b"%05d|" % i for i in range(200)]
        for chunk in chunks:
            writer.write(chunk)
            await asyncio.sleep(0)
        back = await asyncio.wait_for(reader.readexactly(sum(map(len, chunks))), 10)
        assert back == b"".join(chunks), "jitter must not reorder bytes"
        writer.close()

    run(with_proxy(body))


def test_bandwidth_caps_throughput(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        proxy.set_bandwidth(400_000)
        data = os.urandom(200_000)
        back, took = await echo(proxy, data)
        assert back == data
        assert 0.4 <= took < 1.5, f"200 kB at 400 kB/s took {took:.2f} s"
        proxy.set_bandwidth(None)
        _, took = await echo(proxy, data)
        assert took < 0.3, "lifting the cap restores full speed"

    run(with_proxy(body))


def test_corrupt_flips_bytes_in_the_chosen_direction_only(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        data = os.urandom(100_000)
        proxy.corrupt(1.0)
        back, _ = await echo(proxy, data)
        assert back != data and proxy.stats["corrupted_bytes"] == 2 * len(data)  # twice: XORs may cancel out
        proxy.corrupt(1.0, direction="up")
        proxy.corrupt(0.0, direction="down")
        back, _ = await echo(proxy, data)
        assert all(a != b for a, b in zip(back, data, strict=True)), "p=1 one way: every byte changes"
        proxy.corrupt(0.01, direction="down")
        proxy.corrupt(0.0, direction="up")
        back, _ = await echo(proxy, data)
        flipped = sum(a != b for a, b in zip(back, data, strict=True))
        assert 800 <= flipped <= 1200, f"p=0.01 over 100 kB: ~1000 bytes expected, {flipped} flipped"
        proxy.corrupt(0.0)
        back, _ = await echo(proxy, data)
        assert back == data

    run(with_proxy(body, seed=7))


def test_blackhole_drops_both_ways_without_closing_and_heals_for_new_connections(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        reader, writer = await connect(proxy)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        proxy.blackhole(True)
        writer.write(b"lost in the partition")
        await writer.drain()
        await until(lambda: proxy.stats["dropped_bytes"] >= 21, what="bytes dropped")
        late_reader, late_writer = await connect(proxy)  # accepted, but never dialled upstream
        late_writer.write(b"nobody hears this")
        await until(lambda: proxy.stats["dropped_bytes"] >= 21 + 17, what="the late connection's bytes dropped")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)  # nothing comes back, and no EOF either
        assert server.received == 5 and server.accepted == 1 and not server.lost
        assert not writer.is_closing() and not reader.at_eof() and not late_reader.at_eof()
        proxy.blackhole(False)
        back, _ = await echo(proxy, b"after healing")
        assert back == b"after healing"
        writer.close()
        late_writer.close()

    run(with_proxy(body))


def test_reset_aborts_every_connection_with_rst(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        clients = [await connect(proxy) for _ in range(3)]
        for reader, writer in clients:
            writer.write(b"x")
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
        assert proxy.reset() == 3
        for reader, writer in clients:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 5)
            writer.close()
        await until(lambda: len(server.lost) == 3, what="the upstream side is aborted too")
        back, _ = await echo(proxy, b"new connections still work")
        assert back == b"new connections still work"

    run(with_proxy(body))


def test_pause_stops_delivery_with_backpressure_and_resume_loses_nothing(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        reader, writer = await connect(proxy)
        writer.write(b"warm")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"warm"
        proxy.pause()
        data = os.urandom(32 * 1024 * 1024)  # more than every kernel buffer on the way can take
        writer.write(data)
        late_reader, late_writer = await connect(proxy)  # accepted while paused: read at most once, then paused
        late_writer.write(data)
        await asyncio.sleep(0.3)  # a negative check: nothing may arrive while paused
        assert server.received == 4
        assert proxy.stats["received_up"] <= 4 + 2 * 256 * 1024, "the proxy stops reading: senders see backpressure"
        assert proxy.state()["held_bytes"] <= 2 * 256 * 1024
        proxy.resume()
        back, late_back = await asyncio.wait_for(
            asyncio.gather(reader.readexactly(len(data)), late_reader.readexactly(len(data))), 20
        )
        assert back == data and late_back == data
        late_writer.close()

    run(with_proxy(body, max_buffer=256 * 1024))


def test_a_slow_upstream_pushes_backpressure_to_the_client_with_bounded_memory(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        _, writer = await connect(proxy)
        size = 48 * 1024 * 1024
        writer.write(os.urandom(size))
        await until(lambda: proxy.state()["held_bytes"] >= 256 * 1024, what="the proxy fills its buffer")
        await asyncio.sleep(0.3)  # give an unbounded proxy time to show itself
        held = proxy.state()["held_bytes"]
        assert held <= 3 * 256 * 1024 + 512 * 1024, f"proxy holds {held} bytes"
        assert proxy.stats["received_up"] < size // 2, "the proxy stops reading: the client sees backpressure"
        writer.transport.abort()

    run(with_proxy(body, server=EchoServer(echo=False, reading=False), max_buffer=256 * 1024))


def test_refuse_resets_new_connections_only(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        reader, writer = await connect(proxy)
        proxy.refuse(True)
        refused_reader, refused_writer = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(refused_reader.read(1), 5)
        refused_writer.close()
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
        proxy.refuse(False)
        assert (await echo(proxy, b"ok"))[0] == b"ok"
        assert server.accepted == 2 and proxy.stats["refused"] == 1
        writer.close()

    run(with_proxy(body))


def test_an_unreachable_upstream_resets_the_client(run: Runner) -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        server.close()
        reader, writer = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 5)
        writer.close()
        await until(lambda: not proxy.links, what="the failed connection is forgotten")
        assert proxy.stats["dial_failures"] == 1

    run(with_proxy(body))


def test_bad_settings_are_refused_with_the_reason() -> None:
    proxy = ChaosProxy("127.0.0.1:0", "127.0.0.1:1")
    for call, match in (
        (lambda: proxy.set_latency(-1), "latency"),
        (lambda: proxy.set_bandwidth(0), "bandwidth"),
        (lambda: proxy.corrupt(1.5), "probability"),
        (lambda: proxy.corrupt(0.1, "sideways"), "direction"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="HOST:PORT"):
        ChaosProxy("127.0.0.1:0", "nowhere")


def test_control_api_changes_faults_and_reports_state() -> None:
    async def body(proxy: ChaosProxy, server: EchoServer) -> None:
        control = ControlServer(proxy)
        base = "http://" + await control.start("127.0.0.1:0")
        try:
            async with aiohttp.ClientSession() as http:
                for path, check in (
                    ("/latency?ms=30&jitter_ms=5", lambda s: (s["latency_ms"], s["jitter_ms"]) == (30, 5)),
                    ("/bandwidth?bps=1000000", lambda s: s["bandwidth"] == 1_000_000),
                    ("/bandwidth?bps=0", lambda s: s["bandwidth"] is None),
                    ("/corrupt?p=0.25&direction=down", lambda s: s["corrupt"] == {"up": 0.0, "down": 0.25}),
                    ("/blackhole?on=1", lambda s: s["blackhole"]),
                    ("/blackhole?on=0", lambda s: not s["blackhole"]),
                    ("/pause", lambda s: s["paused"]),
                    ("/resume", lambda s: not s["paused"]),
                    ("/refuse?on=1", lambda s: s["refuse"]),
                    ("/refuse?on=0", lambda s: not s["refuse"]),
                    ("/reset", lambda s: s["stats"].get("resets", 0) == 0),
                ):
                    async with http.post(base + path) as response:
                        assert response.status == 200, path
                        assert check(await response.json()), path
                for bad in ("/latency?ms=-3", "/corrupt?p=2", "/corrupt?p=x", "/blackhole?on=maybe"):
                    async with http.post(base + bad) as response:
                        assert response.status == 400, bad
                        assert (await response.json())["error"]
                async with http.get(base + "/state") as response:
                    state = await response.json()
                assert state["upstream"] == proxy.upstream and state["listen"] == proxy.address
        finally:
            await control.stop()

    uvloop.run(with_proxy(body))
