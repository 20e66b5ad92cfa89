"""A distributor in front of reference analyzers (each with an id journal), as real processes, for end-to-end tests.

    from tests.cluster import Cluster, finish

    with ProcessGroup() as procs:
        cluster = Cluster(procs, tmp_path)
        summary = finish(cluster, cluster.emit(rate=20_000, duration=3))
        assert cluster.account(summary)["lost"] == 0

``dial`` puts something between the distributor and an analyzer: ``dial={"a1": f}`` calls ``f(address)`` with
a1's real address and the distributor dials what it returns (e.g. a chaos proxy's address).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import covered_within, merge_runs, runs_length
from tests.procs import LogdistProcess, ProcessGroup, wait_until

WEIGHTS = {"a1": 0.4, "a2": 0.3, "a3": 0.2, "a4": 0.1}


class Cluster:
    """Reference analyzers (each with an id journal) behind one distributor; ``serve`` adds ``logdist serve`` flags."""

    def __init__(
        self,
        procs: ProcessGroup,
        tmp: Path,
        weights: dict[str, float] = WEIGHTS,
        *,
        analyzer_args: Mapping[str, Sequence[str]] | None = None,
        dial: Mapping[str, Callable[[str], str]] | None = None,
        **serve: str,
    ) -> None:
        self.procs = procs
        self.tmp = tmp
        self.weights = weights
        self.analyzer_args = dict(analyzer_args or {})
        self.analyzers: dict[str, LogdistProcess] = {}
        self.ports: dict[str, int] = {}
        for name in weights:
            self.start_analyzer(name)
        self.dialled = {name: f"127.0.0.1:{self.ports[name]}" for name in weights}
        for name, via in (dial or {}).items():
            self.dialled[name] = via(self.dialled[name])
        args = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--slow-start", "1"]
        for key, value in serve.items():
            args += [f"--{key.replace('_', '-')}", value]
        for name, weight in weights.items():
            args += ["--analyzer", f"{name}={self.dialled[name]}@{weight}"]
        self.distributor = procs.start(*args)
        self.admin = self.distributor.ready["admin"]
        self.target = self.distributor.ready["listen"]
        wait_until(lambda: all(a["state"] == "up" for a in self.stats()["analyzers"]), 20, "all analyzers up")

    def start_analyzer(self, name: str, port: int = 0) -> LogdistProcess:
        extra = self.analyzer_args.get(name, ())
        proc = self.procs.analyzer(
            "--journal", self.tmp / f"{name}.journal", *extra, listen=f"127.0.0.1:{port}", name=name
        )
        self.analyzers[name] = proc
        self.ports[name] = proc.port
        return proc

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.admin}/stats", timeout=5) as response:
            return json.load(response)

    def analyzer(self, name: str) -> dict[str, Any]:
        """The distributor's /stats entry of analyzer ``name``."""
        return next(a for a in self.stats()["analyzers"] if a["name"] == name)

    def delivered(self) -> dict[str, int]:
        return {a["name"]: a["delivered"] for a in self.stats()["analyzers"]}

    def routed(self) -> dict[str, int]:
        """Messages each analyzer holds or has acknowledged (delivered + in flight + queued), from one snapshot:
        unlike ``delivered`` it does not depend on when acks happen to arrive."""
        return {a["name"]: a["delivered"] + a["in_flight"] + a["queued"] for a in self.stats()["analyzers"]}

    def state(self, name: str) -> str:
        return str(self.analyzer(name)["state"])

    def emit(self, rate: int | str, duration: float, connections: int = 2, batch: int = 500) -> LogdistProcess:
        args = ["emit", "--target", self.target, "--rate", str(rate), "--duration", str(duration)]
        args += ["--connections", str(connections), "--size", "200", "--batch", str(batch), "--json", "--quiet"]
        return self.procs.start(*args, ready=False)

    def drained(self) -> bool:
        stats = self.stats()
        return not stats["parked"] and all(not a["queued"] and not a["in_flight"] for a in stats["analyzers"])

    def account(self, summary: dict[str, Any]) -> dict[str, int]:
        """Lost and duplicate messages over every analyzer's journal, against what the emitter sent."""
        per_stream: dict[str, list[np.ndarray]] = {}
        received: dict[str, int] = {}
        for name in self.weights:
            runs_by_stream = read_journal(self.tmp / f"{name}.journal")
            received[name] = sum(runs_length(runs) for runs in runs_by_stream.values())
            for stream, runs in runs_by_stream.items():
                per_stream.setdefault(stream, []).append(runs)
        lost = duplicates = unexpected = 0
        for stream, runs_list in per_stream.items():
            runs = merge_runs(np.concatenate(runs_list))
            sent = summary["streams"].get(stream, 0)
            seen = covered_within(runs, 0, sent - 1)
            lost += sent - seen
            duplicates += sum(runs_length(r) for r in runs_list) - runs_length(runs)
            unexpected += runs_length(runs) - seen  # ids never sent: a corrupted stream or seq field
        lost += sum(sent for stream, sent in summary["streams"].items() if stream not in per_stream)
        return {
            "lost": lost,
            "duplicates": duplicates,
            "unexpected": unexpected,
            "received": sum(received.values()),
            **received,
        }


def finish(cluster: Cluster, emitter: LogdistProcess, timeout: float = 60) -> dict[str, Any]:
    """Wait for the emitter to end (every message acked) and the distributor to drain; the emitter's summary."""
    assert emitter.wait(timeout) == 0, emitter.describe()
    summary = emitter.wait_event("summary")
    assert summary["sent"] > 0 and summary["sent"] == summary["acked"]
    wait_until(cluster.drained, 30, "distributor drained")
    return summary
