"""``logdist pool`` autoscales real analyzer processes behind a real distributor, without losing a message."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import merge_runs, runs_length
from tests.integration.test_admin_reload import Admin
from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(180)
TOKEN = "pool-token"


def names(admin: Admin) -> set[str]:
    return {a["name"] for a in admin.call("GET", "/v1/analyzers")[1]}


def idle(admin: Admin) -> bool:
    return not any(a["queued"] or a["in_flight"] for a in admin.call("GET", "/v1/analyzers")[1])


def unique_seen(journals: list[Path], stream: str) -> int:
    runs = [run for path in journals if (run := read_journal(path).get(stream)) is not None]
    return runs_length(merge_runs(np.concatenate(runs))) if runs else 0


def test_pool_scales_up_under_backlog_and_back_down_without_loss(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        fixed = procs.analyzer("--journal", tmp_path / "fixed.journal", name="fixed")
        distributor = procs.start(
            "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--admin-token", TOKEN,
            "--analyzer", f"fixed=127.0.0.1:{fixed.port}@1", "--window", "1",
        )  # fmt: skip
        admin = Admin(distributor.ready["admin"], TOKEN)
        command = (
            "logdist analyzer --listen 127.0.0.1:0 --name {name} --delay-ms 200 "
            f"--journal {shlex.quote(str(tmp_path))}/{{name}}.journal"
        )
        pool = procs.start(
            "pool", "--admin", distributor.ready["admin"], "--token", TOKEN, "--min", "1", "--max", "3",
            "--command", command, "--scale-up-backlog", "500", "--scale-down-backlog", "50",
            "--interval", "0.2", "--cooldown", "1", "--scale-down-readings", "3",
        )  # fmt: skip
        assert pool.ready["size"] == 1
        assert names(admin) == {"fixed", "pool-1"}

        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "20000", "--duration", "6",
            "--batch", "250", "--json", "--quiet", ready=False,
        )  # fmt: skip
        up = pool.wait_event("scale", 30, lambda e: e["to"] >= 2 and e["delta"] == 1)
        assert "backlog" in up["reason"]
        assert "pool-2" in names(admin)

        assert emitter.wait(60) == 0, emitter.describe()
        summary: dict[str, Any] = emitter.wait_event("summary")
        assert summary["acked"] == summary["sent"] > 0

        start = pool.events.index(up)
        down = pool.wait_event("scale", 60, lambda e: e["to"] == 1 and e["delta"] == -1, start=start)
        assert "backlog" in down["reason"]
        wait_until(lambda: names(admin) == {"fixed", "pool-1"}, 10, "pool back to pool-1 only")
        wait_until(lambda: idle(admin), 30, "distributor drained")

        journals = sorted(tmp_path.glob("*.journal"))
        assert len(journals) >= 3  # fixed, pool-1, pool-2 (and pool-3 if it got there)
        for stream, sent in summary["streams"].items():
            assert unique_seen(journals, stream) == sent, f"stream {stream} lost messages"
        assert sum(summary["streams"].values()) == summary["sent"]

        assert pool.terminate(60) == 0, pool.describe()
        assert names(admin) == {"fixed"}, "SIGTERM removes the pool's analyzers"
        assert idle(admin)
        assert distributor.terminate() == 0
