"""`logdist bench` and `logdist demo` end to end, run as a user runs them (every role a separate process)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.procs import LogdistProcess

pytestmark = pytest.mark.slow

REPORT_FIELDS = {
    "msgs_per_s",
    "latency_ms",
    "max_share_deviation_pp",
    "shares",
    "sent",
    "delivered",
    "lost",
    "duplicates",
    "distributor_rss_mb",
    "distributor_cpu_s_per_million",
    "command",
    "machine",
    "python",
    "timestamp",
}


def run(*args: str, timeout: float) -> tuple[int, LogdistProcess]:
    """Run ``logdist ARGS`` to completion; afterwards nothing it started may survive."""
    proc = LogdistProcess(args)
    try:
        code = proc.wait(timeout)
    finally:
        proc.stop()
        # The child leads its own process group (tests.procs starts it in a new session): if it was stopped
        # the hard way, its own children (distributor, analyzers, emitters) are still in that group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return code, proc


def test_bench_json_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code, proc = run("bench", "--duration", "3", "--rate", "20000", "--json", "--out", str(out), timeout=90)
    assert code == 0, proc.describe()
    reports = [e for e in proc.events if "msgs_per_s" in e]
    assert len(reports) == 1, proc.describe()
    report = reports[0]
    assert report.keys() >= REPORT_FIELDS, REPORT_FIELDS - report.keys()
    assert {"p50", "p95", "p99", "p999"} <= report["latency_ms"].keys()
    assert all(isinstance(v, (int, float)) for v in report["latency_ms"].values())
    assert {"cpu_model", "cores"} <= report["machine"].keys()
    assert report["sent"] > 0
    assert report["lost"] == 0
    assert report["delivered"] == report["sent"]
    assert report["max_share_deviation_pp"] < 1
    assert list(report["shares"]) == ["a1", "a2", "a3", "a4"]
    assert [s["configured"] for s in report["shares"].values()] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert report["msgs_per_s"] > 0 and report["distributor_rss_mb"] > 0
    assert json.loads(out.read_text()) == report


def test_demo_kills_and_restarts_an_analyzer_without_loss() -> None:
    code, proc = run("demo", "--duration", "12", timeout=100)
    text = "\n".join(proc.stdout_lines)
    assert code == 0, proc.describe()
    summary = text[text.rindex("summary") :]
    assert re.search(r"\blost 0\b", summary), text[-3000:]
    assert "killed a2" in text and "restarted a2" in text
    assert "a2 down" in summary and "result: OK" in summary
