"""Benchmark of the HTTP ingest: packets of N messages POSTed by concurrent clients, end to end into an analyzer.

    .venv/bin/python benchmarks/http_ingest.py --duration 10 --clients 2 --concurrency 16 --server both

Processes (all on loopback): one reference analyzer, ``logdist serve --ingest http=127.0.0.1:0`` and ``--clients``
client processes, each keeping ``--concurrency`` requests in flight over keep-alive connections (one agent_id per
connection). After a warm-up, messages delivered to the analyzer (the distributor's /stats) are counted over
``--duration`` seconds, with the CPU seconds each process used in that window.

``--server application`` runs the same request handler under ``aiohttp.web.Application`` instead of the low-level
server the listener uses (to compare the two); ``both`` measures one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from logdist.bench.procs import Child, Children, http_json  # noqa: E402
from logdist.bench.runner import machine_info  # noqa: E402

WARMUP_S = 2.0
STARTUP_TIMEOUT_S = 20.0


# -- payload ----------------------------------------------------------------------------------------


def packet_body(agent: str, packet: int, batch: int) -> bytes:
    """A realistic packet: RFC 3339 timestamps, mixed levels, a source, ~90-byte messages, two attributes."""
    levels = ("info", "info", "info", "warn", "error", "debug")
    messages = [
        {
            "timestamp": f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{i * 7919 % 1_000_000:06d}Z",
            "level": levels[i % len(levels)],
            "source": f"checkout-{i % 5}",
            "message": f"GET /api/v1/orders/{packet * batch + i} 200 in {i % 97} ms user=u{i % 1000} cart=c{i % 31}",
            "attributes": {"region": "eu-west-1", "pod": f"checkout-{i % 5}-7d9f"},
        }
        for i in range(batch)
    ]
    return json.dumps({"packet_id": f"{agent}-{packet}", "agent_id": agent, "messages": messages}).encode()


# -- client process ---------------------------------------------------------------------------------


async def run_client(url: str, duration: float, concurrency: int, batch: int, name: str) -> dict[str, Any]:
    """``concurrency`` workers POSTing pre-encoded packets for ``duration`` s; counts by status."""
    import aiohttp

    bodies = [packet_body(f"{name}-{w}", p, batch) for w in range(concurrency) for p in range(4)]
    statuses: dict[int, int] = {}
    accepted = 0
    deadline = time.monotonic() + duration
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal accepted
        mine = bodies[index * 4 : index * 4 + 4]
        n = 0
        while time.monotonic() < deadline:
            async with session.post(url, data=mine[n % 4], headers=headers) as response:
                body = await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 202:
                    accepted += json.loads(body)["accepted"]
                elif response.status == 429:
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 10)
            n += 1

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        print(json.dumps({"event": "ready"}), flush=True)
        started = time.monotonic()
        await asyncio.gather(*(worker(session, i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"event": "summary", "accepted": accepted, "statuses": statuses, "elapsed_s": elapsed}


# -- the same handler under web.Application (for the comparison) -------------------------------------


def serve_application(argv: list[str]) -> int:
    """``logdist serve ARGV`` with the ``http`` listener built on ``aiohttp.web.Application``."""
    from aiohttp import web

    from logdist import cli
    from logdist.ingest import listeners
    from logdist.ingest.http import HttpIngest
    from logdist.runtime import parse_hostport

    class AppHttpIngest(HttpIngest):
        async def start(self, address: str) -> HttpIngest:
            app = web.Application(client_max_size=self.max_body)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
            await self._runner.setup()
            host, port = parse_hostport(address)
            site = web.TCPSite(self._runner, host, port, backlog=1024)
            await site.start()
            sock = site._server.sockets[0]  # type: ignore[union-attr]
            self.address = "{}:{}".format(*sock.getsockname()[:2])
            self.sink.register(self.gate)
            return self

        async def close(self) -> None:
            self.gate.closing = True
            await self._runner.cleanup()
            self.sink.unregister(self.gate)

    async def start_app(address: str, sink: Any, server_id: str, max_frame: int) -> Any:
        return await AppHttpIngest(sink, max_body=max_frame).start(address)

    listeners.STARTERS["http"] = start_app
    return cli.main(["serve", *argv])


# -- orchestration ----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, server: str, workdir: Path) -> dict[str, Any]:
    """One run against ``server`` ("lowlevel" or "application")."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    with Children() as children:
        analyzer = children.add(
            Child.start("analyzer", ["analyzer", "--listen", "127.0.0.1:0", "--name", "a1"], workdir, env=env)
        )
        port = str(analyzer.ready["listen"]).rpartition(":")[2]
        serve = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--analyzer", f"a1=127.0.0.1:{port}@1"]
        serve += ["--ingest", "http=127.0.0.1:0"]
        if server == "lowlevel":
            distributor = Child.start("distributor", ["serve", *serve], workdir, STARTUP_TIMEOUT_S, env=env)
        else:
            argv = ["serve-application", *serve]
            distributor = Child.start(
                "distributor-app", argv, workdir, STARTUP_TIMEOUT_S, env=env, module="benchmarks.http_ingest"
            )
        children.add(distributor)
        admin = distributor.ready["admin"]
        url = f"http://{distributor.ready['listeners']['http']}/v1/packets"
        load_s = WARMUP_S + args.duration + 1.0
        clients = [
            children.add(
                Child.start(
                    f"client{i}",
                    ["client", "--url", url, "--duration", f"{load_s:g}", "--concurrency", str(args.concurrency),
                     "--batch", str(args.batch), "--name", f"c{i}"],
                    workdir,
                    env=env,
                    module="benchmarks.http_ingest",
                )
            )
            for i in range(args.clients)
        ]  # fmt: skip

        def delivered() -> int:
            return sum(a["delivered"] for a in http_json(f"http://{admin}/stats")["analyzers"])

        procs = {"distributor": distributor, "analyzer": analyzer, **{c.name: c for c in clients}}
        deadline = time.monotonic() + WARMUP_S
        while time.monotonic() < deadline:  # warm-up: traffic must be flowing
            time.sleep(0.1)
        cpu0 = {name: (child.sample() or child.peak).cpu_s for name, child in procs.items()}
        t0, d0 = time.monotonic(), delivered()
        time.sleep(args.duration)  # the measurement window (not synchronisation)
        t1, d1 = time.monotonic(), delivered()
        cpu1 = {name: (child.sample() or child.peak).cpu_s for name, child in procs.items()}
        summaries = []
        for client in clients:
            client.wait(load_s + 30)
            summaries.append(client.last_event("summary") or {})
        stats = http_json(f"http://{admin}/stats")
    window = t1 - t0
    statuses: dict[str, int] = {}
    for summary in summaries:
        for status, count in summary.get("statuses", {}).items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "server": server,
        "msgs_per_s": round((d1 - d0) / window),
        "requests_per_s": round((d1 - d0) / window / args.batch),
        "cpu_cores": {name: round((cpu1[name] - cpu0[name]) / window, 2) for name in procs},
        "distributor_cpu_us_per_msg": round((cpu1["distributor"] - cpu0["distributor"]) / max(d1 - d0, 1) * 1e6, 2),
        "client_statuses": statuses,
        "accepted_total": stats["ingest"]["messages"],
        "delivered_total": sum(a["delivered"] for a in stats["analyzers"]),
    }


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["serve-application"]:
        return serve_application(words[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    client = sub.add_parser("client", help="(internal) one load client process")
    client.add_argument("--url", required=True)
    client.add_argument("--duration", type=float, required=True)
    client.add_argument("--concurrency", type=int, default=16)
    client.add_argument("--batch", type=int, default=100)
    client.add_argument("--name", default="c0")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (after a 2 s warm-up)")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per client process")
    parser.add_argument("--batch", type=int, default=100, help="messages per packet")
    parser.add_argument("--server", choices=("lowlevel", "application", "both"), default="lowlevel")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server (interleaved when both)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(words)
    if args.mode == "client":
        import uvloop

        summary = uvloop.run(run_client(args.url, args.duration, args.concurrency, args.batch, args.name))
        print(json.dumps(summary), flush=True)
        return 0
    os.chdir(ROOT)
    servers = ["lowlevel", "application"] if args.server == "both" else [args.server]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="logdist-http-bench-") as tmp:
        runs = [measure(args, server, Path(tmp)) for _ in range(args.repeat) for server in servers]
    summary = {}
    for server in servers:
        rates = sorted(run["msgs_per_s"] for run in runs if run["server"] == server)
        costs = sorted(run["distributor_cpu_us_per_msg"] for run in runs if run["server"] == server)
        summary[server] = {
            "best_msgs_per_s": rates[-1],
            "median_msgs_per_s": rates[len(rates) // 2],
            "median_distributor_cpu_us_per_msg": costs[len(costs) // 2],
        }
    command = [".venv/bin/python", "benchmarks/http_ingest.py", "--duration", f"{args.duration:g}", "--clients",
               str(args.clients), "--concurrency", str(args.concurrency), "--batch", str(args.batch),
               "--server", args.server, "--repeat", str(args.repeat)]  # fmt: skip
    report = {
        "command": shlex.join(command),
        "machine": machine_info(),
        "packet": {"messages": args.batch, "body_bytes": len(packet_body("c0-0", 0, args.batch))},
        "load_average_1m_before": round(load_before, 2),
        "summary": summary,
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
