"""A ~30 s local demo: weighted shares, an analyzer killed and restarted, then a summary.

A distributor fronts four reference analyzers (weights 0.4/0.3/0.2/0.1) while an emitter sends a steady load.
A table refreshed every second shows, per analyzer, its state, configured weight, the share it should get now
(from the distributor's effective weights), the share it got in the last second and its msg/s. At 1/3 of the
run one analyzer is killed with SIGKILL: its share goes to the others in proportion to their weights. At 2/3
it is restarted on the same port and rejoins through slow start. The summary checks every message end to end
(the analyzers' own records against what the emitter sent) and shows configured vs actual shares per phase.
Exit code 0 when nothing was lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from logdist.analyzer.stats import merge
from logdist.bench.procs import Child, Children, ProcError
from logdist.bench.runner import (
    DEFAULT_WEIGHTS,
    EMITTER_GRACE_S,
    Cluster,
    interrupt_on_sigterm,
    parse_weights,
    sent_streams,
    share_report,
    unique_by_analyzer,
    wait_emitters,
)

FAILOVER_TIMEOUT_S = 10.0


@dataclass
class Phase:
    """A stretch of the run; shares come from the distributor's per-analyzer delivered counters."""

    name: str
    start_s: float
    start_delivered: dict[str, int]
    expected: dict[str, float] | None  # None while an analyzer ramps up (slow start)
    end_s: float | None = None
    end_delivered: dict[str, int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        counts = {n: self.end_delivered.get(n, 0) - c for n, c in self.start_delivered.items()}
        total = sum(counts.values()) or 1
        shares = {}
        for name, count in counts.items():
            expected = None if self.expected is None else round(self.expected.get(name, 0.0), 6)
            shares[name] = {"expected": expected, "actual": round(count / total, 6), "messages": count}
        deviations = [abs(s["actual"] - s["expected"]) * 100 for s in shares.values() if s["expected"] is not None]
        return {
            "name": self.name,
            "start_s": round(self.start_s, 2),
            "end_s": round(self.end_s or self.start_s, 2),
            "shares": shares,
            "max_deviation_pp": round(max(deviations), 3) if deviations else None,
        }


class LiveTable:
    """Redraws a block of lines in place on a terminal; prints successive snapshots otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0

    def draw(self, lines: list[str]) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the first line of the last frame, clear below
        elif not self.tty:
            lines = [*lines, ""]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)


class Demo:
    """Runs the timeline against a started :class:`Cluster` and keeps what the summary needs."""

    def __init__(self, args: argparse.Namespace, cluster: Cluster, table: LiveTable) -> None:
        self.args = args
        self.cluster = cluster
        self.table = table
        self.victim: str = args.victim or cluster.names[min(1, len(cluster.names) - 1)]
        self.t0 = time.monotonic()
        self.events: list[str] = []
        self.phases: list[Phase] = []
        self.timeline: dict[str, float] = {}
        self._last: tuple[float, dict[str, int], int] | None = None

    # -- helpers -----------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        self.events.append(f"{self.now():6.1f} s  {text}")

    @staticmethod
    def delivered(stats: dict[str, Any]) -> dict[str, int]:
        return {a["name"]: int(a["delivered"]) for a in stats["analyzers"]}

    def state_of(self, stats: dict[str, Any]) -> str:
        return next(a["state"] for a in stats["analyzers"] if a["name"] == self.victim)

    def begin_phase(self, name: str, stats: dict[str, Any], expected: dict[str, float] | None) -> None:
        delivered = self.delivered(stats)
        if self.phases:
            self.phases[-1].end_s = self.now()
            self.phases[-1].end_delivered = delivered
        self.phases.append(Phase(name, self.now(), delivered, expected))

    # -- the timeline ------------------------------------------------------------------------------
    def run(self, emitter: Child) -> dict[str, Any]:
        """Tick every second, kill the victim at 1/3, restart it at 2/3; return the emitter's summary."""
        duration = self.args.duration
        self.begin_phase("all up", self.cluster.stats(), self.cluster.configured_shares())
        actions = [(duration / 3, self.kill), (2 * duration / 3, self.restart)]
        next_tick = 1.0

        def tick() -> None:
            nonlocal next_tick
            while actions and self.now() >= actions[0][0]:
                actions.pop(0)[1]()
            recovered = "full_weight_at_s" in self.timeline
            if recovered and "reweighted_at_s" not in self.timeline and self.now() >= 5 * duration / 6:
                self.reweight()
            if self.now() >= next_tick:
                next_tick = self.now() + 1.0
                self.render(self.cluster.stats())

        limit = duration + EMITTER_GRACE_S + 20.0
        while emitter.wait(max(0.0, min([next_tick, *(t for t, _ in actions[:1])]) - self.now())) is None:
            if self.now() > limit:
                break
            tick()
        return wait_emitters([emitter], timeout=0.0)[0]

    def kill(self) -> None:
        child = self.cluster.analyzers[self.victim]
        survivors = [n for n in self.cluster.names if n != self.victim]
        self.begin_phase(f"{self.victim} down", self.cluster.stats(), self.cluster.configured_shares(survivors))
        self.timeline["killed_at_s"] = self.now()
        child.kill()
        self.event(f"killed {self.victim} (pid {child.pid}) with SIGKILL")
        stats = self.cluster.wait_stats(
            lambda s: self.state_of(s) not in ("up", "slow_start"), FAILOVER_TIMEOUT_S, f"{self.victim} marked down"
        )
        after = self.timeline["marked_down_after_s"] = self.now() - self.timeline["killed_at_s"]
        self.event(
            f"distributor marked {self.victim} {self.state_of(stats)} after {after:.2f} s;"
            " its share goes to the others by weight"
        )
        self.render(stats)

    def restart(self) -> None:
        self.begin_phase(f"{self.victim} rejoining (slow start)", self.cluster.stats(), None)
        self.timeline["restarted_at_s"] = self.now()
        port = self.cluster.ports[self.victim]
        child = self.cluster.start_analyzer(self.victim, port=port)
        self.event(f"restarted {self.victim} on port {port} (pid {child.pid})")
        stats = self.cluster.wait_stats(
            lambda s: self.state_of(s) in ("up", "slow_start"), FAILOVER_TIMEOUT_S, f"{self.victim} reconnected"
        )
        self.timeline["rejoined_after_s"] = self.now() - self.timeline["restarted_at_s"]
        self.event(
            f"{self.victim} reconnected after {self.timeline['rejoined_after_s']:.2f} s ({self.state_of(stats)})"
        )
        self.render(stats)

    def reweight(self) -> None:
        """Change the lightest analyzer's weight live through the admin API (as the dashboard does)."""
        name = min(self.cluster.names, key=lambda n: self.cluster.weights[n])
        old = self.cluster.weights[name]
        new = round(old * 3, 6)
        request = urllib.request.Request(
            f"http://{self.cluster.distributor.ready['admin']}/v1/analyzers/{name}/weight",
            data=json.dumps({"weight": new}).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=5):
            pass
        self.cluster.weights[name] = new
        self.timeline["reweighted_at_s"] = self.now()
        self.begin_phase(
            f"{name} weight {old:g} -> {new:g} (live)", self.cluster.stats(), self.cluster.configured_shares()
        )
        self.event(
            f"changed {name}'s weight {old:g} -> {new:g} through the admin API (PUT /v1/analyzers/{name}/weight)"
        )

    def check_recovered(self, stats: dict[str, Any]) -> None:
        rejoining = "restarted_at_s" in self.timeline and "full_weight_at_s" not in self.timeline
        if rejoining and self.state_of(stats) == "up":
            self.timeline["full_weight_at_s"] = self.now()
            self.begin_phase("all up again", stats, self.cluster.configured_shares())
            self.event(f"{self.victim} back at its full weight")

    # -- the live table ----------------------------------------------------------------------------
    def render(self, stats: dict[str, Any]) -> None:
        self.check_recovered(stats)
        now = time.monotonic()
        delivered = self.delivered(stats)
        accepted = int(stats["ingest"]["messages"])
        prev_t, prev_delivered, prev_accepted = self._last or (self.t0, dict.fromkeys(delivered, 0), 0)
        self._last = (now, delivered, accepted)
        dt = max(now - prev_t, 1e-9)
        window = {n: delivered[n] - prev_delivered.get(n, 0) for n in delivered}
        window_total = sum(window.values()) or 1
        effective_total = sum(float(a["effective_weight"]) for a in stats["analyzers"]) or 1.0
        configured = self.cluster.configured_shares()
        lines = [
            f"logdist demo  {self.now():5.1f} / {self.args.duration:g} s   phase: {self.phases[-1].name}",
            f"ingest {(accepted - prev_accepted) / dt:>9,.0f} msg/s   accepted {accepted:,}   "
            f"held {Cluster.outstanding(stats):,}   rerouted {int(stats.get('rerouted', 0)):,}",
            "analyzer  state        weight  configured  target now  share (1 s)      msg/s     delivered",
        ]
        for a in stats["analyzers"]:
            name = a["name"]
            target = float(a["effective_weight"]) / effective_total
            lines.append(
                f"{name:<8}  {a['state']:<11}  {a['weight']:>6g}  {configured[name] * 100:>8.1f} %  "
                f"{target * 100:>8.1f} %  {window[name] / window_total * 100:>9.1f} %  "
                f"{window[name] / dt:>9,.0f}  {delivered[name]:>12,}"
            )
        lines += ["events:", *(f"  {e}" for e in self.events[-6:])] if self.events else []
        self.table.draw(lines)


def summarize(demo: Demo, emitted: dict[str, Any], merged: dict[str, Any], summaries: list[dict]) -> dict[str, Any]:
    """The demo's result: end-to-end accounting, failover timings, shares per phase."""
    victim = demo.victim
    first_life = next((s for s in summaries if s.get("name") == victim), {})  # incarnation 1 comes first
    # What the SIGKILLed analyzer acked after its last stats write: its stats file missed it, its journal did not.
    journal_only = int(first_life.get("received", 0)) - int(first_life.get("stats_file_received", 0))
    cluster = demo.cluster
    return {
        "event": "summary",
        "duration_s": demo.args.duration,
        "rate": demo.args.rate,
        "sent": int(merged["sent"]),
        "acked_by_distributor": int(emitted.get("acked", 0)),
        "delivered": int(merged["delivered_unique"]),
        "lost": int(merged["lost"]),
        "killed_analyzer_journal_only": journal_only,
        "duplicates": int(merged["duplicates"]),
        "latency_ms": merged["latency_ms"],
        "victim": victim,
        "failover": {k: round(v, 3) for k, v in demo.timeline.items()},
        "phases": [p.report() for p in demo.phases],
        "whole_run": share_report(cluster.configured_shares(), unique_by_analyzer(summaries), cluster.weights),
    }


def _pct(value: float | None) -> str:
    return "   ramp" if value is None else f"{value * 100:6.1f}%"


def format_summary(result: dict[str, Any]) -> str:
    """The summary as text."""
    f = result["failover"]
    lat = result["latency_ms"]
    lines = [
        "",
        "summary",
        f"  sent {result['sent']:,}  delivered {result['delivered']:,} (unique)  lost {result['lost']:,}  "
        f"duplicates {result['duplicates']:,}",
    ]
    if result["killed_analyzer_journal_only"]:
        lines.append(
            f"  ({result['killed_analyzer_journal_only']:,} of these were acked by {result['victim']} after its last "
            "stats write;\n   its journal, written before each ack, kept their ids through the SIGKILL)"
        )
    if lat.get("p50") is not None:
        lines.append(f"  latency ms  p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  p99.9 {lat['p999']:.2f}")
    if "marked_down_after_s" in f:
        text = f"  failover: {result['victim']} marked down {f['marked_down_after_s']:.2f} s after SIGKILL"
        if "rejoined_after_s" in f:
            text += f"; reconnected {f['rejoined_after_s']:.2f} s after its restart"
        if "full_weight_at_s" in f:
            text += f"; full weight again at {f['full_weight_at_s']:.1f} s"
        lines.append(text)
    names = list(result["whole_run"])
    lines.append("  shares by phase, expected -> actual (from the distributor's delivered counters):")
    lines.append(f"    {'phase':<38}" + "".join(f"{n:>20}" for n in names))
    for phase in result["phases"]:
        label = f"{phase['name']} ({phase['start_s']:.0f}-{phase['end_s']:.0f} s)"
        cells = "".join(
            f"{_pct(s['expected']):>10} ->{s['actual'] * 100:6.1f}%" for s in (phase["shares"][n] for n in names)
        )
        lines.append(f"    {label:<38}{cells}")
    whole = result["whole_run"]
    cells = "".join(f"{_pct(whole[n]['configured']):>10} ->{whole[n]['actual'] * 100:6.1f}%" for n in names)
    lines.append(f"    {'whole run (final weights)':<38}{cells}")
    lines.append("  result: " + ("OK, nothing lost" if result["lost"] == 0 else f"FAILED, {result['lost']:,} lost"))
    return "\n".join(lines)


def run_demo(args: argparse.Namespace, workdir: Path, out: TextIO) -> dict[str, Any]:
    """Start everything, run the timeline, drain, stop, and return the summary."""
    slow_start = min(5.0, max(1.0, args.duration / 10))
    with Children() as children:
        cluster = Cluster(
            workdir, args.analyzers, children, serve_args=["--slow-start", f"{slow_start:g}"], journal=True
        )
        cluster.start()
        admin = cluster.distributor.ready["admin"]
        print(f"dashboard: http://{admin}/dashboard   (metrics: http://{admin}/metrics)", file=out, flush=True)
        demo = Demo(args, cluster, LiveTable(out))
        if demo.victim not in cluster.names:
            raise ProcError(f"--victim {demo.victim!r} is not one of {', '.join(cluster.names)}")
        (emitter,) = cluster.start_emitters(1, args.rate, args.duration, args.connections, args.size, args.batch)
        demo.t0 = time.monotonic()
        emitted = demo.run(emitter)
        stats = cluster.wait_drained()
        demo.render(stats)
        if demo.phases:
            demo.phases[-1].end_s = demo.now()
            demo.phases[-1].end_delivered = demo.delivered(stats)
        cluster.stop()
        summaries = cluster.summaries()
    merged = merge(summaries, sent_streams([emitted]))
    return summarize(demo, emitted, merged, summaries)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``logdist demo``."""
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--rate", type=float, default=50_000, help="msgs/s the emitter sends (default 50000)")
    parser.add_argument(
        "--analyzers", type=parse_weights, default=parse_weights(DEFAULT_WEIGHTS), help=f"weights ({DEFAULT_WEIGHTS})"
    )
    parser.add_argument("--victim", default=None, help="analyzer to kill and restart (default a2)")
    parser.add_argument("--connections", type=int, default=4, help="emitter connections (default 4)")
    parser.add_argument("--batch", type=int, default=500, help="messages per emitter batch (default 500)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes per message (default 200)")
    parser.add_argument("--json", action="store_true", help="end with the summary as one JSON line")


def main(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when nothing was lost, 1 when something was, 2 when the demo itself failed."""
    if args.duration < 3 or args.rate <= 0 or args.connections < 1 or args.batch < 1:
        print("logdist demo: --duration must be >= 3; --rate, --connections and --batch > 0", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="logdist-demo-"))
    interrupt_on_sigterm()
    try:
        result = run_demo(args, workdir, sys.stdout)
    except ProcError as exc:
        print(f"logdist demo: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"logdist demo: interrupted (logs kept in {workdir})", file=sys.stderr)
        return 130
    print(format_summary(result))
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()
    if result["lost"]:
        print(f"(logs kept in {workdir})", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["lost"] == 0 else 1
