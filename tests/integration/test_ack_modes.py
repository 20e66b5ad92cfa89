"""Ack modes and retransmission dedup, end to end with real processes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from logdist.emitter.client import EmitterClient, StreamStamper
from logdist.wire.native import Ack, FrameDecoder, Hello, Role, Welcome, encode_batch, encode_hello
from tests.procs import ProcessGroup
from tests.procs import admin_stats as stats

pytestmark = pytest.mark.timeout(120)


def delivered(admin: str) -> int:
    return sum(a["delivered"] for a in stats(admin)["analyzers"])


@pytest.mark.parametrize("mode", ["accepted", "delivered"])
def test_delivered_mode_acks_only_after_the_analyzer_acked(mode: str, tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        analyzer = procs.analyzer(delay_ms=400)
        distributor = procs.start(
            "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--ack", mode,
            "--analyzer", f"a=127.0.0.1:{analyzer.port}@1",
        )  # fmt: skip
        host, _, port = distributor.ready["listen"].rpartition(":")

        async def send_one() -> int:
            client = EmitterClient(host, int(port), client_id="ackmode")
            await client.connect()
            await client.send(StreamStamper().block([b"hello %d" % i for i in range(100)]))
            assert await client.flush(timeout=10)
            seen = await asyncio.to_thread(delivered, distributor.ready["admin"])
            await client.close()
            return seen

        seen_at_ack = asyncio.run(send_one())
        if mode == "delivered":
            assert seen_at_ack == 100, "the emitter's ack waited for the analyzer's"
        else:
            assert seen_at_ack == 0, "accepted mode acks before the (slow) analyzer has acked"


def test_retransmitted_batches_are_routed_once(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        analyzer = procs.analyzer("--journal", tmp_path / "a.journal")
        distributor = procs.start(
            "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--analyzer", f"a=127.0.0.1:{analyzer.port}@1",
        )  # fmt: skip
        host, _, port = distributor.ready["listen"].rpartition(":")
        block = StreamStamper().block([b"once %d" % i for i in range(50)])
        hello = encode_hello(Hello(role=Role.EMITTER, client_id="retry", options={"session": "s-1"}))
        acks: list[int] = []
        for _connection in range(2):  # the second connection replays like an emitter after a reconnect
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(hello + encode_batch(1, block) + encode_batch(1, block) + encode_batch(2, block))
                decoder = FrameDecoder()
                events: list = []
                while len([e for e in events if isinstance(e, Ack)]) < 3:
                    data = sock.recv(65536)
                    assert data
                    events += decoder.feed(data)
                assert isinstance(events[0], Welcome)
                acks += [e.seq for e in events if isinstance(e, Ack)]
        assert acks == [1, 1, 2, 1, 1, 2]
        admin = distributor.ready["admin"]
        assert stats(admin)["deduplicated_batches"] == 4
        assert stats(admin)["ingest"]["messages"] == 100, "only the two distinct batches were accepted"
