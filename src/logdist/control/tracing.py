"""OpenTelemetry tracing: one span per batch for receive, route and deliver (never one per message).

Off by default. While off, :data:`tracer` is ``None`` and each hop pays one ``is None`` check per batch.
While on, a batch is sampled with probability ``sample_ratio`` (decided here, before any OpenTelemetry call,
so an unsampled batch costs one ``random()``); a sampled batch whose first message carries a W3C
``traceparent`` attribute continues that trace, otherwise its spans start a new one.

logdist never rewrites messages: the ``traceparent`` attribute reaches the analyzer exactly as the emitter
set it, so the emitter's, logdist's and the analyzer's spans all share the emitter's trace id.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from logdist.wire.batch import HEADER_DTYPE, MessageBlock

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from logdist.config import TracingConfig

log = logging.getLogger("logdist.tracing")

EXPORTERS = ("otlp", "console", "memory")

_ATTR_LEN = HEADER_DTYPE.fields["attr_len"][1]  # byte offset of attr_len in a message header
_attributes = msgspec.msgpack.Decoder(dict[str, str])

tracer: BatchTracer | None = None
"""The process's batch tracer; ``None`` while tracing is off (the hot path checks only this)."""


class BatchTracer:
    """Starts and ends the per-batch spans; holds the provider (and, for ``memory``, the exporter)."""

    def __init__(self, provider: TracerProvider, sample_ratio: float, exporter: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._in_context = trace.set_span_in_context
        self._kind = trace.SpanKind
        self.provider = provider
        self.exporter = exporter
        self.sample_ratio = sample_ratio
        self._tracer = provider.get_tracer("logdist")
        self._propagator = TraceContextTextMapPropagator()
        self._random = random.random
        self._block: MessageBlock | None = None  # the batch being accepted: its receive decision ...
        self._parent: Context | None = None  # ... and the context its route span is a child of (None: unsampled)

    def _sampled(self) -> bool:
        return self.sample_ratio >= 1.0 or self._random() < self.sample_ratio

    def _remote(self, block: MessageBlock) -> Context | None:
        """The context of the first message's ``traceparent`` attribute, if it has a valid one (decodes one message)."""
        if not block.count:
            return None
        attr_len = int.from_bytes(memoryview(block.headers)[_ATTR_LEN : _ATTR_LEN + 4], "little")
        if not attr_len:
            return None
        try:  # message 0's attributes start its body
            traceparent = _attributes.decode(memoryview(block.bodies)[:attr_len]).get("traceparent")
        except (msgspec.DecodeError, UnicodeDecodeError):  # a bad attribute map is not tracing's business
            return None
        if traceparent is None:
            return None
        return self._propagator.extract({"traceparent": traceparent})

    def received(self, block: MessageBlock, client_id: str | None, seq: int) -> None:
        """A batch arrived on the native ingest: decide sampling; for a sampled one, record its receive span."""
        self._block = block
        self._parent = None
        if not self._sampled():
            return
        span = self._tracer.start_span(
            "logdist.receive",
            context=self._remote(block),
            kind=self._kind.SERVER,
            attributes={
                "logdist.client_id": client_id or "",
                "logdist.batch_seq": seq,
                "logdist.messages": block.count,
                "logdist.bytes": block.nbytes,
            },
        )
        span.end()
        self._parent = self._in_context(span)

    def route(self, block: MessageBlock, route: Callable[[MessageBlock], None]) -> None:
        """Run ``route(block)``, inside a route span when the batch is sampled (child of its receive span)."""
        if block is self._block:  # decided when it was received
            parent = self._parent
            self._block = self._parent = None
            if parent is None:
                route(block)
                return
        elif self._sampled():  # from another ingest: decide here
            parent = self._remote(block)
        else:
            route(block)
            return
        with self._tracer.start_as_current_span(
            "logdist.route", context=parent, attributes={"logdist.messages": block.count}
        ):
            route(block)

    def deliver_started(self, spans: dict[int, Span], analyzer: str, seq: int, parts: list[MessageBlock]) -> None:
        """An outgoing batch was written: for a sampled one, start its deliver span and keep it in ``spans``."""
        if not self._sampled():
            return
        spans[seq] = self._tracer.start_span(
            "logdist.deliver",
            context=self._remote(parts[0]) if parts else None,
            kind=self._kind.PRODUCER,
            attributes={
                "logdist.analyzer": analyzer,
                "logdist.batch_seq": seq,
                "logdist.messages": sum(part.count for part in parts),
            },
        )


def deliver_ended(span: Span | None, status: str) -> None:
    """End a deliver span with the batch's outcome (``ok``, ``retry``, ``rejected``, ``orphaned``)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("logdist.status", status)
    if status != "ok":
        span.set_status(Status(StatusCode.ERROR, status))
    span.end()


def end_all(spans: dict[int, Span], status: str) -> None:
    """End every deliver span in ``spans`` (a link lost its in-flight batches) and clear it."""
    for span in spans.values():
        deliver_ended(span, status)
    spans.clear()


def _otlp_url(endpoint: str | None) -> str | None:
    if endpoint is None:
        return None  # the exporter's default (or OTEL_EXPORTER_OTLP_*ENDPOINT)
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def setup(config: TracingConfig) -> BatchTracer | None:
    """Install the process's tracer from ``config`` (or remove it when tracing is off); return it."""
    global tracer
    shutdown()
    if not config.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    # sampling is decided per batch by BatchTracer; the SDK records every span it is asked for
    provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.create({"service.name": config.service_name}))
    exporter: Any
    if config.exporter == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif config.exporter == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=_otlp_url(config.otlp_endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = BatchTracer(provider, config.sample_ratio, exporter)
    log.info("tracing on: %s exporter, sample ratio %g", config.exporter, config.sample_ratio)
    return tracer


def shutdown() -> None:
    """Flush and stop the tracer, if any; tracing is off afterwards."""
    global tracer
    current, tracer = tracer, None
    if current is not None:
        current.provider.shutdown()


def bench(batches: int = 20000, messages: int = 100, repeats: int = 3) -> dict[str, Any]:
    """Per-batch cost of tracing off vs on (ratios 1.0 and 0.01): native receive -> accept -> route -> a link
    that acks at once (deliver), in process; spans go through a BatchSpanProcessor to an exporter that drops them.
    Run: ``python -m logdist.control.tracing``."""
    import time

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from logdist.config import Config
    from logdist.control import tracing as module  # not __main__'s globals when run with -m
    from logdist.delivery.link import LinkCore, LinkState
    from logdist.distributor import Distributor
    from logdist.ingest.native import NativeIngest
    from logdist.model import Message
    from logdist.wire.native import AckStatus, Batch

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class AckingLink(LinkCore):
        def _send(self, seq: int, parts: list[MessageBlock]) -> None:
            self._outcome(seq, AckStatus.OK)

    config = Config()
    config.delivery.linger_ms = 0
    dist = Distributor(config)
    for name in ("a1", "a2"):
        link = AckingLink(name, "127.0.0.1:9", 1.0, config.delivery, dist)
        link.state, link.up_since = LinkState.UP, time.monotonic()
        dist.links[name] = link
    dist.rebuild_table()
    ingest = NativeIngest(dist, "bench", 1 << 24)
    ingest.client_id = "bench"
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    block = MessageBlock.from_messages(
        [Message(payload=b"x" * 200, seq=i, attributes={"traceparent": traceparent}) for i in range(messages)]
    )

    def run(ratio: float | None) -> float:
        """Microseconds per batch with tracing off (``None``) or at ``ratio``."""
        provider = None
        if ratio is not None:
            provider = TracerProvider(sampler=ALWAYS_ON)
            provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
            module.tracer = module.BatchTracer(provider, ratio)
        start = time.perf_counter()
        for seq in range(batches):
            ingest._on_batch(Batch(seq, block))
        elapsed = (time.perf_counter() - start) / batches
        module.tracer = None
        if provider is not None:
            provider.shutdown()
        return elapsed * 1e6

    run(None)  # warm up
    times: dict[float | None, float] = {None: float("inf"), 1.0: float("inf"), 0.01: float("inf")}
    for _ in range(repeats):  # interleaved, best of each
        for ratio in times:
            times[ratio] = min(times[ratio], run(ratio))
    off, on_1, on_001 = times[None], times[1.0], times[0.01]
    pct = {"ratio_1.0": round(100 * (on_1 - off) / off, 1), "ratio_0.01": round(100 * (on_001 - off) / off, 1)}
    return {
        "command": "python -m logdist.control.tracing",
        "batches": batches,
        "messages_per_batch": messages,
        "per_batch_us": {"off": round(off, 2), "ratio_1.0": round(on_1, 2), "ratio_0.01": round(on_001, 2)},
        "overhead_per_batch_us": {"ratio_1.0": round(on_1 - off, 2), "ratio_0.01": round(on_001 - off, 2)},
        "overhead_pct": pct,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench(), indent=2))
