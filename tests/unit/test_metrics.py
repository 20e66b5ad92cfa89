"""The Prometheus collector over a real (not started) Distributor, the delivery histograms, the admin endpoints."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from logdist.config import Config
from logdist.control import metrics
from logdist.control.admin import AdminServer
from logdist.delivery.link import LinkCore, LinkState
from logdist.distributor import Distributor
from logdist.model import Message
from logdist.wire.batch import MessageBlock
from logdist.wire.native import AckStatus

ROOT = Path(__file__).resolve().parents[2]


class AckingLink(LinkCore):
    """A link whose analyzer acknowledges every batch the moment it is sent (no network)."""

    def _send(self, seq: int, parts: list[MessageBlock]) -> None:
        self._outcome(seq, AckStatus.OK)


class FakeConnection:
    peer = "127.0.0.1:5555"
    conn_id = 1

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def close(self) -> None: ...


def block(count: int, age_s: float = 0.05) -> MessageBlock:
    ts = time.time_ns() - int(age_s * 1e9)
    return MessageBlock.from_messages([Message(payload=b"x" * 20, seq=i, ts_ns=ts) for i in range(count)])


def add_link(dist: Distributor, name: str, weight: float, state: LinkState, kind: str = "native") -> LinkCore:
    link = AckingLink(name, f"127.0.0.1:{9000 + len(dist.links)}", weight, dist.config.delivery, dist)
    link.kind = kind
    link.state = state
    link.up_since = time.monotonic() if state == LinkState.UP else None
    dist.links[name] = link
    return link


@pytest.fixture(autouse=True)
def _fresh_histograms() -> None:
    metrics.reset_delivery_metrics()


@pytest.fixture
def dist() -> Distributor:
    """Parked and paused traffic first (no analyzer up, tiny memory bound), then 3 analyzers, 1000 delivered."""
    config = Config()
    config.delivery.linger_ms = 0  # AckingLink: flush and ack inside enqueue
    config.delivery.max_batch_messages = 100
    config.limits.max_pending_mb = 0.001
    d = Distributor(config)
    d.register(FakeConnection())
    d.accept(block(30))  # no table yet: parked, and over the memory bound: paused
    add_link(d, "a1", 3.0, LinkState.UP)
    add_link(d, "a2", 1.0, LinkState.UP, kind="legacy")
    add_link(d, "a3", 1.0, LinkState.DOWN, kind="lines")
    d.rebuild_table()
    for _ in range(10):
        d.accept(block(100))
    d.links["a3"].enqueue(block(10))  # down: stays queued
    d.drops["queue_full"] += 7
    d.bad_frames += 2
    return d


def value(registry: Any, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def test_collector_reads_the_distributor(dist: Distributor) -> None:
    registry = metrics.build_registry(dist)
    stats = {a["name"]: a for a in dist.stats()["analyzers"]}
    assert stats["a1"]["delivered"] + stats["a2"]["delivered"] == 1000
    assert stats["a1"]["delivered"] == 750  # the exact splitter

    for name, kind in (("a1", "native"), ("a2", "legacy"), ("a3", "lines")):
        link = dist.links[name]
        labels = {"analyzer": name, "kind": kind}
        assert value(registry, "logdist_analyzer_delivered_messages_total", **labels) == stats[name]["delivered"]
        assert value(registry, "logdist_analyzer_delivered_batches_total", **labels) == link.delivered_batches
        assert value(registry, "logdist_analyzer_weight", **labels) == link.weight
        assert value(registry, "logdist_analyzer_configured_share", **labels) == pytest.approx(
            stats[name]["configured_share"]
        )
        assert value(registry, "logdist_analyzer_route_share", **labels) == pytest.approx(stats[name]["route_share"])
        assert value(registry, "logdist_analyzer_actual_share", **labels) == pytest.approx(stats[name]["share"])
        assert value(registry, "logdist_analyzer_in_flight_messages", **labels) == 0
        assert value(registry, "logdist_analyzer_failures_total", **labels) == 0
        for state in metrics.LINK_STATES:
            expected = 1.0 if state == stats[name]["state"] else 0.0
            assert value(registry, "logdist_analyzer_state", state=state, **labels) == expected

    a1 = {"analyzer": "a1", "kind": "native"}
    a3 = {"analyzer": "a3", "kind": "lines"}
    assert value(registry, "logdist_analyzer_configured_share", **a1) == pytest.approx(0.6)
    assert value(registry, "logdist_analyzer_route_share", **a1) == pytest.approx(0.75)
    assert value(registry, "logdist_analyzer_route_share", **a3) == 0
    assert value(registry, "logdist_analyzer_actual_share", **a1) == pytest.approx(0.75)
    assert value(registry, "logdist_analyzer_queued_messages", **a3) == 10
    assert value(registry, "logdist_analyzer_queued_bytes", **a3) == dist.links["a3"].queue.nbytes > 0
    assert value(registry, "logdist_analyzer_queued_messages", **a1) == 0

    assert value(registry, "logdist_ingest_messages_total") == 1030
    assert value(registry, "logdist_ingest_batches_total") == 11
    assert value(registry, "logdist_ingest_bad_frames_total") == 2
    assert value(registry, "logdist_ingest_connections") == 1
    assert value(registry, "logdist_ingest_paused") == 1
    assert value(registry, "logdist_parked_messages") == 30
    assert value(registry, "logdist_pending_bytes") == dist.pending_bytes > 0
    assert value(registry, "logdist_dropped_messages_total", reason="queue_full") == 7
    assert value(registry, "logdist_rerouted_messages_total") == 0
    assert value(registry, "logdist_route_table_version") == dist.router.table.version == 1
    assert value(registry, "process_cpu_seconds_total") > 0


def test_acknowledged_batches_feed_the_histograms(dist: Distributor) -> None:
    registry = metrics.build_registry(dist)
    for name in ("a1", "a2"):
        batches = dist.links[name].delivered_batches
        assert batches > 0
        for family in ("logdist_delivery_round_trip_seconds", "logdist_delivery_oldest_message_age_seconds"):
            assert value(registry, f"{family}_count", analyzer=name) == batches
            assert value(registry, f"{family}_bucket", analyzer=name, le="+Inf") == batches
    # the messages were stamped 50 ms before they were delivered
    assert value(registry, "logdist_delivery_oldest_message_age_seconds_bucket", analyzer="a1", le="0.025") == 0
    assert value(registry, "logdist_delivery_oldest_message_age_seconds_bucket", analyzer="a1", le="0.1") > 0
    assert registry.get_sample_value("logdist_delivery_round_trip_seconds_count", {"analyzer": "a3"}) is None


def test_observe_delivery_buckets_are_cumulative_and_inclusive() -> None:
    for round_trip in (0.0002, 0.001, 0.003, 20.0):
        metrics.observe_delivery("h1", round_trip, 1.0, 10)
    collector = metrics.DeliveryHistogramCollector()
    rtt = next(f for f in collector.collect() if f.name == "logdist_delivery_round_trip_seconds")
    samples = {(s.name, s.labels.get("le")): s.value for s in rtt.samples if s.labels["analyzer"] == "h1"}
    assert samples["logdist_delivery_round_trip_seconds_bucket", "0.0005"] == 1
    assert samples["logdist_delivery_round_trip_seconds_bucket", "0.001"] == 2  # le is inclusive
    assert samples["logdist_delivery_round_trip_seconds_bucket", "0.005"] == 3
    assert samples["logdist_delivery_round_trip_seconds_bucket", "10.0"] == 3
    assert samples["logdist_delivery_round_trip_seconds_bucket", "+Inf"] == 4
    assert samples["logdist_delivery_round_trip_seconds_count", None] == 4
    assert samples["logdist_delivery_round_trip_seconds_sum", None] == pytest.approx(20.0042)
    assert metrics.delivery_observations("h1") == 4
    metrics.forget_analyzer("h1")
    assert metrics.delivery_observations("h1") == 0


def test_registries_are_per_distributor() -> None:
    """Two distributors in one process: separate registries, each showing only its own analyzers."""
    first, second = Distributor(Config()), Distributor(Config())
    add_link(first, "x1", 1.0, LinkState.UP)
    add_link(second, "y1", 1.0, LinkState.DOWN)
    metrics.observe_delivery("x1", 0.01, 0.02, 5)
    metrics.observe_delivery("y1", 0.01, 0.02, 5)
    one, two = metrics.build_registry(first), metrics.build_registry(second)
    text_one = metrics.render(one)[0].decode()
    assert 'analyzer="x1"' in text_one and 'analyzer="y1"' not in text_one
    assert value(two, "logdist_delivery_round_trip_seconds_count", analyzer="y1") == 1
    assert two.get_sample_value("logdist_analyzer_weight", {"analyzer": "x1", "kind": "native"}) is None


def test_render_formats(dist: Distributor) -> None:
    registry = metrics.build_registry(dist)
    body, content_type = metrics.render(registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {
        "logdist_analyzer_delivered_messages",
        "logdist_delivery_round_trip_seconds",
        "process_cpu_seconds",
    } <= names
    body, content_type = metrics.render(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_dashboard_uses_only_exported_metrics(dist: Distributor) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 20
    body = metrics.render(metrics.build_registry(dist))[0].decode()
    exported = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
    referenced = {name for expr in exprs for name in re.findall(r"\b((?:logdist|process)_[a-z_]+)\b", expr)}
    assert referenced - exported == set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# -- the admin endpoints, in process ------------------------------------------------------------------


async def _with_admin(dist: Distributor, check: Any) -> None:
    admin = AdminServer(dist)
    async with TestClient(TestServer(admin.app)) as client:
        await check(client)


def test_admin_metrics_and_readiness(dist: Distributor) -> None:
    async def check(client: TestClient) -> None:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
        assert 'logdist_analyzer_delivered_messages_total{analyzer="a1",kind="native"} 750.0' in text

        response = await client.get("/healthz")
        assert response.status == 200 and (await response.json())["status"] == "alive"

        response = await client.get("/readyz")  # never started: no listener
        body = await response.json()
        assert response.status == 503 and body["missing"] == ["listeners"] and body["analyzers_up"] == 2

        for link in dist.links.values():
            link.state = LinkState.DOWN
        body = await (await client.get("/readyz")).json()
        assert body["missing"] == ["listeners", "analyzers"]
        assert "a1: down" in body["reasons"]["analyzers"]

    asyncio.run(_with_admin(dist, check))


def test_readiness_hook() -> None:
    dist = Distributor(Config())
    admin = AdminServer(dist)
    dist.listen_address = "127.0.0.1:1"  # pretend started; no listener objects
    add_link(dist, "a1", 1.0, LinkState.UP)
    assert admin.readiness()["missing"] == ["listeners"]
    dist.listeners.append(type("Listener", (), {"kind": "native", "address": "127.0.0.1:1"})())
    assert admin.readiness()["ready"] is True
    dist.links["a1"].drained = True  # type: ignore[attr-defined]  # up, but routed nothing
    assert admin.readiness()["reasons"] == {"analyzers": "no analyzer is up (a1: drained)"}
    dist.links["a1"].drained = False  # type: ignore[attr-defined]
    admin.add_readiness_check("spool", lambda: "spool directory is not writable")
    body = admin.readiness()
    assert body["ready"] is False and body["reasons"] == {"spool": "spool directory is not writable"}


def test_admin_profile_endpoint() -> None:
    dist = Distributor(Config())

    async def busy() -> None:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            dist.stats()
            await asyncio.sleep(0.001)

    async def check(client: TestClient) -> None:
        worker = asyncio.ensure_future(busy())
        first = asyncio.ensure_future(client.get("/debug/profile", params={"seconds": "0.4"}))
        await asyncio.sleep(0.1)
        second = await client.get("/debug/profile", params={"seconds": "0.1"})
        assert second.status == 409
        response = await first
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        report = await response.text()
        assert "by cumulative time" in report and "by internal time" in report
        assert "distributor.py" in report and "(stats)" in report
        await worker
        for bad in ("0", "61", "abc"):
            assert (await client.get("/debug/profile", params={"seconds": bad})).status == 400

    asyncio.run(_with_admin(dist, check))


def test_per_emitter_totals_are_bounded_and_fold_the_rest_into_other(dist: Distributor) -> None:
    class Conn:
        def __init__(self, client_id: str, messages: int) -> None:
            self.client_id, self.messages, self.peer, self.conn_id = client_id, messages, "?", 0

    for i in range(300):
        dist.unregister(Conn(f"e{i}", i))  # closed connections are remembered, bounded
    dist.connections.add(Conn("busy", 10_000))  # type: ignore[arg-type]
    totals = dist.emitter_totals(5)
    assert next(iter(totals)) == "busy" and len(totals) == 6 and "other" in totals
    assert sum(totals.values()) == 10_000 + sum(range(300)), "nothing is lost by folding"
    dist.connections.clear()
