"""Benchmark logdist end to end: analyzers, a distributor and emitters run as separate processes.

The analyzers start first (free ports, a stats file each), then the distributor pointing at them, then the
emitters. After --duration the emitters stop; the bench waits until the distributor holds nothing (queued, in
flight or parked), stops it, stops the analyzers and merges their records with what the emitters sent.
Reported: delivered unique msgs/s, end-to-end latency percentiles (emitter send -> analyzer receive), per-analyzer
configured vs actual share, sent/delivered/lost/duplicates, and the distributor's peak RSS (VmHWM) and CPU
(user + system, from just before the emitters start until it has drained) per million messages delivered.
The exit code is 1 when any message was lost, 2 when the run itself failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import merge, merge_runs, runs_length
from logdist.bench.procs import Child, Children, ProcError, Sample, http_json

DEFAULT_WEIGHTS = "0.4,0.3,0.2,0.1"
STARTUP_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 30.0
EMITTER_GRACE_S = 15.0  # beyond --duration: the emitter's own 10 s ack flush, plus start-up


def parse_weights(text: str) -> list[float]:
    """``"0.4,0.3,0.2,0.1"`` -> ``[0.4, 0.3, 0.2, 0.1]``; each weight must be positive."""
    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not weights or any(not w > 0 for w in weights):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one weight, every weight > 0")
    return weights


def parse_rate(text: str) -> float | None:
    """A positive msgs/s figure, or ``max`` (None)."""
    if text.lower() == "max":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError("rate must be > 0 or 'max'")
    return rate


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class Cluster:
    """Analyzers ``a1..aN`` and one distributor as child processes; stats files and logs live in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        weights: Sequence[float],
        children: Children,
        serve_args: Sequence[str] = (),
        journal: bool = False,
    ) -> None:
        self.workdir = workdir
        self.children = children
        self.weights = {f"a{i + 1}": w for i, w in enumerate(weights)}
        self.serve_args = list(serve_args)
        self.journal = journal  # analyzers journal ids before acking: their records survive kill -9
        self.analyzers: dict[str, Child] = {}  # the current incarnation of each analyzer
        self.ports: dict[str, int] = {}
        self.incarnations: list[tuple[str, Path]] = []  # (analyzer name, file prefix) of every analyzer started
        self.distributor: Child | None = None

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def configured_shares(self, names: Sequence[str] | None = None) -> dict[str, float]:
        """Each analyzer's weight over the total weight of ``names`` (all analyzers by default)."""
        names = self.names if names is None else names
        total = sum(self.weights[n] for n in names)
        return {n: self.weights[n] / total for n in names}

    def start(self) -> None:
        """Start every analyzer, then the distributor; wait until the distributor reports them all up."""
        for name in self.names:
            self.start_analyzer(name)
        argv = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *self.serve_args]
        for name, weight in self.weights.items():
            argv += ["--analyzer", f"{name}=127.0.0.1:{self.ports[name]}@{weight:g}"]
        self.distributor = self.children.add(Child.start("distributor", argv, self.workdir, STARTUP_TIMEOUT_S))
        self.wait_stats(lambda s: all(a["state"] == "up" for a in s["analyzers"]), STARTUP_TIMEOUT_S, "analyzers up")

    def start_analyzer(self, name: str, port: int = 0) -> Child:
        """Start (or restart, on its old port) analyzer ``name``; each incarnation writes its own stats file."""
        label = f"{name}.{sum(1 for n, _ in self.incarnations if n == name) + 1}"
        prefix = self.workdir / label
        argv = ["analyzer", "--listen", f"127.0.0.1:{port}", "--name", name, "--stats-file", f"{prefix}.json"]
        if self.journal:
            argv += ["--journal", f"{prefix}.journal"]
        child = self.children.add(Child.start(label, argv, self.workdir, STARTUP_TIMEOUT_S))
        self.incarnations.append((name, prefix))
        self.analyzers[name] = child
        self.ports[name] = int(str(child.ready["listen"]).rpartition(":")[2])
        return child

    @property
    def listen(self) -> str:
        assert self.distributor is not None
        return str(self.distributor.ready["listen"])

    def stats(self) -> dict[str, Any]:
        """The distributor's ``GET /stats``."""
        assert self.distributor is not None
        return http_json(f"http://{self.distributor.ready['admin']}/stats")

    def wait_stats(self, predicate: Any, timeout: float, what: str, interval: float = 0.05) -> dict[str, Any]:
        """Poll /stats until ``predicate(stats)`` holds; ProcError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise ProcError(f"distributor: not {what} within {timeout:g} s; last /stats: {json.dumps(stats)}")
            assert self.distributor is not None
            if self.distributor.wait(interval) is not None:
                raise ProcError(f"distributor exited with {self.distributor.returncode} while waiting for {what}")

    def start_emitters(
        self, count: int, rate: float | None, duration: float, connections: int, size: int, batch: int
    ) -> list[Child]:
        """Start ``count`` emitter processes sharing ``rate`` msgs/s (each at full speed when None)."""
        emitters = []
        for i in range(count):
            argv = ["emit", "--target", self.listen, "--duration", f"{duration:g}", "--connections", str(connections)]
            argv += ["--size", str(size), "--batch", str(batch), "--json", "--quiet"]
            argv += ["--rate", "max" if rate is None else f"{rate / count:g}"]
            emitters.append(self.children.add(Child(f"emitter{i + 1}", argv, self.workdir)))
        return emitters

    @staticmethod
    def outstanding(stats: dict[str, Any]) -> int:
        """Messages the distributor holds: queued, in flight or parked."""
        return int(stats.get("parked", 0)) + sum(int(a["queued"]) + int(a["in_flight"]) for a in stats["analyzers"])

    def wait_drained(self, timeout: float = DRAIN_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the distributor holds nothing; returns the last /stats."""
        return self.wait_stats(lambda s: self.outstanding(s) == 0, timeout, "drained")

    def stop(self) -> None:
        """Stop the distributor (it drains), then every analyzer (they write their final stats)."""
        if self.distributor is not None and self.distributor.stop() != 0:
            raise ProcError(f"distributor exited with {self.distributor.returncode}{self.distributor.stderr_note()}")
        for child in self.analyzers.values():
            child.stop()

    def summaries(self) -> list[dict[str, Any]]:
        """Every analyzer incarnation's last stats file, with its ids taken from its journal when there is one."""
        out = []
        for _, prefix in self.incarnations:
            path = Path(f"{prefix}.json")
            try:
                summary = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ProcError(f"cannot read analyzer stats {path}: {exc}") from None
            journal = Path(f"{prefix}.journal")
            out.append(with_journal(summary, journal) if journal.exists() else summary)
        return out


def with_journal(summary: dict[str, Any], journal: Path) -> dict[str, Any]:
    """``summary`` with its id runs and counts replaced by the journal's, which also cover what an analyzer acked
    after its last stats write and before a kill -9 (latencies still come from the stats file).
    """
    streams = read_journal(journal)
    received = sum(runs_length(runs) for runs in streams.values())  # runs as received: duplicates kept
    merged = {stream: merge_runs(runs) for stream, runs in streams.items()}
    unique = sum(runs_length(runs) for runs in merged.values())
    return {
        **summary,
        "streams": {stream: runs.tolist() for stream, runs in merged.items()},
        "received": received,
        "unique": unique,
        "duplicates": received - unique,
        "untracked": 0,  # the journal tracks every seq
        "stats_file_received": summary.get("received", 0),
    }


def wait_emitters(emitters: Sequence[Child], timeout: float, tick: Any = None, interval: float = 1.0) -> list[dict]:
    """Wait (bounded) for every emitter to exit, calling ``tick()`` about every ``interval`` s; their summaries.

    Emitters still running at the deadline get SIGTERM (they stop early and still print a summary).
    """
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + interval
    for emitter in emitters:
        while emitter.wait(max(0.0, min(next_tick, deadline) - time.monotonic())) is None:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_tick:
                next_tick = now + interval
                if tick is not None:
                    tick()
    summaries = []
    for emitter in emitters:
        emitter.stop()
        summary = emitter.last_event("summary")
        if summary is None:
            raise ProcError(
                f"{emitter.name}: exited with {emitter.returncode} without a summary{emitter.stderr_note()}"
            )
        summaries.append(summary)
    return summaries


def sent_streams(emitter_summaries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """``{stream id: messages sent}`` over all emitters."""
    sent: dict[str, int] = {}
    for summary in emitter_summaries:
        for stream, count in summary.get("streams", {}).items():
            sent[str(stream)] = sent.get(str(stream), 0) + int(count)
    return sent


def unique_by_analyzer(summaries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Unique messages per analyzer name (incarnations of one analyzer added up)."""
    out: dict[str, int] = {}
    for summary in summaries:
        out[str(summary["name"])] = out.get(str(summary["name"]), 0) + int(summary.get("unique", 0))
    return out


def share_report(configured: dict[str, float], counts: dict[str, int], weights: dict[str, float]) -> dict[str, Any]:
    """Per analyzer: weight, configured and actual share, deviation in percentage points."""
    total = sum(counts.get(n, 0) for n in configured) or 1
    report = {}
    for name, share in configured.items():
        actual = counts.get(name, 0) / total
        report[name] = {
            "weight": weights[name],
            "configured": round(share, 6),
            "actual": round(actual, 6),
            "deviation_pp": round((actual - share) * 100, 4) + 0.0,  # no "-0.0"
            "messages": counts.get(name, 0),
        }
    return report


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
    }


def command_line(args: argparse.Namespace) -> str:
    """The canonical ``logdist bench`` command that reproduces this run."""
    argv = ["logdist", "bench", "--duration", f"{args.duration:g}"]
    argv += ["--analyzers", ",".join(f"{w:g}" for w in args.analyzers)]
    argv += ["--rate", "max" if args.rate is None else f"{args.rate:g}"]
    argv += ["--size", str(args.size), "--batch", str(args.batch), "--connections", str(args.connections)]
    if args.emitters != 1:
        argv += ["--emitters", str(args.emitters)]
    if args.ack != "accepted":
        argv += ["--ack", args.ack]
    return shlex.join(argv)


class Progress:
    """One stderr line per call: rates and backlog from the distributor's /stats, its RSS."""

    def __init__(self, cluster: Cluster, started: float, duration: float, enabled: bool) -> None:
        self.cluster = cluster
        self.started = started
        self.duration = duration
        self.enabled = enabled
        self._last: tuple[float, int] = (started, 0)

    def __call__(self) -> None:
        assert self.cluster.distributor is not None
        sample = self.cluster.distributor.sample()  # keeps the peak RSS up to date
        if not self.enabled:
            return
        try:
            stats = self.cluster.stats()
        except OSError:
            return
        now = time.monotonic()
        accepted = int(stats["ingest"]["messages"])
        rate = (accepted - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, accepted)
        states = " ".join(f"{a['name']}:{a['state']}" for a in stats["analyzers"])
        rss = f"{sample.rss_mb:.0f} MiB" if sample else "?"
        print(
            f"bench: {now - self.started:5.1f}/{self.duration:g} s  accepted {accepted:,} ({rate:,.0f} msg/s)  "
            f"held {Cluster.outstanding(stats):,}  rss {rss}  {states}",
            file=sys.stderr,
            flush=True,
        )


def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run one benchmark and return its report."""
    weights: list[float] = args.analyzers
    with Children() as children:
        serve_args = ["--ack", args.ack]
        if args.ack == "durable":
            serve_args += ["--spool-dir", str(workdir / "spool")]
        cluster = Cluster(workdir, weights, children, serve_args=serve_args)
        cluster.start()
        distributor = cluster.distributor
        assert distributor is not None
        before = distributor.sample() or Sample(0.0, 0.0, 0.0)
        started = time.monotonic()
        emitters = cluster.start_emitters(
            args.emitters, args.rate, args.duration, args.connections, args.size, args.batch
        )
        progress = Progress(cluster, started, args.duration, enabled=not args.quiet and args.duration >= 10)
        emitted = wait_emitters(emitters, args.duration + STARTUP_TIMEOUT_S + EMITTER_GRACE_S, tick=progress)
        drain_started = time.monotonic()
        final_stats = cluster.wait_drained()
        drain_s = time.monotonic() - drain_started
        after = distributor.sample() or distributor.peak
        cluster.stop()
        summaries = cluster.summaries()
    sent = sent_streams(emitted)
    merged = merge(summaries, sent)
    return build_report(args, cluster, emitted, merged, summaries, final_stats, before, after, distributor, drain_s)


def build_report(
    args: argparse.Namespace,
    cluster: Cluster,
    emitted: list[dict[str, Any]],
    merged: dict[str, Any],
    summaries: list[dict[str, Any]],
    final_stats: dict[str, Any],
    before: Sample,
    after: Sample,
    distributor: Child,
    drain_s: float,
) -> dict[str, Any]:
    """The bench report (the JSON contract)."""
    delivered = int(merged["delivered_unique"])
    emit_duration = max(float(e.get("duration_s", 0.0)) for e in emitted) or 1e-9
    shares = share_report(cluster.configured_shares(), unique_by_analyzer(summaries), cluster.weights)
    work_cpu = max(after.cpu_s - before.cpu_s, 0.0)
    return {
        "command": command_line(args),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "python": platform.python_version(),
        "config": {
            "duration_s": args.duration,
            "analyzers": cluster.weights,
            "rate": args.rate if args.rate is not None else "max",
            "size": args.size,
            "batch": args.batch,
            "connections": args.connections,
            "emitters": args.emitters,
        },
        "msgs_per_s": round(delivered / emit_duration, 1),
        "emit_duration_s": emit_duration,
        "latency_ms": merged["latency_ms"],
        "max_share_deviation_pp": max(abs(s["deviation_pp"]) for s in shares.values()),
        "shares": shares,
        "sent": int(merged["sent"]),
        "acked_by_distributor": sum(int(e.get("acked", 0)) for e in emitted),
        "delivered": delivered,
        "lost": int(merged["lost"]),
        "duplicates": int(merged["duplicates"]),
        "unexpected": int(merged["unexpected"]),
        "checksum_failures": int(merged["checksum_failures"]),
        "emitter_retried_batches": sum(int(e.get("retried", 0)) for e in emitted),
        "distributor_drops": final_stats.get("drops", {}),
        "drain_s": round(drain_s, 3),
        "distributor_rss_mb": round(max(after.hwm_mb, distributor.peak.hwm_mb), 1),
        "distributor_cpu_s": round(work_cpu, 3),
        "distributor_cpu_s_per_million": round(work_cpu / (delivered / 1e6), 3) if delivered else None,
    }


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a readable table."""
    cfg = report["config"]
    lat = report["latency_ms"]
    rate = cfg["rate"] if cfg["rate"] == "max" else f"{cfg['rate']:,.0f} msg/s"
    lines = [
        f"logdist bench: {cfg['duration_s']:g} s at rate {rate}, {len(cfg['analyzers'])} analyzers, "
        f"{cfg['emitters']} emitter(s) x {cfg['connections']} connections, batch {cfg['batch']}, {cfg['size']} B",
        f"  throughput     {report['msgs_per_s']:,.0f} msg/s delivered (unique) over {report['emit_duration_s']:g} s",
        f"  latency (ms)   p50 {_fmt_ms(lat['p50'])}  p95 {_fmt_ms(lat['p95'])}  p99 {_fmt_ms(lat['p99'])}  "
        f"p99.9 {_fmt_ms(lat['p999'])}",
        f"  messages       sent {report['sent']:,}  delivered {report['delivered']:,}  lost {report['lost']:,}  "
        f"duplicates {report['duplicates']:,}",
        f"  distributor    peak RSS {report['distributor_rss_mb']:.1f} MiB, "
        f"CPU {report['distributor_cpu_s_per_million']} s per million delivered, drained in {report['drain_s']:g} s",
        f"  shares         max deviation {report['max_share_deviation_pp']:.3f} pp",
        "    analyzer  weight  configured    actual  deviation    messages",
    ]
    for name, s in report["shares"].items():
        lines.append(
            f"    {name:<8}  {s['weight']:>6g}  {s['configured'] * 100:>9.2f} %  {s['actual'] * 100:>6.2f} %  "
            f"{s['deviation_pp']:>+7.3f} pp  {s['messages']:>10,}"
        )
    machine = report["machine"]
    lines.append(f"  machine        {machine['cpu_model']}, {machine['cores']} cores, Python {report['python']}")
    lines.append(f"  command        {report['command']}   ({report['timestamp']})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``logdist bench``."""
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    parser.add_argument(
        "--analyzers", type=parse_weights, default=parse_weights(DEFAULT_WEIGHTS), help=f"weights ({DEFAULT_WEIGHTS})"
    )
    parser.add_argument("--rate", type=parse_rate, default=None, help="total msgs/s, or max (default max)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes per message (default 200)")
    parser.add_argument("--batch", type=_positive_int, default=1000, help="messages per emitter batch (1000)")
    parser.add_argument(
        "--ack",
        choices=("accepted", "durable", "delivered"),
        default="accepted",
        help="the distributor's ack mode (durable: a spool in the work directory, batch fsync)",
    )
    parser.add_argument("--connections", type=_positive_int, default=4, help="connections per emitter (default 4)")
    parser.add_argument("--emitters", type=_positive_int, default=1, help="emitter processes (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, stats files)")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 1 when a message was lost, 2 when the run itself failed."""
    if args.duration <= 0 or args.size < 0:
        print("logdist bench: --duration must be > 0 and --size >= 0", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="logdist-bench-"))
    interrupt_on_sigterm()
    try:
        report = run_bench(args, workdir)
    except ProcError as exc:
        print(f"logdist bench: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"logdist bench: interrupted (logs kept in {workdir})", file=sys.stderr)
        return 130
    if args.keep or report["lost"] > 0:
        print(f"logdist bench: logs and stats files kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report) if args.json else format_table(report), flush=True)
    if args.out:
        try:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            print(f"logdist bench: cannot write {args.out}: {exc}", file=sys.stderr)
            return 2
    return 1 if report["lost"] > 0 else 0


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so that the children are stopped on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
