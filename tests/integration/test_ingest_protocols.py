"""HTTP, lines and syslog ingest end to end: real ``logdist serve`` processes, real clients (aiohttp, raw sockets,
util-linux ``logger``, rsyslog), and an in-test analyzer that keeps every message so payloads can be compared
byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import zstandard

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import merge_runs, runs_length
from logdist.model import Message
from logdist.wire.native import (
    Batch,
    FrameDecoder,
    Heartbeat,
    Hello,
    Welcome,
    encode_ack,
    encode_heartbeat,
    encode_welcome,
)
from tests.procs import LogdistProcess, ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(180)
LIMIT_MB = 1  # request body / frame limit of the shared distributor (limits.max_frame_mb)


# -- an analyzer that keeps what it gets -----------------------------------------------------------


class CaptureAnalyzer:
    """A native-protocol analyzer on a background thread: WELCOMEs, ACKs (unless :meth:`hold`), keeps messages."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.port = 0
        self._holding = False
        self._held: list[tuple[asyncio.Transport, bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-analyzer", daemon=True)

    def __enter__(self) -> CaptureAnalyzer:
        self._thread.start()
        assert self._ready.wait(10), "capture analyzer did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(self._loop.create_server(lambda: _CaptureProtocol(self), "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def hold(self) -> None:
        """Stop acknowledging batches (their acks are kept for :meth:`release`)."""
        self._loop.call_soon_threadsafe(setattr, self, "_holding", True)

    def release(self) -> None:
        """Send the held acks and acknowledge at once again."""

        def go() -> None:
            self._holding = False
            for transport, ack in self._held:
                if not transport.is_closing():
                    transport.write(ack)
            self._held.clear()

        self._loop.call_soon_threadsafe(go)

    def wait_for(self, predicate: Callable[[list[Message]], Any], timeout: float = 20.0, what: str = "messages") -> Any:
        """Wait until ``predicate(messages)`` is truthy; its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(self.messages)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{what} not received within {timeout} s ({len(self.messages)} so far)")
                self.cond.wait(remaining)

    def matching(self, marker: bytes, count: int, timeout: float = 20.0) -> list[Message]:
        """Wait for ``count`` messages whose payload contains ``marker``; exactly those."""
        found = self.wait_for(lambda ms: (lambda got: got if len(got) >= count else None)(
            [m for m in ms if marker in m.payload]), timeout, f"{count} messages with {marker!r}")  # fmt: skip
        assert len(found) == count, [m.payload for m in found]
        return found


class _CaptureProtocol(asyncio.Protocol):
    def __init__(self, owner: CaptureAnalyzer) -> None:
        self.owner = owner
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        out: list[bytes] = []
        for event in self.decoder.feed(data):
            if isinstance(event, Hello):
                out.append(encode_welcome(Welcome(server_id="capture")))
            elif isinstance(event, Heartbeat) and not event.pong:
                out.append(encode_heartbeat(event.token, pong=True))
            elif isinstance(event, Batch):
                with self.owner.cond:
                    self.owner.messages.extend(event.block.messages())
                    self.owner.cond.notify_all()
                if self.owner._holding:
                    self.owner._held.append((self.transport, encode_ack(event.seq)))
                else:
                    out.append(encode_ack(event.seq))
        if out:
            self.transport.write(b"".join(out))


# -- the distributor -------------------------------------------------------------------------------


class Stack:
    """One distributor with http, lines and syslog listeners in front of a capture analyzer."""

    def __init__(self, procs: ProcessGroup, capture: CaptureAnalyzer, tmp: Path, *extra: str) -> None:
        config = tmp / "logdist.toml"
        config.write_text(f"[limits]\nmax_frame_mb = {LIMIT_MB}\n")
        args = ["serve", "--config", config, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        args += ["--analyzer", f"cap=127.0.0.1:{capture.port}@1", *extra]
        for kind in ("http", "lines", "syslog"):
            args += ["--ingest", f"{kind}=127.0.0.1:0"]
        self.proc: LogdistProcess = procs.start(*args)
        self.capture = capture
        listeners = self.proc.ready["listeners"]
        self.http = f"http://{listeners['http']}"
        self.lines = hostport(listeners["lines"])
        self.syslog = hostport(listeners["syslog"])
        self.admin = self.proc.ready["admin"]
        wait_until(lambda: self.stats()["analyzers"][0]["state"] == "up", 20, "analyzer up")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.admin}/stats", timeout=5) as response:
            return json.load(response)

    def bad_frames(self) -> int:
        return int(self.stats()["ingest"]["bad_frames"])


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with CaptureAnalyzer() as capture, ProcessGroup() as procs:
        yield Stack(procs, capture, tmp_path_factory.mktemp("ingest"))


def post(url: str, body: bytes, content_type: str = "application/json", **headers: str) -> tuple[int, Any, Any]:
    """POST with urllib; ``(status, decoded JSON body, headers)``."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def packet(agent: str, packet_id: str, messages: list[dict[str, Any]]) -> bytes:
    return json.dumps({"packet_id": packet_id, "agent_id": agent, "messages": messages}).encode()


# -- HTTP ------------------------------------------------------------------------------------------


def test_http_packets_from_concurrent_clients_are_all_delivered(tmp_path: Path) -> None:
    """8 aiohttp clients, 40 packets of 100 each, while a ninth sends bad requests: the journal has every id."""
    agents, packets, per_packet = 8, 40, 100
    with ProcessGroup() as procs:
        analyzer = procs.analyzer("--journal", tmp_path / "a.journal", name="a1")
        serve = procs.start("serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--ingest",
                            "http=127.0.0.1:0", "--analyzer", f"a1=127.0.0.1:{analyzer.port}@1")  # fmt: skip
        url = f"http://{serve.ready['listeners']['http']}/v1/packets"
        bad = packet("bad", "b", [{"message": "x"}, {"message": "y", "level": "loud"}])

        async def client(session: aiohttp.ClientSession, agent: str) -> list[int]:
            statuses = []
            for p in range(packets):
                messages = [{"message": f"{agent} {p} {i}", "level": i % 8 * 32} for i in range(per_packet)]
                async with session.post(url, data=packet(agent, f"{agent}-{p}", messages),
                                        headers={"Content-Type": "application/json"}) as response:  # fmt: skip
                    assert await response.json() == {"accepted": per_packet}
                    statuses.append(response.status)
            return statuses

        async def spoiler(session: aiohttp.ClientSession) -> list[int]:
            statuses = []
            for _ in range(20):
                async with session.post(url, data=bad, headers={"Content-Type": "application/json"}) as response:
                    body = await response.json()
                    assert body["field"] == "messages[1].level", body
                    statuses.append(response.status)
            return statuses

        async def main() -> list[list[int]]:
            async with aiohttp.ClientSession() as session:
                return await asyncio.gather(*(client(session, f"agent{a}") for a in range(agents)), spoiler(session))

        *good, bad_statuses = asyncio.run(main())
        assert all(s == 202 for statuses in good for s in statuses) and set(bad_statuses) == {400}
        admin = serve.ready["admin"]

        def delivered() -> int:
            with urllib.request.urlopen(f"http://{admin}/stats", timeout=5) as response:
                stats = json.load(response)
            assert stats["ingest"]["bad_frames"] == 20
            return sum(a["delivered"] for a in stats["analyzers"])

        total = agents * packets * per_packet
        wait_until(lambda: delivered() >= total, 30, "all messages delivered")
        assert serve.terminate() == 0 and analyzer.terminate() == 0
        journal = read_journal(tmp_path / "a.journal")
        assert len(journal) == agents, "one stream per agent_id"
        for runs in journal.values():
            unique = merge_runs(runs)
            assert runs_length(runs) == runs_length(unique) == packets * per_packet, "no loss, no duplicates"
            assert np.array_equal(unique, [[0, packets * per_packet - 1]]), "seqs count up per agent"


def test_http_payloads_severities_and_attributes_arrive_exactly(stack: Stack) -> None:
    texts = ["plain ascii", "naïve ☃ 😀 ünïcödé", 'quotes " and \\ backslashes', "tabs\tand\nnewlines\r\n", " "]
    messages = [
        {"message": f"exact-{i} {t}", "level": level, "source": "svc", "timestamp": "2024-05-01T12:00:00.5+02:00",
         "attributes": {"k": f"v{i}", "ü": "☃"}}
        for i, (t, level) in enumerate(zip(texts, ["emerg", "ERROR", 7, "trace", "notice"], strict=True))
    ]  # fmt: skip
    assert post(f"{stack.http}/v1/packets", packet("ag1", "pk1", messages))[:2] == (202, {"accepted": 5})
    got = sorted(stack.capture.matching(b"exact-", 5), key=lambda m: m.payload)
    assert [m.payload for m in got] == [m["message"].encode() for m in messages]
    assert [m.severity for m in got] == [0, 96, 7, 240, 160]
    assert got[1].attributes == {"k": "v1", "ü": "☃", "source": "svc", "agent_id": "ag1", "packet_id": "pk1",
                                 "timestamp": "2024-05-01T12:00:00.500000+02:00"}  # fmt: skip
    assert len({m.stream for m in got}) == 1 and [m.seq for m in got] == sorted(m.seq for m in got)


def test_http_ndjson_gzip_and_zstd_bodies(stack: Stack) -> None:
    lines = b"\n".join(json.dumps({"message": f"ndjson-{i}", "level": "warn"}).encode() for i in range(50)) + b"\n"
    ndjson = "application/x-ndjson"
    assert post(f"{stack.http}/v1/logs", lines, ndjson)[:2] == (202, {"accepted": 50})
    gz = gzip.compress(packet("ag2", "gz", [{"message": f"gzipped-{i}"} for i in range(30)]))
    assert post(f"{stack.http}/v1/packets", gz, **{"Content-Encoding": "gzip"})[:2] == (202, {"accepted": 30})
    zs = zstandard.ZstdCompressor().compress(lines.replace(b"ndjson-", b"zstd-"))
    assert post(f"{stack.http}/v1/logs", zs, ndjson, **{"Content-Encoding": "zstd", "X-Agent-Id": "ag3"})[:2] == (
        202, {"accepted": 50})  # fmt: skip
    assert {m.severity for m in stack.capture.matching(b"ndjson-", 50)} == {128}
    assert len(stack.capture.matching(b"gzipped-", 30)) == 30
    assert {m.attributes["agent_id"] for m in stack.capture.matching(b"zstd-", 50)} == {"ag3"}


def test_http_errors_name_the_field_and_status(stack: Stack) -> None:
    before = stack.bad_frames()
    url = f"{stack.http}/v1/packets"
    msgs: list[dict[str, Any]] = [{"message": "fine"}] * 3 + [{"message": "bad", "level": "loudest"}]
    status, body, _ = post(url, packet("a", "p", msgs))
    assert status == 400 and body["field"] == "messages[3].level" and "loudest" in body["error"]
    status, body, _ = post(url, packet("a", "p", [{"message": "t", "timestamp": 1_700_000_000_000}]))
    assert status == 400 and body["field"] == "messages[0].timestamp" and "milliseconds" in body["error"]
    status, body, _ = post(url, b'{"agent_id": "a", "messages": []}')
    assert status == 400 and body["field"] == "packet_id"
    assert post(url, b"{}", "text/plain")[0] == 415
    assert post(url, b"{}", **{"Content-Encoding": "br"})[0] == 415
    assert post(f"{stack.http}/v2/other", b"{}")[0] == 404
    assert stack.bad_frames() == before + 6


def test_http_oversize_bodies_get_413(stack: Stack) -> None:
    limit = LIMIT_MB * 1024 * 1024
    big = packet("a", "big", [{"message": "x" * 1000}] * (limit // 1000 + 10))
    status, body, _ = post(f"{stack.http}/v1/packets", big)
    assert status == 413 and "exceeds the limit" in body["error"]
    bomb = gzip.compress(packet("a", "bomb", [{"message": "y" * 1000}] * (limit // 1000 + 10)))
    assert len(bomb) < limit // 10
    assert post(f"{stack.http}/v1/packets", bomb, **{"Content-Encoding": "gzip"})[0] == 413

    async def chunked() -> int:  # no Content-Length: the limit is enforced while reading
        async def body() -> Any:
            for _ in range(limit // 65536 + 2):
                yield b" " * 65536

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{stack.http}/v1/packets", data=body(), headers={"Content-Type": "application/json"}
            ) as response,
        ):
            return response.status

    assert asyncio.run(chunked()) == 413  # the server drains the rest, so the client reads its answer


def test_http_keep_alive_survives_a_bad_request(stack: Stack) -> None:
    host, port = hostport(stack.http.removeprefix("http://"))

    def request(body: bytes) -> bytes:
        return (b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body  # fmt: skip

    good = packet("ka", "p", [{"message": "keepalive-1"}])
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request(b"{broken") + request(good) + request(good.replace(b"-1", b"-2")))
        data = b""
        while data.count(b"HTTP/1.1 ") < 3 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"400", b"202", b"202"]
    assert len(stack.capture.matching(b"keepalive-", 2)) == 2


def test_http_backpressure_answers_429_until_resumed(tmp_path: Path) -> None:
    with CaptureAnalyzer() as capture, ProcessGroup() as procs:
        stack = Stack(procs, capture, tmp_path, "--max-pending-mb", "0.2", "--ack-timeout", "30")
        url = f"{stack.http}/v1/packets"
        capture.hold()
        body = packet("bp", "p", [{"message": "backpressure " + "z" * 200}] * 100)
        statuses = []
        for _ in range(100):  # ~24 KB per packet: the 0.2 MB bound is crossed within ~10 packets
            status, answer, headers = post(url, body)
            statuses.append(status)
            if status == 429:
                assert headers["Retry-After"] == "1" and answer["error"]
                break
        assert statuses[-1] == 429 and set(statuses[:-1]) == {202}, statuses
        capture.release()
        resumed = wait_until(lambda: post(url, body)[0] == 202, 20, "ingest resumed")
        assert resumed
        accepted = 100 * statuses.count(202) + 100
        capture.wait_for(lambda ms: len(ms) >= accepted, 20, "everything accepted delivered")


# -- lines -----------------------------------------------------------------------------------------


def test_lines_plain_json_crlf_and_the_last_unterminated_line(stack: Stack) -> None:
    structured = json.dumps({"message": "lines-json ☃", "level": "error", "source": "app", "attributes": {"a": "b"}})
    with socket.create_connection(stack.lines, timeout=10) as sock:
        sock.sendall(b"lines-plain  one\r\n\n" + structured.encode() + b"\n{lines-brace}\n")
        sock.sendall("lines-last ünterminated".encode())
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # the server closes its side after EOF
    got = {m.payload: m for m in stack.capture.matching(b"lines-", 4)}
    assert set(got) == {
        b"lines-plain  one",
        "lines-json ☃".encode(),
        b"{lines-brace}",
        "lines-last ünterminated".encode(),
    }
    json_msg = got["lines-json ☃".encode()]
    assert json_msg.severity == 96 and json_msg.attributes == {"a": "b", "source": "app"}
    assert got[b"lines-plain  one"].severity == 192 and got[b"lines-plain  one"].attributes == {}
    assert len({m.stream for m in got.values()}) == 1


def test_an_over_long_line_closes_only_its_connection(stack: Stack) -> None:
    before = stack.bad_frames()
    with (
        socket.create_connection(stack.lines, timeout=10) as good,
        socket.create_connection(stack.lines, timeout=10) as bad,
    ):
        good.sendall(b"longline-before\n")
        bad.sendall(b"longline-kept\n" + b"x" * (1024 * 1024 + 1))
        with contextlib.suppress(ConnectionResetError):
            while bad.recv(65536):
                pass  # until the server closes it
        good.sendall(b"longline-after\n")
    assert {m.payload for m in stack.capture.matching(b"longline-", 3)} == {
        b"longline-before", b"longline-kept", b"longline-after"}  # fmt: skip
    wait_until(lambda: stack.bad_frames() == before + 1, 10, "bad input counted")


# -- syslog ----------------------------------------------------------------------------------------

needs_logger = pytest.mark.skipif(shutil.which("logger") is None, reason="util-linux logger is not installed")


@needs_logger
def test_syslog_from_util_linux_logger_in_every_framing_and_format(stack: Stack, tmp_path: Path) -> None:
    host, port = stack.syslog
    base = ["logger", "--tcp", "--server", host, "--port", str(port), "-t", "myapp", "-p", "local3.err"]
    variants = {
        "rfc5424-lf": ["--rfc5424", "--msgid", "MID"],
        "rfc5424-octet": ["--rfc5424", "--octet-count", "--msgid", "MID"],
        "rfc3164-lf": ["--rfc3164"],
        "rfc3164-octet": ["--rfc3164", "--octet-count"],
    }
    lines_file = tmp_path / "in.txt"
    lines_file.write_text("ulogger-file one\nulogger-file two  spaced ☃\n")
    for name, extra in variants.items():
        subprocess.run([*base, *extra, "--id=4242", f"ulogger-{name} hello  world ☃"], check=True, timeout=10)
    subprocess.run([*base, "--octet-count", "-f", str(lines_file)], check=True, timeout=10)
    got = {m.payload.decode(): m for m in stack.capture.matching(b"ulogger-", 6)}
    hostname = socket.gethostname()
    for name in variants:
        msg = got[f"ulogger-{name} hello  world ☃"]
        assert msg.severity == 3 * 32
        assert msg.attributes["facility"] == "local3" and msg.attributes["app"] == "myapp"
        assert msg.attributes["procid"] == "4242" and msg.attributes["host"] in {hostname, hostname.split(".")[0]}
        if name.startswith("rfc5424"):
            assert msg.attributes["msgid"] == "MID" and "timestamp" in msg.attributes
        else:
            assert "timestamp_rfc3164" in msg.attributes
    assert {"ulogger-file one", "ulogger-file two  spaced ☃"} <= set(got)


def test_a_corrupt_octet_count_closes_only_its_connection(stack: Stack) -> None:
    before = stack.bad_frames()
    with socket.create_connection(stack.syslog, timeout=10) as sock:
        frame = b"<13>octet-good frame"
        sock.sendall(b"%d " % len(frame) + frame + b"<13>octet-newline\n99x <13>octet-never\n")
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert {m.payload for m in stack.capture.matching(b"octet-", 2)} == {b"octet-good frame", b"octet-newline"}
    wait_until(lambda: stack.bad_frames() == before + 1, 10, "bad input counted")


RSYSLOG_CONF = """
global(workDirectory="{tmp}")
module(load="imuxsock" SysSock.Use="off")
module(load="mmrm1stspace")
input(type="imuxsock" Socket="{sock}" CreatePath="on")
template(name="rfc5424" type="string"
         string="<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% %PROCID% %MSGID% %STRUCTURED-DATA% %msg%")
action(type="mmrm1stspace")
action(type="omfwd" target="{host}" port="{port}" protocol="tcp" TCP_Framing="octet-counted" template="rfc5424")
action(type="omfwd" target="{host}" port="{port}" protocol="tcp" TCP_Framing="traditional"
       template="RSYSLOG_TraditionalForwardFormat")
"""


@needs_logger
@pytest.mark.skipif(shutil.which("rsyslogd") is None, reason="rsyslog is not installed (apt-get install rsyslog)")
def test_syslog_from_rsyslog_in_both_framings(stack: Stack, tmp_path: Path) -> None:
    """rsyslog reads a unix socket of its own and forwards each message twice: octet-counted RFC 5424 and
    newline-framed traditional (RFC 3164) format."""
    sock = tmp_path / "log.sock"
    host, port = stack.syslog
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(tmp=tmp_path, sock=sock, host=host, port=port))
    check = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    output = tmp_path / "rsyslogd.out"
    with output.open("wb") as out:
        daemon = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: sock.exists() or daemon.poll() is not None, 20, "rsyslogd socket")
        assert daemon.poll() is None, output.read_text(errors="replace")
        texts = [f"viarsyslog-{i} payload  with ☃ and trailing space " for i in range(20)]
        (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
        subprocess.run(["logger", "-u", str(sock), "-t", "rsapp", "-i", "-p", "daemon.warning", "-f",
                        str(tmp_path / "in.txt")], check=True, timeout=10)  # fmt: skip
        got = stack.capture.matching(b"viarsyslog-", 40, timeout=30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
    payloads = sorted(m.payload.decode() for m in got)
    assert payloads == sorted(texts * 2), "every message exactly, once per framing"
    assert {m.severity for m in got} == {4 * 32}
    assert {m.attributes["app"] for m in got} == {"rsapp"} and {m.attributes["facility"] for m in got} == {"daemon"}
    assert sum("timestamp" in m.attributes for m in got) == 20  # RFC 5424 copies
    assert sum("timestamp_rfc3164" in m.attributes for m in got) == 20  # traditional copies
