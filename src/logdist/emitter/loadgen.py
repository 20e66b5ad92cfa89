"""Generate load: send stamped, checksummed log messages over C connections, then report what was acked.

Each connection is one stream (a random 64-bit id, seqs from 0) on its own EmitterClient. Payloads come
from a pre-generated pool of distinct log lines (CRC-32s computed once); every batch is assembled with
numpy slices of that pool plus one send timestamp, so the generator itself runs at millions of msg/s.
--rate R spreads R msgs/s over the connections (a token bucket per connection, one batch at a time;
at low rates batches shrink so each connection sends at least ~10 batches/s); --rate max sends as fast
as the ack window allows. After --duration seconds (or SIGINT/SIGTERM) sending stops and the generator
waits up to 10 s for outstanding acks. Exit code 0 when every sent message was acked, 1 otherwise.

Summary (--json: one line): {"event": "summary", "sent", "acked", "retried" (batch retransmissions),
"rejected" (messages), "duration_s", "rate" (sent msgs/s), "streams": {stream id: messages sent}, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import secrets
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

from logdist import runtime
from logdist.emitter.client import EmitterClient
from logdist.wire.batch import FLAG_CRC, HEADER_DTYPE, HEADER_SIZE, MessageBlock
from logdist.wire.compression import SUPPORTED

log = logging.getLogger("logdist.emit")

FLUSH_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 5.0
_POOL_BYTES = 8 * 1024 * 1024

_LEVELS = (("DEBUG", 7, 10), ("INFO", 6, 70), ("WARN", 4, 12), ("ERROR", 3, 7), ("CRIT", 2, 1))
_SERVICES = ("api", "auth", "billing", "search", "cart", "checkout", "gateway", "worker", "indexer", "mailer")
_PATHS = ("/v1/orders", "/v1/users/me", "/v2/search", "/healthz", "/v1/cart/items", "/login", "/v1/invoices")
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_STATUSES = (200, 200, 200, 200, 201, 204, 304, 400, 401, 404, 429, 500, 503)
_FILLER = (
    "request completed cache miss upstream retry connection pool exhausted slow query user session refreshed "
    "token expired payload validated rate limit applied background job queued shard rebalanced timeout exceeded"
)
_WORDS = tuple(_FILLER.split())


class PayloadPool:
    """``count`` distinct log lines of exactly ``size`` bytes, their CRC-32s and severities, laid out so that
    any ``batch`` consecutive entries (wrapping around) are one contiguous slice.
    """

    def __init__(self, size: int, batch: int, count: int | None = None, seed: int = 1) -> None:
        if count is None:
            count = max(64, min(4096, _POOL_BYTES // max(size, 1)))
        rng = random.Random(seed)
        levels = [lv for lv in _LEVELS for _ in range(lv[2])]
        payloads: list[bytes] = []
        severities: list[int] = []
        for i in range(count):
            name, syslog_severity, _ = rng.choice(levels)
            payloads.append(_log_line(rng, i, name, size))
            severities.append(syslog_severity * 32)  # logdist's scale: syslog severity s -> s * 32
        self.size = size
        self.count = count
        reps = 1 + math.ceil(batch / count)  # so that start + batch <= len for every start < count
        template = np.zeros(count, dtype=HEADER_DTYPE)
        template["severity"] = severities
        template["flags"] = FLAG_CRC
        template["crc"] = [zlib.crc32(p) for p in payloads]
        template["length"] = size
        self.headers = np.tile(template, reps).tobytes()  # header records with stream/seq/ts left 0
        self.bodies = memoryview(b"".join(payloads) * reps)

    def block(self, start: int, n: int, stream: int, first_seq: int, ts_ns: int) -> MessageBlock:
        """Messages ``start .. start + n - 1`` of the pool, stamped ``(stream, first_seq + i)`` and ``ts_ns``."""
        headers = bytearray(self.headers[start * HEADER_SIZE : (start + n) * HEADER_SIZE])
        array = np.frombuffer(headers, dtype=HEADER_DTYPE)
        array["stream"] = stream
        array["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
        array["ts"] = ts_ns
        return MessageBlock(n, headers, self.bodies[start * self.size : (start + n) * self.size], array)


def _log_line(rng: random.Random, index: int, level: str, size: int) -> bytes:
    ts = 1_700_000_000 + rng.randrange(10_000_000)
    line = (
        f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts))}.{rng.randrange(1000):03d}Z {level} "
        f"[{rng.choice(_SERVICES)}-{rng.randrange(16)}] pid={rng.randrange(100, 65000)} "
        f"req={rng.getrandbits(64):016x} {rng.choice(_METHODS)} {rng.choice(_PATHS)} "
        f'status={rng.choice(_STATUSES)} dur_ms={rng.expovariate(1 / 40):.1f} line={index} msg="'
    )
    while len(line) < size:
        line += rng.choice(_WORDS) + " "
    return line.encode()[:size].ljust(size, b" ")


@dataclass(slots=True)
class _Conn:
    client: EmitterClient
    stream: int
    next_seq: int = 0
    offset: int = 0


async def _sender(conn: _Conn, pool: PayloadPool, batch: int, rate: float | None, deadline: float) -> None:
    """Send batches on one connection until ``deadline`` (monotonic), paced to ``rate`` msgs/s if given."""
    client = conn.client
    n = batch
    capacity = tokens = 0.0
    if rate is not None:
        n = max(1, min(batch, math.ceil(rate / 10)))
        capacity = max(float(n), rate * 0.1)
        tokens = float(n)
    last = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        if rate is not None:
            tokens = min(capacity, tokens + (now - last) * rate)
            last = now
            if tokens < n:
                await asyncio.sleep(min((n - tokens) / rate, deadline - now))
                continue
            tokens -= n
        block = pool.block(conn.offset, n, conn.stream, conn.next_seq, time.time_ns())
        await client.send(block)
        conn.next_seq += n
        conn.offset = (conn.offset + n) % pool.count


def _totals(conns: list[_Conn]) -> dict[str, int]:
    clients = [c.client for c in conns]
    return {
        "sent": sum(c.sent_messages for c in clients),
        "acked": sum(c.acked_messages for c in clients),
        "retried": sum(c.retried for c in clients),
        "rejected": sum(c.rejected_messages for c in clients),
        "reconnects": sum(c.reconnects for c in clients),
        "unacked_batches": sum(c.unacked for c in clients),
    }


async def _progress(conns: list[_Conn], started: float) -> None:
    previous, previous_t = 0, started
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.monotonic()
        t = _totals(conns)
        rate = (t["sent"] - previous) / max(now - previous_t, 1e-9)
        previous, previous_t = t["sent"], now
        print(
            f"emit: {now - started:6.1f} s  sent {t['sent']:,}  acked {t['acked']:,}  "
            f"{rate / 1e6:.2f} M msg/s  unacked batches {t['unacked_batches']}  "
            f"retried {t['retried']}  reconnects {t['reconnects']}",
            file=sys.stderr,
            flush=True,
        )


def _parse_rate(text: str) -> float | None:
    if text.lower() == "max":
        return None
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError("rate must be > 0 or 'max'")
    return rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="HOST:PORT of the distributor (or an analyzer)")
    parser.add_argument("--rate", type=_parse_rate, default=None, help="total msgs/s over all connections, or max")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending (default 10)")
    parser.add_argument("--connections", type=int, default=1, help="concurrent connections, one stream each")
    parser.add_argument("--size", type=int, default=200, help="payload bytes per message (default 200)")
    parser.add_argument("--batch", type=int, default=1000, help="messages per batch (default 1000)")
    parser.add_argument("--window", type=int, default=64, help="unacked batches allowed per connection")
    parser.add_argument("--compression", choices=SUPPORTED, default=None, help="compress batches")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the first connection")
    parser.add_argument("--client-id", default=None, help="client id prefix (default emit-PID)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        host, port = runtime.parse_hostport(args.target)
    except ValueError as exc:
        print(f"logdist emit: {exc}", file=sys.stderr)
        return 2
    for name in ("connections", "batch", "window"):
        if getattr(args, name) < 1:
            print(f"logdist emit: --{name} must be at least 1", file=sys.stderr)
            return 2
    if args.size < 0 or args.duration < 0:
        print("logdist emit: --size and --duration must be >= 0", file=sys.stderr)
        return 2

    async def amain(stop: asyncio.Event) -> int:
        return await run_load(args, host, port, stop)

    return runtime.run(amain)


async def run_load(args: argparse.Namespace, host: str, port: int, stop: asyncio.Event) -> int:
    """The emit command's body (usable in-process with any stop event)."""
    prefix = args.client_id or f"emit-{os.getpid()}"
    pool = PayloadPool(args.size, args.batch)
    conns = [
        _Conn(
            EmitterClient(host, port, client_id=f"{prefix}-{i}", window=args.window, compression=args.compression),
            stream=secrets.randbits(64),
            offset=random.randrange(pool.count),
        )
        for i in range(args.connections)
    ]
    error: str | None = None
    results = await asyncio.gather(
        *(c.client.connect(timeout=args.connect_timeout) for c in conns), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    started = ended = time.monotonic()
    if failures:
        error = str(failures[0])
        print(f"logdist emit: {error}", file=sys.stderr)
    else:
        per_conn_rate = args.rate / len(conns) if args.rate is not None else None
        deadline = started + args.duration
        senders = [asyncio.create_task(_sender(c, pool, args.batch, per_conn_rate, deadline)) for c in conns]
        progress = None if args.quiet else asyncio.create_task(_progress(conns, started))
        stopper = asyncio.create_task(stop.wait())
        all_sent = asyncio.create_task(asyncio.wait(senders))
        await asyncio.wait({stopper, all_sent}, timeout=args.duration + 1.0, return_when=asyncio.FIRST_COMPLETED)
        for task in senders:
            task.cancel()
        ended = time.monotonic()
        for outcome in await asyncio.gather(*senders, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("sender failed: %r", outcome)
                error = error or f"sender failed: {outcome!r}"
        stopper.cancel()
        all_sent.cancel()
        flush = await asyncio.gather(*(c.client.flush(FLUSH_TIMEOUT_S) for c in conns))
        if progress is not None:
            progress.cancel()
        if not all(flush):
            print(f"logdist emit: acks still missing after {FLUSH_TIMEOUT_S:.0f} s", file=sys.stderr)
    for c in conns:
        await c.client.close()
    totals = _totals(conns)
    duration = max(ended - started, 1e-9)
    summary = {
        "event": "summary",
        "sent": totals["sent"],
        "acked": totals["acked"],
        "retried": totals["retried"],
        "rejected": totals["rejected"],
        "duration_s": round(duration, 3),
        "rate": round(totals["sent"] / duration, 1),
        "reconnects": totals["reconnects"],
        "connections": len(conns),
        "batch": args.batch,
        "size": args.size,
        "streams": {str(c.stream): c.client.sent_messages for c in conns},
    }
    if error:
        summary["error"] = error
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_table(summary)
    sys.stdout.flush()
    ok = not error and totals["acked"] == totals["sent"]
    return 0 if ok else 1


def _print_table(summary: dict) -> None:
    rows = [
        ("sent", f"{summary['sent']:,} messages"),
        ("acked", f"{summary['acked']:,} messages"),
        ("rejected", f"{summary['rejected']:,} messages"),
        ("retried", f"{summary['retried']:,} batches"),
        ("reconnects", f"{summary['reconnects']:,}"),
        ("duration", f"{summary['duration_s']:.2f} s"),
        ("rate", f"{summary['rate']:,.0f} msg/s"),
        ("connections", f"{summary['connections']} (batch {summary['batch']}, size {summary['size']} B)"),
    ]
    if "error" in summary:
        rows.append(("error", summary["error"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for stream, count in summary["streams"].items():
        print(f"{'stream':<{width}}  {stream}: {count:,}")
