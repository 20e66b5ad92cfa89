"""Prometheus metrics for the distributor, served by the admin API at ``/metrics``.

Two sources, both read at scrape time so the hot path pays (almost) nothing:

* :class:`DistributorCollector` turns a distributor's own counters and its links' state into metric families
  when Prometheus scrapes; nothing is recorded on the hot path for them.
* :func:`observe_delivery` (called once per acknowledged batch by the links) feeds two latency histograms per
  analyzer. ``prometheus_client.Histogram`` costs 4-6 us per observation (locks, per-bucket value objects), so
  the buckets are plain lists updated with one ``bisect``; :class:`DeliveryHistogramCollector` exposes them.
  They are process-wide (the callers only name the analyzer); each distributor's registry shows the series of
  its own analyzers.

Everything here runs on the event loop thread (the links call in from it, and the admin handler renders on it),
so the unlocked updates cannot race with a scrape.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from logdist.distributor import Distributor

# Upper bounds (seconds) of the latency buckets, 0.5 ms .. 10 s; +Inf is implicit.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_BUCKET_NAMES: tuple[str, ...] = (*map(floatToGoString, BUCKETS), "+Inf")

# Per-emitter series are bounded: the busiest EMITTER_SERIES client ids, the rest summed as "other".
EMITTER_SERIES = 50

# Link states exported as one 0/1 series each (the values of LinkState).
LINK_STATES: tuple[str, ...] = ("connecting", "up", "down", "closed")


class _Histogram:
    """Non-cumulative bucket counts and a sum; ``counts[-1]`` is the +Inf bucket."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def family_samples(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` pairs as Prometheus wants them, and the sum."""
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(_BUCKET_NAMES, self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, self.total

    @property
    def count(self) -> int:
        return sum(self.counts)


# analyzer -> (round trip, oldest message age)
_delivery: dict[str, tuple[_Histogram, _Histogram]] = {}


def observe_delivery(analyzer: str, round_trip_s: float, oldest_message_age_s: float, messages: int) -> None:
    """Record one acknowledged batch: its send->ack time and the age of its oldest message at ack.

    ``messages`` is accepted for the callers' convenience; per-message counts come from the links themselves.
    """
    pair = _delivery.get(analyzer)
    if pair is None:
        pair = _delivery[analyzer] = (_Histogram(), _Histogram())
    rtt, age = pair
    rtt.counts[bisect_left(BUCKETS, round_trip_s)] += 1
    rtt.total += round_trip_s
    age.counts[bisect_left(BUCKETS, oldest_message_age_s)] += 1
    age.total += oldest_message_age_s


def forget_analyzer(analyzer: str) -> None:
    """Drop the histograms of an analyzer that is gone for good (dial-in analyzers get a new name each time)."""
    _delivery.pop(analyzer, None)


def delivery_observations(analyzer: str) -> int:
    """How many batches of ``analyzer`` have been observed (for tests and debugging)."""
    pair = _delivery.get(analyzer)
    return pair[0].count if pair else 0


def reset_delivery_metrics() -> None:
    """Forget every delivery observation (tests)."""
    _delivery.clear()


class DeliveryHistogramCollector(Collector):
    """Exposes the :func:`observe_delivery` histograms of the analyzers in ``names()`` (all when None)."""

    def __init__(self, names: Callable[[], Iterable[str]] | None = None) -> None:
        self._names = names

    def collect(self) -> Iterator[Metric]:
        rtt = HistogramMetricFamily(
            "logdist_delivery_round_trip_seconds",
            "Time from sending a batch to an analyzer to its acknowledgement.",
            labels=["analyzer"],
        )
        age = HistogramMetricFamily(
            "logdist_delivery_oldest_message_age_seconds",
            "End-to-end age (emitter timestamp to acknowledgement) of the oldest message of each acknowledged batch.",
            labels=["analyzer"],
        )
        wanted = None if self._names is None else set(self._names())
        for analyzer, (rtt_hist, age_hist) in sorted(_delivery.items()):
            if wanted is not None and analyzer not in wanted:
                continue
            buckets, total = rtt_hist.family_samples()
            rtt.add_metric([analyzer], buckets, total)
            buckets, total = age_hist.family_samples()
            age.add_metric([analyzer], buckets, total)
        yield rtt
        yield age


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


class DistributorCollector(Collector):
    """Reads a distributor's state when scraped (no cost between scrapes)."""

    def __init__(self, distributor: Distributor) -> None:
        self.distributor = distributor

    def collect(self) -> Iterator[Metric]:
        dist = self.distributor
        now = time.monotonic()
        table = dist.router.table
        links = list(dist.links.values())
        total_delivered = sum(link.delivered_messages for link in links)
        total_weight = sum(link.weight for link in links)
        per = ["analyzer", "kind"]

        delivered = _counter("logdist_analyzer_delivered_messages", "Messages acknowledged by the analyzer.", per)
        batches = _counter("logdist_analyzer_delivered_batches", "Batches acknowledged by the analyzer.", per)
        failures = _counter("logdist_analyzer_failures", "Times the analyzer's link failed after being up.", per)
        weight = _gauge("logdist_analyzer_weight", "Configured weight of the analyzer.", per)
        effective = _gauge(
            "logdist_analyzer_effective_weight", "Weight in use: 0 while not up or drained, ramped in slow start.", per
        )
        configured_share = _gauge(
            "logdist_analyzer_configured_share", "Configured weight over the sum of configured weights.", per
        )
        route_share = _gauge("logdist_analyzer_route_share", "Share of new messages the route table gives it.", per)
        actual_share = _gauge(
            "logdist_analyzer_actual_share", "Messages it acknowledged over all acknowledged messages so far.", per
        )
        in_flight = _gauge("logdist_analyzer_in_flight_messages", "Messages sent and not yet acknowledged.", per)
        queued = _gauge("logdist_analyzer_queued_messages", "Messages queued for the analyzer, not yet sent.", per)
        queued_bytes = _gauge("logdist_analyzer_queued_bytes", "Bytes of the messages queued for the analyzer.", per)
        state = _gauge("logdist_analyzer_state", "1 for the link's current state, 0 for the others.", [*per, "state"])
        slow_start = _gauge("logdist_analyzer_slow_start", "1 while the analyzer ramps up after a recovery.", per)
        drained = _gauge("logdist_analyzer_drained", "1 while the analyzer is drained by the operator.", per)

        for link in links:
            labels = [link.name, str(link.kind)]
            delivered.add_metric(labels, link.delivered_messages)
            batches.add_metric(labels, link.delivered_batches)
            failures.add_metric(labels, link.failures)
            weight.add_metric(labels, link.weight)
            effective.add_metric(labels, dist.effective_weight(link, now))
            configured_share.add_metric(labels, link.weight / total_weight if total_weight else 0.0)
            route_share.add_metric(labels, table.share_of(link.name))
            actual_share.add_metric(labels, link.delivered_messages / total_delivered if total_delivered else 0.0)
            in_flight.add_metric(labels, link.in_flight_messages)
            queued.add_metric(labels, len(link.queue))
            queued_bytes.add_metric(labels, getattr(link.queue, "nbytes", 0))
            current = str(getattr(link.state, "value", link.state))
            for name in LINK_STATES:
                state.add_metric([*labels, name], 1.0 if current == name else 0.0)
            slow_start.add_metric(labels, 1.0 if dist.in_slow_start(link, now) else 0.0)
            drained.add_metric(labels, 1.0 if getattr(link, "drained", False) else 0.0)
        yield from (delivered, batches, failures, weight, effective, configured_share, route_share, actual_share)
        yield from (in_flight, queued, queued_bytes, state, slow_start, drained)

        yield CounterMetricFamily(
            "logdist_ingest_messages", "Messages accepted from emitters.", value=dist.accepted_messages
        )
        yield CounterMetricFamily(
            "logdist_ingest_batches", "Batches accepted from emitters.", value=dist.accepted_batches
        )
        yield CounterMetricFamily(
            "logdist_ingest_bad_frames", "Emitter connections closed for bad input.", value=dist.bad_frames
        )
        yield GaugeMetricFamily("logdist_ingest_connections", "Open ingest connections.", value=len(dist.connections))
        per_emitter = _counter(
            "logdist_ingest_emitter_messages",
            f"Messages accepted per emitter client id (the {EMITTER_SERIES} busiest; the rest as 'other').",
            ["emitter"],
        )
        for emitter, count in dist.emitter_totals(EMITTER_SERIES).items():
            per_emitter.add_metric([emitter], count)
        yield per_emitter
        yield GaugeMetricFamily("logdist_ingest_paused", "1 while ingest is paused.", value=1.0 if dist.paused else 0.0)
        yield CounterMetricFamily(
            "logdist_rerouted_messages", "Messages rerouted after their analyzer failed.", value=dist.rerouted_messages
        )
        drops = _counter("logdist_dropped_messages", "Messages dropped, by reason.", ["reason"])
        for reason, count in sorted(dist.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        yield GaugeMetricFamily(
            "logdist_parked_messages", "Messages held while no analyzer is up.", value=dist.parked_messages
        )
        yield GaugeMetricFamily(
            "logdist_pending_bytes",
            "Bytes accepted and not yet acknowledged, held in memory.",
            value=dist.pending_bytes,
        )
        yield GaugeMetricFamily(
            "logdist_max_pending_bytes", "Memory bound above which ingest is paused.", value=dist.max_pending
        )
        yield GaugeMetricFamily(
            "logdist_route_table_version", "Version of the route table in force.", value=table.version
        )
        yield GaugeMetricFamily(
            "logdist_uptime_seconds", "Seconds since the distributor started.", value=now - dist.started_at
        )


def build_registry(distributor: Distributor) -> CollectorRegistry:
    """A registry of its own for ``distributor`` (several can live in one process): its state, the delivery
    histograms of its analyzers, and the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DistributorCollector(distributor))
    registry.register(DeliveryHistogramCollector(lambda: distributor.links.keys()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` asks for (text 0.0.4 or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
