"""Every analyzer kind behind one distributor: native, webhook, legacy (configured and dial-in), lines.

Native and legacy emitters feed it at once; the split must follow the weights exactly and every message must
arrive with its payload intact.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import runs_length
from logdist.wire.legacy import encode_frame
from tests.procs import ProcessGroup, start_example, wait_until
from tests.procs import admin_stats as stats

pytestmark = pytest.mark.timeout(180)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_mixed_analyzer_kinds_keep_exact_weights_and_payloads(tmp_path: Path) -> None:
    weights = {"native": 0.3, "hook": 0.25, "old": 0.2, "raw": 0.1, "dialin": 0.15}
    with ProcessGroup() as procs:
        native = procs.analyzer("--journal", tmp_path / "native.journal", name="native")
        hook = procs.add(start_example("webhook_analyzer.py", "--out", tmp_path / "hook.ndjson"))
        old = procs.add(
            start_example("legacy_analyzer.py", "--listen", "127.0.0.1:0", "--out", tmp_path / "old.ndjson")
        )
        raw = procs.add(start_example("lines_analyzer.py", "--out", tmp_path / "raw.ndjson"))
        distributor = procs.start(
            "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--ingest", "legacy=127.0.0.1:0", "--legacy-analyzers", "127.0.0.1:0",
            "--analyzer", f"native=127.0.0.1:{native.port}@{weights['native']}",
            "--analyzer", f"hook=http://{hook.ready['listen']}/ingest@{weights['hook']}",
            "--analyzer", f"old=legacy://{old.ready['listen']}@{weights['old']}",
            "--analyzer", f"raw=lines://{raw.ready['listen']}@{weights['raw']}",
        )  # fmt: skip
        admin = distributor.ready["admin"]
        listeners = distributor.ready["listeners"]
        dialin = procs.add(
            start_example(
                "legacy_analyzer.py", "--connect", listeners["legacy_analyzers"],
                "--weight", str(weights["dialin"]), "--out", tmp_path / "dialin.ndjson",
            )
        )  # fmt: skip
        wait_until(
            lambda: (
                {a["name"]: a["state"] for a in stats(admin)["analyzers"]}
                == {"native": "up", "hook": "up", "old": "up", "raw": "up", "legacy-1": "up"}
            ),
            20,
            "every kind up, the dial-in analyzer registered by its announced weight",
        )

        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "20000", "--duration", "2",
            "--connections", "2", "--batch", "250", "--json", "--quiet", ready=False,
        )  # fmt: skip
        legacy_payloads = [f"seed-emitter-{i:08d}-\u00e9".encode() for i in range(20_000)]
        host, _, port = listeners["legacy"].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"".join(encode_frame(i % 256, p) for i, p in enumerate(legacy_payloads)))
        assert emitter.wait(60) == 0, emitter.describe()
        sent_native = emitter.wait_event("summary")["sent"]
        total = sent_native + len(legacy_payloads)

        def delivered() -> dict[str, int]:
            return {a["name"]: a["delivered"] for a in stats(admin)["analyzers"]}

        wait_until(lambda: sum(delivered().values()) >= total, 30, "everything delivered")
        counts = delivered()
        assert sum(counts.values()) == total, "at-least-once with no failures: exactly once"
        by_weight = {"native": "native", "hook": "hook", "old": "old", "raw": "raw", "legacy-1": "dialin"}
        for name, count in counts.items():
            share = count / total
            assert abs(share - weights[by_weight[name]]) < 0.005, (name, share)

        for proc in (hook, old, raw, dialin, native):
            proc.terminate()
        received_native = sum(runs_length(r) for r in read_journal(tmp_path / "native.journal").values())
        assert received_native == counts["native"]
        assert len(lines_of(tmp_path / "hook.ndjson")) == counts["hook"]
        assert len(lines_of(tmp_path / "raw.ndjson")) == counts["raw"]
        assert len(lines_of(tmp_path / "old.ndjson")) == counts["old"]
        assert len(lines_of(tmp_path / "dialin.ndjson")) == counts["legacy-1"]

        # payloads from the seed emitter arrive byte for byte whatever the analyzer kind
        seen = {rec["message"] for rec in lines_of(tmp_path / "hook.ndjson") + lines_of(tmp_path / "raw.ndjson")}
        seen |= {rec["payload"] for rec in lines_of(tmp_path / "old.ndjson") + lines_of(tmp_path / "dialin.ndjson")}
        expected = {p.decode() for p in legacy_payloads}
        from_seed = {text for text in seen if text.startswith("seed-emitter-")}
        assert from_seed <= expected, "no payload altered on the way"
        assert len(from_seed) > 0.6 * len(expected), "the non-native kinds got their ~70 % of the seed traffic"
        assert distributor.terminate() == 0
