"""The distributor itself fails: kill -9 in durable mode, and SIGTERM with undelivered messages. Nothing
acknowledged to an emitter may be lost."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import merge_runs, runs_length
from tests.procs import LogdistProcess, ProcessGroup, wait_until
from tests.procs import admin_stats as stats

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lost(tmp_path: Path, names: list[str], streams: dict[str, int]) -> int:
    journals = [read_journal(tmp_path / f"{name}.journal") for name in names]
    missing = 0
    for stream, sent in streams.items():
        runs = [j[stream] for j in journals if stream in j]
        seen = runs_length(merge_runs(np.concatenate(runs))) if runs else 0
        missing += sent - seen
    return missing


def start_distributor(procs: ProcessGroup, port: int, spool: Path, analyzers: dict[str, int]) -> LogdistProcess:
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0", "--ack", "durable"]
    args += ["--spool-dir", spool, "--drain-timeout", "0.5"]
    for name, analyzer_port in analyzers.items():
        args += ["--analyzer", f"{name}=127.0.0.1:{analyzer_port}@1"]
    return procs.start(*args)


def test_kill_9_distributor_in_durable_mode_loses_nothing_acked(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        # a slow analyzer keeps batches outstanding, so the spool holds undelivered ones at the kill
        a1 = procs.analyzer("--journal", tmp_path / "a1.journal", name="a1", delay_ms=150)
        a2 = procs.analyzer("--journal", tmp_path / "a2.journal", name="a2")
        analyzers = {"a1": a1.port, "a2": a2.port}
        port = free_port()
        distributor = start_distributor(procs, port, tmp_path / "spool", analyzers)
        emitter = procs.start(
            "emit", "--target", f"127.0.0.1:{port}", "--rate", "20000", "--duration", "6",
            "--connections", "2", "--batch", "500", "--json", "--quiet", ready=False,
        )  # fmt: skip
        wait_until(lambda: stats(distributor.ready["admin"])["ingest"]["messages"] > 30_000, 20, "traffic")
        wait_until(lambda: (stats(distributor.ready["admin"])["spool"] or {}).get("records", 0) > 0, 10, "spooled")
        distributor.kill()
        restarted = start_distributor(procs, port, tmp_path / "spool", analyzers)
        assert emitter.wait(60) == 0, emitter.describe()
        summary = emitter.wait_event("summary")
        assert summary["acked"] == summary["sent"]
        admin = restarted.ready["admin"]
        wait_until(lambda: stats(admin)["spool"]["replayed"] > 0, 10, "replay after the restart")
        wait_until(lambda: stats(admin)["spool"]["records"] == 0, 30, "spool drained")
        assert lost(tmp_path, ["a1", "a2"], summary["streams"]) == 0
        assert restarted.terminate() == 0


def test_sigterm_spools_what_was_not_delivered_and_the_next_start_delivers_it(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        a1 = procs.analyzer("--journal", tmp_path / "a1.journal", name="a1")
        port = free_port()
        distributor = procs.start(
            "serve", "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0", "--spool-dir", tmp_path / "spool",
            "--drain-timeout", "0.5", "--analyzer", f"a1=127.0.0.1:{a1.port}@1",
        )  # fmt: skip
        emitter = procs.start(
            "emit", "--target", f"127.0.0.1:{port}", "--rate", "20000", "--duration", "2",
            "--connections", "1", "--batch", "500", "--json", "--quiet", ready=False,
        )  # fmt: skip
        wait_until(lambda: stats(distributor.ready["admin"])["ingest"]["messages"] > 5_000, 20, "traffic")
        a1.signal(signal.SIGSTOP)  # the only analyzer hangs: what is accepted now cannot be delivered
        assert emitter.wait(60) == 0, emitter.describe()
        summary = emitter.wait_event("summary")
        assert distributor.terminate() == 0
        a1.signal(signal.SIGCONT)
        restarted = procs.start(
            "serve", "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0", "--spool-dir", tmp_path / "spool",
            "--analyzer", f"a1=127.0.0.1:{a1.port}@1",
        )  # fmt: skip
        admin = restarted.ready["admin"]
        wait_until(lambda: stats(admin)["spool"]["records"] == 0, 30, "spool replayed and drained")
        assert stats(admin)["spool"]["replayed"] > 0
        assert lost(tmp_path, ["a1"], summary["streams"]) == 0
        assert restarted.terminate() == 0


def test_spool_full_tells_emitters_to_retry_and_loses_nothing(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        a1 = procs.analyzer("--journal", tmp_path / "a1.journal", name="a1")
        config = tmp_path / "logdist.toml"
        config.write_text(
            'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nack = "durable"\n'
            f'[spool]\npath = "{tmp_path / "spool"}"\nmax_mb = 3\n'
            f'[[analyzers]]\nname = "a1"\naddress = "127.0.0.1:{a1.port}"\n'
        )
        distributor = procs.start("serve", "--config", config)
        admin = distributor.ready["admin"]
        a1.signal(signal.SIGSTOP)  # nothing is delivered, so nothing leaves the spool: it fills up
        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "20000", "--duration", "2",
            "--connections", "1", "--batch", "1000", "--json", "--quiet", ready=False,
        )  # fmt: skip
        wait_until(lambda: stats(admin)["spool"]["append_failures"] > 0, 20, "the spool refuses appends when full")
        assert distributor.alive
        a1.signal(signal.SIGCONT)
        assert emitter.wait(60) == 0, emitter.describe()
        summary = emitter.wait_event("summary")
        assert summary["acked"] == summary["sent"] and summary["retried"] > 0
        wait_until(lambda: stats(admin)["spool"]["records"] == 0, 30, "spool drained")
        assert lost(tmp_path, ["a1"], summary["streams"]) == 0
        assert distributor.terminate() == 0
