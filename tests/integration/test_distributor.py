"""The distributor end to end, with real processes on loopback: weights, crashes, hangs, outages, bad input."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from logdist.wire.errors import ErrorCode
from logdist.wire.native import Error, FrameDecoder, Hello, Role, encode_hello
from tests.cluster import WEIGHTS, Cluster, finish
from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(240)


def test_weights_hold_within_half_a_point_over_100k_messages(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = Cluster(procs, tmp_path)
        summary = finish(cluster, cluster.emit(rate=60_000, duration=3, connections=3, batch=317))
        assert summary["sent"] >= 100_000
        acct = cluster.account(summary)
        assert acct["lost"] == 0 and acct["duplicates"] == 0
        for name, weight in WEIGHTS.items():
            share = acct[name] / acct["received"]
            assert abs(share - weight) < 0.005, (name, share)
            assert abs(acct[name] - weight * summary["sent"]) <= 4, "exact per message, within rounding per stream"
        assert cluster.distributor.terminate() == 0


def test_kill_9_analyzer_loses_nothing_and_its_share_goes_to_the_others(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = Cluster(procs, tmp_path)
        emitter = cluster.emit(rate=40_000, duration=6)
        wait_until(lambda: cluster.delivered()["a1"] > 20_000, 20, "traffic flowing")
        cluster.analyzers["a1"].kill()
        wait_until(lambda: cluster.state("a1") != "up", 5, "a1 detected down")
        before = cluster.delivered()
        wait_until(lambda: sum(cluster.delivered().values()) > sum(before.values()) + 60_000, 30, "more traffic")
        after = cluster.delivered()
        summary = finish(cluster, emitter)
        gained = {name: after[name] - before[name] for name in ("a2", "a3", "a4")}
        total = sum(gained.values())
        for name, count in gained.items():
            expected = WEIGHTS[name] / (1 - WEIGHTS["a1"])
            assert abs(count / total - expected) < 0.01, (name, count / total, expected)
        acct = cluster.account(summary)
        assert acct["lost"] == 0, acct
        assert cluster.distributor.terminate() == 0


def test_sigstop_analyzer_is_detected_within_a_second_and_rejoins_after_sigcont(tmp_path: Path) -> None:
    import signal

    with ProcessGroup() as procs:
        cluster = Cluster(procs, tmp_path)
        emitter = cluster.emit(rate=30_000, duration=8)
        wait_until(lambda: cluster.delivered()["a2"] > 10_000, 20, "traffic flowing")
        stopped = time.monotonic()
        cluster.analyzers["a2"].signal(signal.SIGSTOP)
        wait_until(lambda: cluster.state("a2") != "up", 5, "a2 detected as hung")
        detected = time.monotonic() - stopped
        assert detected < 1.0 + 0.2, f"hang detected after {detected:.2f}s"  # 0.2 s: polling the admin API
        cluster.analyzers["a2"].signal(signal.SIGCONT)
        wait_until(lambda: cluster.state("a2") in ("up", "slow_start"), 10, "a2 back")
        wait_until(lambda: cluster.state("a2") == "up", 10, "a2 out of slow start")
        base = cluster.delivered()
        wait_until(lambda: sum(cluster.delivered().values()) > sum(base.values()) + 40_000, 30, "traffic after rejoin")
        now = cluster.delivered()
        total = sum(now.values()) - sum(base.values())
        share = (now["a2"] - base["a2"]) / total
        assert abs(share - WEIGHTS["a2"]) < 0.02, f"a2 converges to its weight after rejoining, got {share:.3f}"
        summary = finish(cluster, emitter)
        assert cluster.account(summary)["lost"] == 0
        assert cluster.distributor.terminate() == 0


def test_all_analyzers_down_then_back_loses_nothing(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = Cluster(procs, tmp_path, max_pending_mb="8")
        emitter = cluster.emit(rate=30_000, duration=6)
        wait_until(lambda: sum(cluster.delivered().values()) > 20_000, 20, "traffic flowing")
        for proc in cluster.analyzers.values():
            proc.kill()
        wait_until(lambda: all(a["state"] != "up" for a in cluster.stats()["analyzers"]), 5, "all down")
        wait_until(lambda: cluster.stats()["parked"] > 10_000, 10, "messages parked while nobody is up")
        for name in list(cluster.analyzers):
            cluster.start_analyzer(name, port=cluster.ports[name])
        summary = finish(cluster, emitter)
        acct = cluster.account(summary)
        assert acct["lost"] == 0, acct
        assert cluster.stats()["parked"] == 0
        assert cluster.distributor.terminate() == 0


def test_malformed_input_from_one_emitter_does_not_disturb_another(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = Cluster(procs, tmp_path)
        emitter = cluster.emit(rate=20_000, duration=3)
        host, _, port = cluster.target.rpartition(":")
        for garbage in (
            b"\xff" * 64,
            encode_hello(Hello(role=Role.EMITTER, client_id="bad")) + b"\x05\x00\x00\x00\x63junk",
        ):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(garbage)
                decoder = FrameDecoder()
                errors: list[Error] = []
                while not errors:
                    data = sock.recv(65536)
                    assert data, "connection closed without an ERROR frame"
                    errors = [e for e in decoder.feed(data) if isinstance(e, Error)]
                assert errors[0].code in (ErrorCode.FRAME_TOO_LARGE, ErrorCode.BAD_FRAME)
                assert errors[0].reason
                assert sock.recv(65536) == b"", "the distributor closes the bad connection"
        summary = finish(cluster, emitter)
        acct = cluster.account(summary)
        assert acct["lost"] == 0 and acct["duplicates"] == 0
        assert cluster.stats()["ingest"]["bad_frames"] == 2
        assert cluster.distributor.terminate() == 0
