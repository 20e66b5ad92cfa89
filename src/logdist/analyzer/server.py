"""Run the reference analyzer: a native-protocol server that verifies, deduplicates, measures and acks batches.

Every BATCH is checked (CRC-32 of each payload unless --no-verify), counted, deduplicated by message id
(stream, seq), its end-to-end latency (now - emit timestamp) recorded in a log-bucketed histogram, and
then acknowledged with ACK OK (after --delay-ms, to play a slow consumer). Any peer may connect (emitters,
distributors); each says HELLO first. A protocol error gets an ERROR frame and closes only that connection.

On SIGINT/SIGTERM the analyzer closes its connections, writes the JSON summary to --stats-file (also
rewritten every second, so a killed analyzer leaves its last counts) and exits 0. Summary fields: name,
received, unique, duplicates, checksum_failures, bytes, batches, connections, latency_ms {p50, p95, p99,
p999}, latency_hist {base_ns, growth, buckets: [[bucket, count], ...]}, streams {stream id: [[first_seq,
last_seq], ...] runs of unique seqs received}. With --journal, the id runs of every batch are also appended
to a file before the batch is acked (logdist.analyzer.journal), which survives kill -9.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from logdist import runtime
from logdist.analyzer.journal import Journal
from logdist.analyzer.stats import AnalyzerStats
from logdist.wire.compression import SUPPORTED, negotiate
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.native import (
    PROTOCOL_VERSION,
    AckStatus,
    Batch,
    Error,
    FrameDecoder,
    Heartbeat,
    Hello,
    Welcome,
    encode_ack,
    encode_error,
    encode_heartbeat,
    encode_welcome,
)

log = logging.getLogger("logdist.analyzer")

STATS_INTERVAL_S = 1.0


class AnalyzerProtocol(asyncio.Protocol):
    """One peer connection: decode frames, account batches, ack them (now or after the configured delay)."""

    def __init__(self, server: AnalyzerServer) -> None:
        self.server = server
        self.stats = server.stats
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.hello: Hello | None = None
        self.closed = False
        self._delay_ns = int(server.delay_ms * 1e6)
        self._due: collections.deque[tuple[int, bytes]] = collections.deque()  # (due monotonic ns, ack frame)
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self.peer = transport.get_extra_info("peername")
        self.stats.connections += 1
        self.stats.active_connections += 1
        self.server.protocols.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats.active_connections -= 1
        self.server.protocols.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)
            return
        out: list[bytes] = []
        try:
            for event in events:
                if isinstance(event, Batch):
                    self._on_batch(event, out)
                elif isinstance(event, Heartbeat):
                    if not event.pong:
                        out.append(encode_heartbeat(event.token, pong=True))
                elif isinstance(event, Hello):
                    out.append(self._on_hello(event))
                elif isinstance(event, Error):
                    log.warning("peer %s reported error %s: %s; closing", self.peer, event.code.name, event.reason)
                    self._write(out)
                    self.close()
                    return
                else:  # Welcome, Ack: a client never gets to send these to a server
                    raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"unexpected {type(event).__name__} frame")
        except ProtocolError as exc:
            self._write(out)
            self.fail(exc.code, exc.reason)
            return
        except Exception as exc:  # never let one connection take the process down
            log.exception("internal error on connection from %s", self.peer)
            self._write(out)
            self.fail(ErrorCode.INTERNAL, f"internal error: {exc!r}")
            return
        self._write(out)

    # -- frame handlers ----------------------------------------------------------------------------------
    def _on_hello(self, hello: Hello) -> bytes:
        if self.hello is not None:
            raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "second HELLO on one connection")
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION, f"protocol version {hello.version} (this analyzer speaks 1)"
            )
        self.hello = hello
        log.info("peer %s: %s %r connected", self.peer, hello.role, hello.client_id)
        return encode_welcome(Welcome(server_id=self.server.name, compression=negotiate(hello.compression, SUPPORTED)))

    def _on_batch(self, batch: Batch, out: list[bytes]) -> None:
        if self.hello is None:
            raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "BATCH before HELLO")
        if self.server.retry_rate and random.random() < self.server.retry_rate:
            out.append(encode_ack(batch.seq, AckStatus.RETRY))  # play an unhealthy analyzer: not processed
            return
        failures_before = self.stats.checksum_failures
        self.stats.record(batch.block, time.time_ns())
        if self.stats.checksum_failures > failures_before:  # corrupted on the way: never ack it
            bad = self.stats.checksum_failures - failures_before
            raise ProtocolError(ErrorCode.BAD_BATCH, f"{bad} messages of batch {batch.seq} fail their CRC-32")
        if self.server.journal is not None:
            self.server.journal.record(batch.block)  # before the ack leaves: survives kill -9
        ack = encode_ack(batch.seq, AckStatus.OK)
        if not self._delay_ns:
            out.append(ack)
            return
        due = time.monotonic_ns() + self._delay_ns
        self._due.append((due, ack))
        if self._timer is None:
            self._arm(due)

    # -- delayed acks: one timer per connection, acks leave in arrival order ----------------------------
    def _arm(self, due_ns: int) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (due_ns - time.monotonic_ns()) / 1e9)
        self._timer = loop.call_later(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = time.monotonic_ns()
        out = []
        due = self._due
        while due and due[0][0] <= now:
            out.append(due.popleft()[1])
        self._write(out)
        if due:
            self._arm(due[0][0])

    def flush_delayed(self) -> None:
        """Send every delayed ack now (the batches are already counted): used when shutting down."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write([ack for _, ack in self._due])
        self._due.clear()

    # -- output and closing ------------------------------------------------------------------------------
    def _write(self, frames: list[bytes]) -> None:
        if frames and not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def fail(self, code: ErrorCode, reason: str) -> None:
        """Report a protocol error to the peer, then close this connection (and only this one)."""
        self.stats.protocol_errors += 1
        log.warning("closing connection from %s: %s: %s", self.peer, code.name, reason)
        self._write([encode_error(code, reason)])
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True


class AnalyzerServer:
    """The listening analyzer: shared stats, live connections, the periodic stats file."""

    def __init__(
        self,
        name: str | None,
        delay_ms: float = 0.0,
        verify: bool = True,
        stats_file: str | None = None,
        journal: str | None = None,
        retry_rate: float = 0.0,
    ) -> None:
        self.name = name or "analyzer"
        self.retry_rate = retry_rate
        self._named = bool(name)
        self.delay_ms = delay_ms
        self.stats = AnalyzerStats(self.name, verify=verify)
        self.stats_file = Path(stats_file) if stats_file else None
        if self.stats_file is not None and self.stats_file.exists():  # a restart: the dedup window survives it
            try:
                restored = self.stats.restore(msgspec.json.decode(self.stats_file.read_bytes()))
                log.info("restored %d message ids from %s", restored, self.stats_file)
            except (OSError, msgspec.DecodeError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable stats file %s: %s", self.stats_file, exc)
        self.protocols: set[AnalyzerProtocol] = set()
        self.server: asyncio.AbstractServer | None = None
        self.journal = Journal(journal) if journal else None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen; returns the bound (host, port) (the real port when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: AnalyzerProtocol(self), host, port, reuse_address=True)
        sockname = self.server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        if not self._named:
            self.name = self.stats.name = f"analyzer-{self.address[1]}"
        return self.address

    async def stop(self) -> None:
        """Stop listening, flush delayed acks, tell peers we are going, close every connection."""
        if self.server is not None:
            self.server.close()
        for proto in list(self.protocols):
            proto.flush_delayed()
            proto._write([encode_error(ErrorCode.SHUTTING_DOWN, "analyzer is shutting down")])
            proto.close()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
        if self.journal is not None:
            self.journal.close()

    def write_stats(self) -> None:
        """Write the summary to the stats file atomically (temp file in the same folder + rename)."""
        if self.stats_file is None:
            return
        write_json_atomic(self.stats_file, self.stats.summary())

    async def stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                self.write_stats()
            except OSError as exc:
                log.warning("cannot write stats file %s: %s", self.stats_file, exc)


def write_json_atomic(path: Path, data: Any) -> None:
    """``path`` holds either its old content or all of ``data`` as JSON, never a torn file."""
    body = msgspec.json.encode(data)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any free port)")
    parser.add_argument("--name", default=None, help="analyzer name in WELCOME and stats (default analyzer-PORT)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay every ack by this long (slow consumer)")
    parser.add_argument("--stats-file", default=None, help="write the JSON summary here (every second and at exit)")
    parser.add_argument(
        "--journal", default=None, help="append the id runs of every batch here before acking it (see journal.py)"
    )
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=True, help="verify payload CRC-32s (default on)"
    )
    parser.add_argument(
        "--retry-rate", type=float, default=0.0, help="answer RETRY to this fraction of batches (unhealthy analyzer)"
    )
    parser.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        host, port = runtime.parse_hostport(args.listen)
    except ValueError as exc:
        print(f"logdist analyzer: {exc}", file=sys.stderr)
        return 2
    if args.delay_ms < 0:
        print("logdist analyzer: --delay-ms must be >= 0", file=sys.stderr)
        return 2
    if not 0 <= args.retry_rate <= 1:
        print("logdist analyzer: --retry-rate must be between 0 and 1", file=sys.stderr)
        return 2

    async def amain(stop: asyncio.Event) -> int:
        try:
            server = AnalyzerServer(
                args.name,
                args.delay_ms,
                verify=args.verify,
                stats_file=args.stats_file,
                journal=args.journal,
                retry_rate=args.retry_rate,
            )
        except OSError as exc:
            print(f"logdist analyzer: cannot open journal {args.journal}: {exc}", file=sys.stderr)
            return 1
        try:
            bound_host, bound_port = await server.start(host, port)
        except OSError as exc:
            print(f"logdist analyzer: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 1
        try:
            server.write_stats()
        except OSError as exc:
            print(f"logdist analyzer: cannot write stats file {args.stats_file}: {exc}", file=sys.stderr)
            await server.stop()
            return 1
        stats_task = asyncio.create_task(server.stats_loop()) if server.stats_file else None
        runtime.announce("ready", listen=_format_address(bound_host, bound_port), name=server.name, pid=os.getpid())
        await stop.wait()
        if stats_task is not None:
            stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats_task
        await server.stop()
        server.write_stats()
        s = server.stats
        runtime.announce(
            "stopped",
            name=server.name,
            received=s.received,
            unique=s.unique,
            duplicates=s.duplicates,
            checksum_failures=s.checksum_failures,
            batches=s.batches,
            latency_ms=s.latency.percentiles_ms(),
        )
        return 0

    return runtime.run(amain)
