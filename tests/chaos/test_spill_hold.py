"""Spill (memory full -> spool) and hold (a down analyzer's share is kept for it), with real processes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.chaos.test_distributor_crash import lost
from tests.procs import ProcessGroup, wait_until
from tests.procs import admin_stats as stats

pytestmark = pytest.mark.timeout(150)


def test_spill_keeps_accepting_past_the_memory_bound_and_delivers_later(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        a1 = procs.analyzer("--journal", tmp_path / "a1.journal", name="a1")
        config = tmp_path / "logdist.toml"
        config.write_text(
            'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
            f'[spool]\npath = "{tmp_path / "spool"}"\n'
            '[limits]\nmax_pending_mb = 2\nwhen_full = "spill"\n'
            f'[[analyzers]]\nname = "a1"\naddress = "127.0.0.1:{a1.port}"\n'
        )
        distributor = procs.start("serve", "--config", config)
        admin = distributor.ready["admin"]
        wait_until(lambda: stats(admin)["analyzers"][0]["state"] == "up", 20, "a1 up")
        a1.signal(signal.SIGSTOP)  # nothing can be delivered: memory fills, then the spool takes over
        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "30000", "--duration", "2",
            "--connections", "1", "--batch", "1000", "--json", "--quiet", ready=False,
        )  # fmt: skip
        assert emitter.wait(60) == 0, "the emitter is never blocked: everything acked while a1 is stopped"
        summary = emitter.wait_event("summary")
        snapshot = stats(admin)
        assert snapshot["spilled"] > 0 and not snapshot["paused"]
        assert snapshot["pending_bytes"] < 8 * 1024 * 1024, "memory stays near its bound"
        a1.signal(signal.SIGCONT)
        wait_until(lambda: sum(a["delivered"] for a in stats(admin)["analyzers"]) >= summary["sent"], 60, "unspilled")
        assert lost(tmp_path, ["a1"], summary["streams"]) == 0
        assert distributor.terminate() == 0


def test_hold_keeps_a_down_analyzers_share_for_it(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        a1 = procs.analyzer("--journal", tmp_path / "a1.journal", name="a1")
        a2 = procs.analyzer("--journal", tmp_path / "a2.journal", name="a2")
        config = tmp_path / "logdist.toml"
        config.write_text(
            'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
            f'[spool]\npath = "{tmp_path / "spool"}"\n[delivery]\nslow_start_s = 0.5\n'
            f'[[analyzers]]\nname = "a1"\naddress = "127.0.0.1:{a1.port}"\nfailure_policy = "hold"\n'
            f'[[analyzers]]\nname = "a2"\naddress = "127.0.0.1:{a2.port}"\n'
        )
        distributor = procs.start("serve", "--config", config)
        admin = distributor.ready["admin"]
        wait_until(lambda: all(a["state"] == "up" for a in stats(admin)["analyzers"]), 20, "up")
        port = a1.port
        a1.kill()
        wait_until(lambda: stats(admin)["analyzers"][0]["state"] != "up", 5, "a1 down")
        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "20000", "--duration", "2",
            "--connections", "1", "--batch", "500", "--json", "--quiet", ready=False,
        )  # fmt: skip
        assert emitter.wait(60) == 0, emitter.describe()
        summary = emitter.wait_event("summary")
        during = {a["name"]: a["delivered"] for a in stats(admin)["analyzers"]}
        assert abs(during["a2"] / summary["sent"] - 0.5) < 0.01, "a2 only gets its own half while a1 is away"
        assert stats(admin)["held"] > 0
        procs.analyzer("--journal", tmp_path / "a1.journal", name="a1", listen=f"127.0.0.1:{port}")
        wait_until(
            lambda: sum(a["delivered"] for a in stats(admin)["analyzers"]) >= summary["sent"], 60, "held replayed"
        )
        after = {a["name"]: a["delivered"] for a in stats(admin)["analyzers"]}
        assert abs(after["a1"] / summary["sent"] - 0.5) < 0.01, "a1 got its own partition after returning"
        assert lost(tmp_path, ["a1", "a2"], summary["streams"]) == 0
        assert distributor.terminate() == 0
