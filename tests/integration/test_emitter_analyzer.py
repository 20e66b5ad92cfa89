"""Emitters straight into the real ``logdist analyzer`` process: exact accounting, crash recovery, bad peers."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import covered_within, merge, merge_runs
from logdist.emitter.client import EmitterClient, StreamStamper
from logdist.wire.errors import ErrorCode
from logdist.wire.native import (
    AckStatus,
    Batch,
    Error,
    FrameDecoder,
    FrameType,
    Heartbeat,
    Hello,
    Welcome,
    encode_ack,
    encode_batch,
    encode_error,
    encode_heartbeat,
    encode_hello,
    encode_welcome,
)
from tests.procs import LogdistProcess, ProcessGroup, read_json, run_logdist, wait_until

pytestmark = pytest.mark.timeout(180)

PAYLOADS = [f"2024-05-01T12:00:00Z INFO [test] request {i} completed in {i % 97} ms".encode() for i in range(100)]


async def until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the event loop (every 5 ms) until it is truthy; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


def check_exact(stats: dict, emitted: dict) -> None:
    """Everything the emitter sent was acked and seen exactly once by the analyzer."""
    assert emitted["sent"] > 0
    assert emitted["sent"] == emitted["acked"] == stats["unique"] == stats["received"]
    assert stats["duplicates"] == 0
    assert stats["checksum_failures"] == 0
    merged = merge([stats], emitted["streams"])
    assert (merged["lost"], merged["duplicates"], merged["unexpected"]) == (0, 0, 0)
    assert merged["delivered_unique"] == emitted["sent"]
    for stream, count in emitted["streams"].items():
        assert stats["streams"][stream] == [[0, count - 1]]
    assert merged["latency_samples"] == emitted["sent"]
    assert merged["latency_ms"]["p50"] is not None


# -- (a) the real emit process into the real analyzer ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ["--rate", "max", "--connections", "3", "--batch", "500"],
        ["--rate", "20000", "--connections", "2", "--batch", "1000", "--compression", "zstd"],
        ["--rate", "max", "--connections", "1", "--batch", "300", "--compression", "lz4", "--window", "4"],
    ],
    ids=["max", "paced-zstd", "lz4-small-window"],
)
def test_emit_process_into_analyzer_is_exact(tmp_path: Path, options: list[str]) -> None:
    stats_file = tmp_path / "analyzer.json"
    with ProcessGroup() as procs:
        analyzer = procs.analyzer(name="a1", stats_file=stats_file)
        assert analyzer.ready["name"] == "a1"
        target = f"127.0.0.1:{analyzer.port}"
        code, emit = run_logdist("emit", "--target", target, "--duration", "1.5", "--size", "200", "--json", *options)
        assert code == 0, emit.describe()
        summary = emit.wait_event("summary", timeout=1)
        assert analyzer.terminate() == 0, analyzer.describe()
        assert analyzer.wait_event("stopped", timeout=1)["received"] == summary["sent"]
    stats = read_json(stats_file)
    check_exact(stats, summary)
    assert summary["retried"] == summary["rejected"] == 0
    assert stats["name"] == "a1"
    assert stats["connections"] == len(summary["streams"])
    assert stats["bytes"] == summary["sent"] * (38 + 200)


def test_emit_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    stats_file = tmp_path / "analyzer.json"
    with ProcessGroup() as procs:
        analyzer = procs.analyzer(stats_file=stats_file)
        emit = procs.start(
            "emit", "--target", f"127.0.0.1:{analyzer.port}", "--rate", "max", "--duration", "120",
            "--batch", "200", "--connections", "2", "--json", ready=False,
        )  # fmt: skip
        wait_until(lambda: (read_json(stats_file) or {}).get("received", 0) > 0, what="analyzer receiving")
        emit.signal(signal.SIGTERM)
        assert emit.wait(30) == 0, emit.describe()
        summary = emit.wait_event("summary", timeout=1)
        assert summary["duration_s"] < 100
        assert analyzer.terminate() == 0
    check_exact(read_json(stats_file), summary)


def test_emit_reports_failure_when_nothing_listens() -> None:
    with ProcessGroup() as procs:
        analyzer = procs.analyzer()
        port = analyzer.port
        assert analyzer.terminate() == 0
    code, emit = run_logdist(
        "emit", "--target", f"127.0.0.1:{port}", "--duration", "1", "--connect-timeout", "1", "--json", timeout=60
    )
    assert code == 1
    summary = emit.wait_event("summary", timeout=1)
    assert summary["sent"] == 0 and "error" in summary


# -- (b) an in-process client survives its analyzer being killed and restarted ------------------------------


def test_client_retransmits_across_analyzer_kill_and_restart(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        asyncio.run(asyncio.wait_for(_kill_and_restart(procs, tmp_path), 120))


async def _kill_and_restart(procs: ProcessGroup, tmp_path: Path) -> None:
    first_stats, second_stats = tmp_path / "a1.json", tmp_path / "a2.json"
    # acks delayed by 200 ms: there are always unacked batches in flight when the analyzer dies
    journal = tmp_path / "a1.journal"
    a1: LogdistProcess = await asyncio.to_thread(
        procs.analyzer, "--journal", journal, name="a1", delay_ms=200, stats_file=first_stats
    )
    port = a1.port
    client = EmitterClient("127.0.0.1", port, client_id="kill-test", window=8, backoff_max=0.5)
    await client.connect(timeout=10)
    stream = StreamStamper()
    batches: dict[int, tuple[int, int]] = {}  # batch seq -> first, last message seq
    stopping = asyncio.Event()

    async def produce() -> None:
        while not stopping.is_set():
            first = stream.next_seq
            seq = await client.send(stream.block(PAYLOADS, severity=6))
            batches[seq] = (first, stream.next_seq - 1)

    producer = asyncio.create_task(produce())
    try:
        await until(lambda: client.acked_batches >= 10, what="first acks")
        # the periodic stats file shows progress while the analyzer is alive
        await until(lambda: (read_json(first_stats) or {}).get("received", 0) > 0, what="a1 stats file")
        assert client.unacked > 0
        await asyncio.to_thread(a1.kill)
        await until(lambda: not client.connected, what="client noticing the dead analyzer")
        acked_by_first = set(batches) - set(client.unacked_seqs())
        in_flight = client.unacked
        assert in_flight > 0
        # a killed analyzer leaves its last counts behind
        assert read_json(first_stats)["received"] > 0

        a2 = await asyncio.to_thread(procs.analyzer, listen=f"127.0.0.1:{port}", name="a2", stats_file=second_stats)
        resumed_at = client.acked_batches
        await until(lambda: client.acked_batches >= resumed_at + in_flight + 20, what="acks after restart")
    finally:
        stopping.set()
        await asyncio.wait_for(producer, 20)
    assert await client.flush(20)
    await client.close()
    assert await asyncio.to_thread(a2.terminate) == 0

    assert client.reconnects == 1
    assert client.retried >= in_flight
    assert client.sent_messages == client.acked_messages == stream.next_seq
    assert client.rejected == 0
    # nothing lost: every batch the first analyzer did not ack reached the second one
    stats = read_json(second_stats)
    runs = merge_runs(np.asarray(stats["streams"][str(stream.stream)]))
    for seq, (first, last) in batches.items():
        if seq not in acked_by_first:
            assert covered_within(runs, first, last) == last - first + 1, f"batch {seq} lost"
    assert stats["checksum_failures"] == 0
    # and over both analyzers (a1's id journal is written before each ack, so it survives kill -9): no loss
    first_runs = read_journal(journal).get(str(stream.stream), np.empty((0, 2), np.int64))
    both = merge_runs(np.concatenate([first_runs, runs]))
    assert covered_within(both, 0, stream.next_seq - 1) == stream.next_seq


def test_delayed_acks_arrive_in_order_and_later(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        analyzer = procs.analyzer(delay_ms=300)
        asyncio.run(asyncio.wait_for(_delayed(analyzer.port), 60))
        assert analyzer.terminate() == 0


async def _delayed(port: int) -> None:
    loop = asyncio.get_running_loop()
    clients = [EmitterClient("127.0.0.1", port, client_id=f"slow-{i}", window=16) for i in range(2)]
    await asyncio.gather(*(c.connect(timeout=10) for c in clients))
    started = loop.time()
    for client in clients:  # both connections wait at the same time: one does not hold up the other
        stream = StreamStamper()
        for _ in range(5):
            await client.send(stream.block(PAYLOADS[:10]))
    flushed = await asyncio.gather(*(c.flush(20) for c in clients))
    assert all(flushed)
    assert loop.time() - started >= 0.29  # no ack before its delay
    for client in clients:
        assert client.acked_messages == 50 and client.retried == 0
        await client.close()


# -- (c) garbage on one connection does not disturb another ------------------------------------------------


def test_garbage_connection_gets_error_and_others_keep_flowing(tmp_path: Path) -> None:
    stats_file = tmp_path / "analyzer.json"
    with ProcessGroup() as procs:
        analyzer = procs.analyzer(stats_file=stats_file)
        asyncio.run(asyncio.wait_for(_garbage(analyzer.port), 90))
        assert analyzer.alive
        assert analyzer.terminate() == 0
    stats = read_json(stats_file)
    assert stats["protocol_errors"] == 3
    assert stats["duplicates"] == 0 and stats["checksum_failures"] == 0


async def _raw_exchange(port: int, *steps: tuple[bytes, int]) -> list[Any]:
    """On a fresh connection, for each ``(data, n)``: send ``data``, then read until ``n`` more events arrived
    (``n = -1``: until the server closes the connection). Returns every event received.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder()
    events: list[Any] = []
    try:
        for data, n in steps:
            writer.write(data)
            await writer.drain()
            goal = len(events) + n
            while n < 0 or len(events) < goal:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    assert n < 0, f"connection closed early after {events}"
                    break
                events += decoder.feed(chunk)
    finally:
        writer.close()
    return events


async def _garbage(port: int) -> None:
    client = EmitterClient("127.0.0.1", port, client_id="good", window=4)
    await client.connect(timeout=10)
    stream = StreamStamper()
    stopping = asyncio.Event()

    async def produce() -> None:
        while not stopping.is_set():
            await client.send(stream.block(PAYLOADS))

    producer = asyncio.create_task(produce())
    try:
        await until(lambda: client.acked_batches >= 5, what="acks before the garbage")
        rng = random.Random(42)
        garbage = bytes(rng.randrange(256) for _ in range(4096))

        # a proper handshake and a heartbeat, then garbage
        hello = encode_hello(Hello(role="emitter", client_id="garbage"))
        events = await _raw_exchange(port, (hello + encode_heartbeat(77), 2), (garbage, -1))
        assert isinstance(events[0], Welcome)
        assert events[1] == Heartbeat(77, pong=True)
        assert len(events) == 3 and isinstance(events[-1], Error), events
        assert events[-1].code in (ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE)
        assert events[-1].reason

        # garbage straight away (a zero-length frame)
        events = await _raw_exchange(port, (b"\x00\x00\x00\x00" + garbage, -1))
        assert len(events) == 1 and isinstance(events[0], Error) and events[0].code == ErrorCode.BAD_FRAME

        # a well-formed BATCH, but before HELLO
        events = await _raw_exchange(port, (encode_batch(0, StreamStamper().block(PAYLOADS[:3])), -1))
        assert len(events) == 1 and isinstance(events[0], Error) and events[0].code == ErrorCode.UNEXPECTED_FRAME

        after = client.acked_batches
        await until(lambda: client.acked_batches >= after + 5, what="acks after the garbage")
    finally:
        stopping.set()
        await asyncio.wait_for(producer, 20)
    assert await client.flush(20)
    await client.close()
    assert client.reconnects == 0 and client.retried == 0
    assert client.acked_messages == client.sent_messages == stream.next_seq


# -- the client against a scripted server: RETRY, REJECTED, ERROR, heartbeats, the window ------------------


class ScriptedServer:
    """An in-process native-protocol server; ``answer(conn_no, batch)`` returns the frames to send back."""

    def __init__(self, answer: Callable[[int, Batch], bytes]) -> None:
        self.answer = answer
        self.seen: list[tuple[int, int]] = []  # (connection number, batch seq) in arrival order
        self.pongs: list[int] = []
        self.connections = 0
        self.transports: dict[int, Any] = {}  # connection number -> transport
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        outer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                outer.connections += 1
                self.number = outer.connections
                self.transport = outer.transports[self.number] = transport
                self.decoder = FrameDecoder()

            def data_received(self, data: bytes) -> None:
                for event in self.decoder.feed(data):
                    if isinstance(event, Hello):
                        self.transport.write(encode_welcome(Welcome(server_id="scripted")) + encode_heartbeat(99))
                    elif isinstance(event, Heartbeat) and event.pong:
                        outer.pongs.append(event.token)
                    elif isinstance(event, Batch):
                        outer.seen.append((self.number, event.seq))
                        reply = outer.answer(self.number, event)
                        if reply:
                            self.transport.write(reply)
                            if reply[4] == FrameType.ERROR:  # the sender of an ERROR closes
                                self.transport.close()

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _with_scripted(answer: Callable[[int, Batch], bytes], body: Callable[..., Any]) -> None:
    server = ScriptedServer(answer)
    port = await server.start()
    client = EmitterClient("127.0.0.1", port, client_id="scripted", window=4, backoff_initial=0.01)
    try:
        await client.connect(timeout=10)
        await body(server, client)
    finally:
        await client.close()
        server.close()


def test_client_resends_on_retry_and_drops_rejected() -> None:
    retried_once: set[int] = set()

    def answer(conn: int, batch: Batch) -> bytes:
        if batch.seq == 1 and batch.seq not in retried_once:
            retried_once.add(batch.seq)
            return encode_ack(batch.seq, AckStatus.RETRY)
        if batch.seq == 2:
            return encode_ack(batch.seq, AckStatus.REJECTED)
        return encode_ack(batch.seq, AckStatus.OK)

    async def body(server: ScriptedServer, client: EmitterClient) -> None:
        stream = StreamStamper()
        for _ in range(4):
            await client.send(stream.block(PAYLOADS[:10]))
        assert await client.flush(10)
        assert sorted(seq for _, seq in server.seen) == [0, 1, 1, 2, 3]
        assert (client.retried, client.rejected, client.rejected_messages) == (1, 1, 10)
        assert client.acked_messages == 30 and client.sent_messages == 40
        await until(lambda: server.pongs, what="pong")
        assert server.pongs == [99]  # the server's ping was answered with its token

    asyncio.run(asyncio.wait_for(_with_scripted(answer, body), 60))


def test_client_reconnects_after_error_frame_and_retransmits_in_order() -> None:
    def answer(conn: int, batch: Batch) -> bytes:
        if conn == 1 and batch.seq == 1:  # first connection: ack 0, then fail on 1
            return encode_error(ErrorCode.SHUTTING_DOWN, "going away")
        return encode_ack(batch.seq)

    async def body(server: ScriptedServer, client: EmitterClient) -> None:
        stream = StreamStamper()
        for _ in range(3):
            await client.send(stream.block(PAYLOADS[:5]))
        assert await client.flush(20)
        assert client.reconnects == 1 and server.connections == 2
        assert client.last_error == "SHUTTING_DOWN: going away"
        second = [seq for conn, seq in server.seen if conn == 2]
        assert second == sorted(second) and second[0] == 1 and set(second) >= {1, 2}
        assert client.acked_messages == client.sent_messages == 15
        assert client.retried >= 1

    asyncio.run(asyncio.wait_for(_with_scripted(answer, body), 60))


def test_client_send_waits_for_the_window() -> None:
    held: list[int] = []

    def answer(conn: int, batch: Batch) -> bytes:
        held.append(batch.seq)
        return b""  # no ack until the test releases it

    async def body(server: ScriptedServer, client: EmitterClient) -> None:
        stream = StreamStamper()
        for _ in range(4):  # window=4: these return at once
            await client.send(stream.block(PAYLOADS[:2]))
        fifth = asyncio.create_task(client.send(stream.block(PAYLOADS[:2])))
        await until(lambda: len(held) == 4, what="four batches at the server")
        for _ in range(20):
            await asyncio.sleep(0)
        assert not fifth.done() and client.unacked == 4
        assert not await client.flush(0.01)
        server.transports[1].write(encode_ack(0))  # ack the oldest batch: the fifth send may go
        assert await asyncio.wait_for(fifth, 10) == 4
        await until(lambda: len(held) == 5, what="the fifth batch at the server")
        server.transports[1].write(b"".join(encode_ack(seq) for seq in range(1, 5)))
        assert await client.flush(10)

    asyncio.run(asyncio.wait_for(_with_scripted(answer, body), 60))
