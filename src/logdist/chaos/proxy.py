"""A fault-injecting TCP proxy on asyncio Protocols (no streams), controllable at runtime.

Every accepted connection gets its own upstream connection; bytes flow through one pipe per direction
("up": client -> upstream, "down": upstream -> client). A pipe applies, in order: the partition (drop),
corruption (as bytes arrive), latency ± jitter (a chunk waits until it is due; order is always kept), the
bandwidth cap and pause. It holds at most ``max_buffer`` bytes: past that it stops reading its source, and it
writes only while the destination transport accepts more, so a slow or stalled side pushes TCP backpressure
back to the sender. Memory per connection stays below about 3 x ``max_buffer`` + 1 MiB (queues, write buffers
and the last chunk read each way).

Faults, all switchable at runtime; unless told otherwise each applies to both directions:

* ``set_latency(ms, jitter_ms)``: every chunk is delayed by ``ms`` ± ``jitter_ms`` one way (a round trip
  through the proxy gains twice that);
* ``set_bandwidth(bytes_per_s)``: a cap per direction, shared by all connections (``None``: unlimited);
* ``reset()``: abort every current connection on both sides with a TCP RST (SO_LINGER 0);
* ``blackhole(on)``: a partition. Bytes are read and silently dropped both ways; new connections are
  accepted but never dialled upstream; closes are not passed on. A connection that lost bytes (or was
  accepted) during the partition stays dead after healing -- its byte stream has a gap, and forwarding
  again would turn the partition into a corruption fault -- but its close is passed on once healed. New
  connections after healing work normally;
* ``corrupt(p, direction)``: each forwarded byte is XORed with a random non-zero value with probability p;
* ``pause()`` / ``resume()``: stop forwarding and reading; what is held stays and is delivered in order on
  resume (the senders see TCP backpressure meanwhile);
* ``refuse(on)``: new connections are reset as soon as they are accepted.

All methods must be called on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections import Counter, deque
from typing import Any, Literal

import numpy as np

from logdist.runtime import parse_hostport

log = logging.getLogger("logdist.chaos")

Direction = Literal["both", "up", "down"]
_DIRECTIONS: dict[str, tuple[str, ...]] = {"both": ("up", "down"), "up": ("up",), "down": ("down",)}
_LINGER_RST = struct.pack("ii", 1, 0)
Buffer = bytes | memoryview


class _Pacer:
    """The bandwidth cap of one direction: bytes leave at ``rate`` per second, without saving up bursts."""

    def __init__(self) -> None:
        self.rate: int | None = None
        self.next_free = 0.0

    def quantum(self) -> int:
        """Largest chunk written at once: ~20 ms worth of bytes, so the pace stays smooth."""
        assert self.rate is not None
        return max(256, min(64 * 1024, self.rate // 50))

    def wait(self, now: float) -> float:
        return self.next_free - now if self.rate else 0.0

    def spend(self, nbytes: int, now: float) -> None:
        if self.rate:
            self.next_free = max(self.next_free, now) + nbytes / self.rate


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: the client's, or the one dialled upstream."""

    def __init__(self, link: _Link, name: str) -> None:
        self.link = link
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.writable = True
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self.transport.set_write_buffer_limits(high=self.link.proxy.max_buffer // 2)
        self.link.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.link.pipe_from(self).feed(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.link.pipe_from(self).finish_input()
        return True  # keep the transport half-open: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closed = True
        self.link.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.link.pipe_into(self).pump()

    # -- control -----------------------------------------------------------------------------------------
    def can_write(self) -> bool:
        return self.transport is not None and self.writable and not self.transport.is_closing()

    def set_reading(self, on: bool) -> None:
        # Ask the transport, not a flag of ours: uvloop starts reading only after connection_made returns (a
        # pause_reading() inside it is ignored), so the first data_received re-checks and pauses then.
        transport = self.transport
        if transport is None or transport.is_closing() or on == transport.is_reading():
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def send_eof(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    def close(self) -> None:
        """Close after the write buffer is flushed (a FIN)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once with a TCP RST."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()


class _Pipe:
    """One direction of one connection: a bounded, ordered queue of ``(due time, bytes)``."""

    def __init__(self, link: _Link, direction: str, src: _Side, dst: _Side) -> None:
        self.link = link
        self.direction = direction
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[float, Buffer]] = deque()
        self.held = 0
        self.eof = False  # the source is done: pass a FIN on once the queue is empty
        self.done = False  # the FIN was passed on
        self._last_due = 0.0
        self._throttled = False
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        proxy = self.link.proxy
        proxy.stats[f"received_{self.direction}"] += len(data)
        if self.link.dead or proxy.blackholed:
            self.link.kill(len(data))
            return
        data = proxy._corrupt(self.direction, data)
        due = time.monotonic() + proxy._delay_s()
        if due < self._last_due:
            due = self._last_due  # jitter never reorders bytes
        self._last_due = due
        self.queue.append((due, data))
        self.held += len(data)
        self.pump()

    def finish_input(self) -> None:
        if self.link.dead or self.link.proxy.blackholed:
            self.link.kill(0)
            return
        self.eof = True
        self.pump()

    def pump(self) -> None:
        """Write whatever is due, as far as pause, the pace and the destination allow; re-arm the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        proxy = self.link.proxy
        dst = self.dst
        pacer = proxy._pacers[self.direction]
        queue = self.queue
        while queue and not proxy.paused and dst.can_write():
            due, data = queue[0]
            now = time.monotonic()
            wait = max(due - now, pacer.wait(now))
            if wait > 0:
                self._timer = asyncio.get_running_loop().call_later(wait, self.pump)
                break
            if pacer.rate and len(data) > (quantum := pacer.quantum()):
                view = memoryview(data)
                chunk: Buffer = view[:quantum]
                queue[0] = (due, view[quantum:])
            else:
                chunk = data
                queue.popleft()
            self.held -= len(chunk)
            pacer.spend(len(chunk), now)
            assert dst.transport is not None
            dst.transport.write(chunk)
            proxy.stats[f"bytes_{self.direction}"] += len(chunk)
        if self.eof and not queue and not self.done and not proxy.paused and dst.transport is not None:
            self.done = True
            if self.src.closed:
                dst.close()  # nobody is left to answer: close rather than half-close
            else:
                dst.send_eof()
            self.link.check_done()
        self.update_reading()

    def update_reading(self) -> None:
        """Read from the source unless paused or holding ``max_buffer`` (until it drains to half)."""
        proxy = self.link.proxy
        if self.held >= proxy.max_buffer:
            self._throttled = True
        elif self.held <= proxy.max_buffer // 2:
            self._throttled = False
        self.src.set_reading(not proxy.paused and not self._throttled)

    def discard(self) -> int:
        """Drop everything held (the destination is gone or the bytes fell into a partition)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        dropped = self.held
        self.queue.clear()
        self.held = 0
        return dropped


class _Link:
    """One proxied connection: the client's socket, the upstream socket, a pipe each way."""

    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.up = _Pipe(self, "up", self.client, self.upstream)
        self.down = _Pipe(self, "down", self.upstream, self.client)
        self.dead = False  # lost bytes to a partition: never forwards again
        self.gone = False  # reset: both sides aborted, nothing more to pass on
        self.dialling = False
        self.dial: asyncio.Task[None] | None = None

    def held(self) -> int:
        """Bytes this connection holds in memory: queued in its pipes and in its transports' write buffers."""
        buffered = sum(s.transport.get_write_buffer_size() for s in (self.client, self.upstream) if s.transport)
        return self.up.held + self.down.held + buffered

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.up if side is self.client else self.down

    def pipe_into(self, side: _Side) -> _Pipe:
        return self.down if side is self.client else self.up

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client

    def side_made(self, side: _Side) -> None:
        if side is self.client:
            self.proxy._accepted(self)
        elif self.client.closed and not self.up.eof:
            side.abort()  # the client went away with a reset before we reached upstream
        else:
            self.up.pump()  # what the client sent while we were dialling
            self.down.update_reading()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        other = self.other(side)
        self.proxy.stats["dropped_bytes"] += self.pipe_into(side).discard()
        if side is self.client and self.dial is not None:
            self.dial.cancel()
        if self.gone:
            return
        if self.dead:
            if not self.proxy.blackholed:
                other.close()
        elif exc is not None:
            other.abort()  # pass a reset on as a reset
        else:
            self.pipe_from(side).finish_input()
        self.check_done()

    def check_done(self) -> None:
        """Close both sides once both directions have passed their FIN on; forget the link when both are gone."""
        if self.up.done and self.down.done:
            self.client.close()
            self.upstream.close()
        upstream_gone = self.upstream.closed or (self.upstream.transport is None and not self.dialling)
        if self.client.closed and upstream_gone:
            self.proxy.links.discard(self)

    def kill(self, dropped: int) -> None:
        """A partition ate bytes: this connection is dead for good."""
        if not self.dead:
            self.dead = True
            dropped += self.up.discard() + self.down.discard()
            self.up.update_reading()  # keep reading (and dropping): a partition gives no backpressure
            self.down.update_reading()
        self.proxy.stats["dropped_bytes"] += dropped

    def heal(self) -> None:
        """The partition is over: pass on the closes that happened during it."""
        for side in (self.client, self.upstream):
            if side.closed or side.eof:
                self.client.close()
                self.upstream.close()
                return

    def reset(self) -> None:
        self.gone = True
        self.proxy.stats["dropped_bytes"] += self.up.discard() + self.down.discard()
        if self.dial is not None:
            self.dial.cancel()
        self.client.abort()
        self.upstream.abort()
        self.proxy.links.discard(self)


class ChaosProxy:
    """A TCP proxy from ``listen`` to ``upstream`` that injects faults on command (see the module doc)."""

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        upstream: str = "127.0.0.1:0",
        *,
        max_buffer: int = 1024 * 1024,
        seed: int | None = None,
    ) -> None:
        self.listen_host, self.listen_port = parse_hostport(listen)
        self.upstream_host, self.upstream_port = parse_hostport(upstream)
        self.upstream = f"{self.upstream_host}:{self.upstream_port}"
        if max_buffer < 1024:
            raise ValueError(f"max_buffer must be at least 1024 bytes, got {max_buffer}")
        self.max_buffer = max_buffer
        self.address: str | None = None
        self.links: set[_Link] = set()
        self.stats: Counter[str] = Counter()
        self.latency_s = 0.0
        self.jitter_s = 0.0
        self.corrupt_p = {"up": 0.0, "down": 0.0}
        self.blackholed = False
        self.paused = False
        self.refusing = False
        self._pacers = {"up": _Pacer(), "down": _Pacer()}
        self._random = random.Random(seed)
        self._rng = np.random.default_rng(seed)
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> str:
        """Listen; returns (and sets :attr:`address`) ``"host:port"`` (the real port when asked for 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Link(self).client, self.listen_host, self.listen_port, reuse_address=True
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.address

    @property
    def port(self) -> int:
        return parse_hostport(self.address or "")[1]

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.reset()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- faults ------------------------------------------------------------------------------------------
    def set_latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        """Delay every chunk by ``ms`` ± ``jitter_ms`` (uniform), one way, in both directions."""
        if not (ms >= 0 and jitter_ms >= 0):
            raise ValueError(f"latency and jitter must be >= 0 ms, got {ms} and {jitter_ms}")
        self.latency_s, self.jitter_s = ms / 1000, jitter_ms / 1000
        log.info("latency %.1f ms ± %.1f ms", ms, jitter_ms)
        self._pump_all()

    def set_bandwidth(self, bytes_per_s: int | None) -> None:
        """Cap each direction at ``bytes_per_s`` (shared by all connections); ``None`` lifts the cap."""
        if bytes_per_s is not None and bytes_per_s < 1:
            raise ValueError(f"bandwidth must be >= 1 byte/s (or None for unlimited), got {bytes_per_s}")
        for pacer in self._pacers.values():
            pacer.rate = int(bytes_per_s) if bytes_per_s else None
        log.info("bandwidth %s", f"{bytes_per_s} B/s" if bytes_per_s else "unlimited")
        self._pump_all()

    def reset(self) -> int:
        """Abort every current connection with a TCP RST on both sides; returns how many."""
        links = list(self.links)
        for link in links:
            link.reset()
        self.stats["resets"] += len(links)
        log.info("reset %d connections", len(links))
        return len(links)

    def blackhole(self, on: bool) -> None:
        """Start (``True``) or heal (``False``) a partition: bytes both ways are silently dropped."""
        if on == self.blackholed:
            return
        self.blackholed = on
        log.info("blackhole %s", "on" if on else "off (healed)")
        for link in list(self.links):
            if on and (link.up.held or link.down.held):
                link.kill(0)  # bytes "in the network" are lost with the partition
            elif not on and link.dead:
                link.heal()

    def corrupt(self, probability: float, direction: Direction = "both") -> None:
        """Flip each forwarded byte with ``probability`` (XOR with a random non-zero value)."""
        if not 0 <= probability <= 1:
            raise ValueError(f"corruption probability must be within [0, 1], got {probability}")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
        for name in _DIRECTIONS[direction]:
            self.corrupt_p[name] = float(probability)
        log.info("corrupt p=%g direction=%s", probability, direction)

    def pause(self) -> None:
        """Stop forwarding and reading; the senders see TCP backpressure."""
        self.paused = True
        log.info("paused")
        for link in self.links:
            link.up.update_reading()
            link.down.update_reading()

    def resume(self) -> None:
        """Forward (in order) what was held, and read again."""
        self.paused = False
        log.info("resumed")
        self._pump_all()

    def refuse(self, on: bool) -> None:
        """Reset new connections as soon as they are accepted (existing ones are left alone)."""
        self.refusing = on
        log.info("refuse %s", "on" if on else "off")

    def state(self) -> dict[str, Any]:
        """The current settings and counters, JSON-ready."""
        return {
            "listen": self.address,
            "upstream": self.upstream,
            "latency_ms": self.latency_s * 1000,
            "jitter_ms": self.jitter_s * 1000,
            "bandwidth": self._pacers["up"].rate,
            "blackhole": self.blackholed,
            "corrupt": dict(self.corrupt_p),
            "paused": self.paused,
            "refuse": self.refusing,
            "connections": len(self.links),
            "held_bytes": sum(link.held() for link in self.links),
            "stats": dict(self.stats),
        }

    # -- internals ---------------------------------------------------------------------------------------
    def _pump_all(self) -> None:
        for link in list(self.links):
            link.up.pump()
            link.down.pump()

    def _accepted(self, link: _Link) -> None:
        self.stats["accepted"] += 1
        if self.refusing:
            self.stats["refused"] += 1
            link.client.abort()
            return
        self.links.add(link)
        if self.blackholed:
            link.dead = True  # the upstream host is unreachable: never dialled
            return
        link.dial = asyncio.get_running_loop().create_task(self._dial(link))

    async def _dial(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        link.dialling = True
        try:
            await loop.create_connection(lambda: link.upstream, self.upstream_host, self.upstream_port)
        except OSError as exc:
            self.stats["dial_failures"] += 1
            log.warning("cannot reach upstream %s: %s; resetting the client", self.upstream, exc)
            link.client.abort()
        finally:
            link.dialling = False
            link.check_done()

    def _delay_s(self) -> float:
        if not self.jitter_s:
            return self.latency_s
        return max(0.0, self.latency_s + self._random.uniform(-self.jitter_s, self.jitter_s))

    def _corrupt(self, direction: str, data: bytes) -> bytes:
        p = self.corrupt_p[direction]
        n = len(data)
        if p <= 0 or not n:
            return data
        count = n if p >= 1 else int(self._rng.binomial(n, p))
        if not count:
            return data
        buf = np.frombuffer(bytearray(data), dtype=np.uint8)
        where = slice(None) if count == n else self._rng.choice(n, size=count, replace=False)
        buf[where] ^= self._rng.integers(1, 256, size=count, dtype=np.uint8)
        self.stats["corrupted_bytes"] += count
        return buf.tobytes()
