"""Failure timings with real processes: time to redistribute after an analyzer crash (SIGKILL) and after a hang
(SIGSTOP), and the replay rate after an outage of every analyzer.

    .venv/bin/python benchmarks/failover.py --out benchmarks/failover.json

Redistribution is the time from the signal until the distributor's route table no longer holds the analyzer
(its unacknowledged batches are rerouted in the same step), read by polling /stats every 5 ms. The replay rate is
how fast the messages held during an outage of all analyzers are delivered once they are back.
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from logdist.bench.procs import Children
from logdist.bench.runner import Cluster


def poll(cluster: Cluster, predicate: Any, timeout: float = 20.0) -> tuple[float, dict[str, Any]]:
    start = time.monotonic()
    while True:
        stats = cluster.stats()
        if predicate(stats):
            return time.monotonic() - start, stats
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def routed_to(stats: dict[str, Any], name: str) -> float:
    return next(a["route_share"] for a in stats["analyzers"] if a["name"] == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds every analyzer is stopped")
    parser.add_argument("--out")
    args = parser.parse_args()
    result: dict[str, Any] = {"command": "benchmarks/failover.py", "rate": args.rate}
    with tempfile.TemporaryDirectory() as tmp, Children() as children:
        cluster = Cluster(Path(tmp), [0.25, 0.25, 0.25, 0.25], children, serve_args=["--slow-start", "1"])
        cluster.start()
        cluster.start_emitters(1, args.rate, 60, 2, 200, 500)
        poll(cluster, lambda s: s["ingest"]["messages"] > args.rate)

        cluster.analyzers["a1"].signal(signal.SIGKILL)
        result["crash_redistribution_s"] = round(poll(cluster, lambda s: routed_to(s, "a1") == 0)[0], 3)

        cluster.analyzers["a2"].signal(signal.SIGSTOP)
        result["hang_redistribution_s"] = round(poll(cluster, lambda s: routed_to(s, "a2") == 0)[0], 3)
        cluster.analyzers["a2"].signal(signal.SIGCONT)
        cluster.start_analyzer("a1", port=cluster.ports["a1"])
        poll(cluster, lambda s: all(a["state"] == "up" for a in s["analyzers"]))

        for name in cluster.names:
            cluster.analyzers[name].signal(signal.SIGSTOP)
        time.sleep(args.outage)  # the outage itself: messages pile up in the distributor meanwhile
        held = Cluster.outstanding(cluster.stats())
        for name in cluster.names:
            cluster.analyzers[name].signal(signal.SIGCONT)
        drained_s, _ = poll(cluster, lambda s: Cluster.outstanding(s) < args.rate * 0.05, timeout=60)
        result["outage_s"] = args.outage
        result["held_after_outage"] = held
        result["replay_s"] = round(drained_s, 3)
        result["replay_msgs_per_s"] = round(held / drained_s) if drained_s else None
        cluster.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
