"""OpenTelemetry tracing: off means no tracer and no spans; on, per-batch receive, route and deliver spans."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from logdist.config import Config, ConfigError, TracingConfig
from logdist.control import tracing
from logdist.delivery.link import LinkCore, LinkState
from logdist.distributor import Distributor
from logdist.ingest.native import NativeIngest
from logdist.model import Message
from logdist.wire.batch import MessageBlock
from logdist.wire.native import AckStatus, Batch

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class AckingLink(LinkCore):
    """A link whose analyzer acknowledges every batch the moment it is sent (no network)."""

    def _send(self, seq: int, parts: list[MessageBlock]) -> None:
        self._outcome(seq, AckStatus.OK)


class SilentLink(LinkCore):
    """A link whose analyzer never answers: batches stay in flight."""

    def _send(self, seq: int, parts: list[MessageBlock]) -> None:
        pass


def block(count: int, traceparent: str | None = None) -> MessageBlock:
    attributes = {"traceparent": traceparent, "host": "web-1"} if traceparent else {}
    return MessageBlock.from_messages(
        [Message(payload=b"x" * 20, seq=i, ts_ns=time.time_ns(), attributes=attributes) for i in range(count)]
    )


def distributor(link_type: type[LinkCore] = AckingLink) -> tuple[Distributor, NativeIngest]:
    config = Config()
    config.delivery.linger_ms = 0  # flush inside enqueue
    config.delivery.max_batch_messages = 100
    dist = Distributor(config)
    for name in ("a1", "a2"):
        link = link_type(name, "127.0.0.1:9000", 1.0, config.delivery, dist)
        link.state = LinkState.UP
        link.up_since = time.monotonic()
        dist.links[name] = link
    dist.rebuild_table()
    ingest = NativeIngest(dist, "logdist", 1 << 20)
    ingest.client_id = "emitter-1"
    return dist, ingest


@pytest.fixture
def memory_tracer() -> Iterator[tracing.BatchTracer]:
    tracer = tracing.setup(TracingConfig(enabled=True, exporter="memory", sample_ratio=1.0))
    assert tracer is not None and tracing.tracer is tracer
    yield tracer
    tracing.shutdown()


def spans(tracer: tracing.BatchTracer, name: str) -> list:
    return [s for s in tracer.exporter.get_finished_spans() if s.name == f"logdist.{name}"]


def test_off_by_default_no_tracer() -> None:
    assert not Config().tracing.enabled
    assert tracing.setup(Config().tracing) is None
    assert tracing.tracer is None
    dist, ingest = distributor()
    ingest._on_batch(Batch(1, block(10, TRACEPARENT)))
    assert dist.links["a1"].delivered_messages + dist.links["a2"].delivered_messages == 10


def test_off_after_shutdown_records_nothing() -> None:
    tracer = tracing.setup(TracingConfig(enabled=True, exporter="memory", sample_ratio=1.0))
    assert tracer is not None
    tracing.shutdown()
    assert tracing.tracer is None
    _, ingest = distributor()
    ingest._on_batch(Batch(1, block(10)))
    assert tracer.exporter.get_finished_spans() == ()


def test_spans_per_batch_at_ratio_one(memory_tracer: tracing.BatchTracer) -> None:
    dist, ingest = distributor()
    for seq in range(1, 6):
        ingest._on_batch(Batch(seq, block(150)))  # 150 messages: more than one outgoing batch
    receive, route, deliver = (spans(memory_tracer, n) for n in ("receive", "route", "deliver"))
    assert len(receive) == 5 and len(route) == 5
    sent = sum(link.delivered_batches for link in dist.links.values())
    assert sent >= 5 and len(deliver) == sent
    assert all(s.attributes["logdist.status"] == "ok" for s in deliver)
    assert {s.attributes["logdist.analyzer"] for s in deliver} == {"a1", "a2"}
    assert sum(s.attributes["logdist.messages"] for s in deliver) == 750
    for rx, rt in zip(receive, route, strict=True):  # route is a child of receive
        assert rt.parent is not None and rt.parent.span_id == rx.context.span_id
        assert rt.context.trace_id == rx.context.trace_id
        assert rx.attributes["logdist.client_id"] == "emitter-1"
    assert len({s.context.trace_id for s in receive}) == 5  # no traceparent: a new trace per batch


def test_receive_continues_the_emitters_trace(memory_tracer: tracing.BatchTracer) -> None:
    _, ingest = distributor()
    ingest._on_batch(Batch(1, block(10, TRACEPARENT)))
    ingest._on_batch(Batch(2, block(10)))
    traced, fresh = spans(memory_tracer, "receive")
    assert format(traced.context.trace_id, "032x") == TRACE_ID
    assert traced.parent is not None and format(traced.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert format(fresh.context.trace_id, "032x") != TRACE_ID
    deliver = spans(memory_tracer, "deliver")
    assert any(format(s.context.trace_id, "032x") == TRACE_ID for s in deliver)
    route = spans(memory_tracer, "route")
    assert format(route[0].context.trace_id, "032x") == TRACE_ID


def test_accept_from_other_ingests_gets_a_route_span(memory_tracer: tracing.BatchTracer) -> None:
    dist, _ = distributor()
    dist.accept(block(5, TRACEPARENT))
    (route,) = spans(memory_tracer, "route")
    assert format(route.context.trace_id, "032x") == TRACE_ID
    assert spans(memory_tracer, "receive") == []


def test_ratio_zero_samples_nothing() -> None:
    tracer = tracing.setup(TracingConfig(enabled=True, exporter="memory", sample_ratio=0.0))
    assert tracer is not None
    try:
        _, ingest = distributor()
        for seq in range(1, 20):
            ingest._on_batch(Batch(seq, block(10, TRACEPARENT)))
        assert tracer.exporter.get_finished_spans() == ()
    finally:
        tracing.shutdown()


def test_orphaned_deliver_spans_end(memory_tracer: tracing.BatchTracer) -> None:
    dist, ingest = distributor(SilentLink)
    ingest._on_batch(Batch(1, block(10)))
    assert spans(memory_tracer, "deliver") == []  # in flight: not ended yet
    dist.links["a1"].state = LinkState.UP
    dist.links["a1"]._mark_down("test")
    dist.links["a2"]._mark_down("test")
    deliver = spans(memory_tracer, "deliver")
    assert deliver and all(s.attributes["logdist.status"] == "orphaned" for s in deliver)


def test_config_validation() -> None:
    config = Config()
    config.tracing = TracingConfig(enabled=True, exporter="zipkin")
    with pytest.raises(ConfigError, match="tracing"):
        config.validate()
    config.tracing = TracingConfig(enabled=True, sample_ratio=1.5)
    with pytest.raises(ConfigError, match="tracing"):
        config.validate()
