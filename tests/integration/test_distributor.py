"""The distributor end to end, with real processes on loopback: weights, crashes, hangs, outages, bad input."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import merge_runs, runs_length
from logdist.wire.errors import ErrorCode
from logdist.wire.native import Error, FrameDecoder, Hello, Role, encode_hello
from tests.procs import LogdistProcess, ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(240)

WEIGHTS = {"a1": 0.4, "a2": 0.3, "a3": 0.2, "a4": 0.1}


class Cluster:
    """Four reference analyzers (each with an id journal) behind one distributor."""

    def __init__(self, procs: ProcessGroup, tmp: Path, weights: dict[str, float] = WEIGHTS, **serve: str) -> None:
        self.procs = procs
        self.tmp = tmp
        self.weights = weights
        self.analyzers: dict[str, LogdistProcess] = {}
        self.ports: dict[str, int] = {}
        for name in weights:
            self.start_analyzer(name)
        args = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--slow-start", "1"]
        for key, value in serve.items():
            args += [f"--{key.replace('_', '-')}", value]
        for name, weight in weights.items():
            args += ["--analyzer", f"{name}=127.0.0.1:{self.ports[name]}@{weight}"]
        self.distributor = procs.start(*args)
        self.admin = self.distributor.ready["admin"]
        self.target = self.distributor.ready["listen"]
        wait_until(lambda: all(a["state"] == "up" for a in self.stats()["analyzers"]), 20, "all analyzers up")

    def start_analyzer(self, name: str, port: int = 0) -> LogdistProcess:
        proc = self.procs.analyzer("--journal", self.tmp / f"{name}.journal", listen=f"127.0.0.1:{port}", name=name)
        self.analyzers[name] = proc
        self.ports[name] = proc.port
        return proc

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.admin}/stats", timeout=5) as response:
            return json.load(response)

    def delivered(self) -> dict[str, int]:
        return {a["name"]: a["delivered"] for a in self.stats()["analyzers"]}

    def state(self, name: str) -> str:
        return next(a["state"] for a in self.stats()["analyzers"] if a["name"] == name)

    def emit(self, rate: int, duration: float, connections: int = 2, batch: int = 500) -> LogdistProcess:
        args = ["emit", "--target", self.target, "--rate", str(rate), "--duration", str(duration)]
        args += ["--connections", str(connections), "--size", "200", "--batch", str(batch), "--json", "--quiet"]
        return self.procs.start(*args, ready=False)

    def drained(self) -> bool:
        stats = self.stats()
        return not stats["parked"] and all(not a["queued"] and not a["in_flight"] for a in stats["analyzers"])

    def account(self, summary: dict[str, Any]) -> dict[str, int]:
        """Lost and duplicate messages over every analyzer's journal, against what the emitter sent."""
        per_stream: dict[str, list] = {}
        received: dict[str, int] = {}
        for name in self.weights:
            runs_by_stream = read_journal(self.tmp / f"{name}.journal")
            received[name] = sum(runs_length(runs) for runs in runs_by_stream.values())
            for stream, runs in runs_by_stream.items():
                per_stream.setdefault(stream, []).append(runs)
        lost = duplicates = 0
        for stream, sent in summary["streams"].items():
            import numpy as np

            runs = merge_runs(np.concatenate(per_stream[stream])) if stream in per_stream else np.empty((0, 2))
            seen = runs_length(runs)
            lost += sent - seen
            duplicates += sum(runs_length(r) for r in per_stream.get(stream, [])) - seen
        return {"lost": lost, "duplicates": duplicates, "received": sum(received.values()), **received}


def finish(cluster: Cluster, emitter: LogdistProcess, timeout: float = 60) -> dict[str, Any]:
    assert emitter.wait(timeout) == 0, emitter.describe()
    summary = emitter.wait_event("summary")
    assert summary["sent"] > 0 and summary["sent"] == summary["acked"]
    wait_until(cluster.drained, 30, "distributor drained")
    return summary


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
