"""Tracing end to end: `logdist serve --tracing otlp` exports spans over real OTLP/HTTP to an in-test collector,
continuing the trace of the emitter's ``traceparent``."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from logdist.emitter.client import EmitterClient
from logdist.model import Message
from logdist.wire.batch import MessageBlock
from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(120)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Collector(http.server.ThreadingHTTPServer):
    """Records every span POSTed to /v1/traces as ``(name, trace id hex, attributes)``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, str, dict[str, object]]] = []
        self.posts = 0
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.posts += 1
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: a.value for a in span.attributes}
                        self.server.spans.append((span.name, span.trace_id.hex(), attributes))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_spans_reach_the_otlp_collector_with_the_emitters_trace_id(collector: Collector) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    with ProcessGroup() as procs:
        analyzer = procs.analyzer()
        distributor = procs.start(
            "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--analyzer", f"a=127.0.0.1:{analyzer.port}@1",
            "--tracing", "otlp", "--otlp-endpoint", endpoint, "--tracing-sample-ratio", "1.0",
            env={"OTEL_BSP_SCHEDULE_DELAY": "200"},
        )  # fmt: skip
        host, _, port = distributor.ready["listen"].rpartition(":")

        async def emit() -> None:
            client = EmitterClient(host, int(port), client_id="traced")
            await client.connect()
            for batch in range(3):
                messages = [
                    Message(
                        payload=b"hello %d" % i,
                        stream=7,
                        seq=batch * 100 + i,
                        ts_ns=time.time_ns(),
                        attributes={"traceparent": TRACEPARENT} if batch == 0 else {},
                    )
                    for i in range(100)
                ]
                await client.send(MessageBlock.from_messages(messages))
            assert await client.flush(timeout=10)
            await client.close()

        asyncio.run(emit())

        def traced() -> set[str]:
            with collector.lock:
                return {name for name, trace_id, _ in collector.spans if trace_id == TRACE_ID}

        wait_until(lambda: {"logdist.receive", "logdist.route", "logdist.deliver"} <= traced(), 20, "spans exported")
        with collector.lock:
            names = [name for name, _, _ in collector.spans]
            deliver = [attrs for name, _, attrs in collector.spans if name == "logdist.deliver"]
        assert names.count("logdist.receive") == 3 and names.count("logdist.route") == 3
        assert deliver and all(attrs["logdist.analyzer"].string_value == "a" for attrs in deliver)
        assert distributor.terminate() == 0
