"""The distributor's configuration: one typed model, loaded from TOML or flags, validated with precise errors."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import msgspec

from logdist.routing.rules import Rule, RuleSet
from logdist.runtime import parse_hostport


class ConfigError(ValueError):
    """Invalid configuration; the message names the file, the key and what is wrong."""


ANALYZER_KINDS = ("native", "legacy", "lines", "webhook")


class AnalyzerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One analyzer the distributor delivers to.

    ``kind``: ``native`` (acked batches, the default), ``legacy`` (the original system's analyzer protocol),
    ``lines`` (NDJSON over TCP, no acks: at-most-once on a crash) or ``webhook`` (HTTP POST of NDJSON).
    ``address`` is ``HOST:PORT``, or a URL for webhooks.
    """

    name: str
    address: str
    weight: float = 1.0
    kind: str = "native"
    content_encoding: str | None = None  # webhook request bodies: "gzip" or "zstd"
    group: str = "default"  # route group (see [[groups]])
    failure_policy: str = "reroute"  # while down: "reroute" (share to the others) or "hold" (spool its share)


class GroupConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A weighted route group: messages no rule takes are split over groups by these weights."""

    name: str
    weight: float = 1.0


class ListenerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An extra ingest listener: ``kind`` is a protocol (see ``logdist.ingest.listeners.STARTERS``)."""

    kind: str
    address: str
    ack: str | None = None  # native listeners: "accepted" | "delivered" (default: the top-level `ack`)


ACK_MODES = ("accepted", "durable", "delivered")


class DeliveryConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How links batch, pace and watch their analyzers."""

    linger_ms: float = 2.0
    max_batch_messages: int = 4096
    window: int = 16  # batches in flight per analyzer
    ack_timeout_s: float = 0.75  # no frame for this long while work is outstanding: the analyzer is hung
    heartbeat_interval_s: float = 0.25
    connect_timeout_s: float = 2.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    slow_start_s: float = 5.0
    compression: str | None = None  # "zstd" or "lz4" towards analyzers that accept it
    max_queue_messages: int = 0  # per-analyzer queue bound (0: only the global memory bound applies)
    when_full: str = "block"  # at the bound: "block" (backpressure), "drop_newest" or "drop_lowest_priority"


class BreakerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Circuit breaker per analyzer (see logdist.delivery.breaker) and the panic threshold."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_samples: int = 10
    base_ejection_s: float = 1.0
    max_ejection_s: float = 60.0
    probes: int = 2
    max_ejected_fraction: float = 0.5  # never eject more than this share of the analyzers at once


class SpoolConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The durable spool (LMDB) under ``path``; without a path there is no spool."""

    path: str | None = None
    max_mb: float = 1024.0
    fsync: str = "batch"  # "batch" (group commit, fsync before acking), "interval", "never"
    interval_ms: float = 50.0


class LimitsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Memory bounds: past ``max_pending_mb`` held in memory, ingest stops reading (TCP backpressure)."""

    max_pending_mb: float = 64.0
    resume_pending_fraction: float = 0.5
    max_frame_mb: float = 64.0
    when_full: str = "block"  # past max_pending_mb: "block" (stop reading) or "spill" (to the spool, keep reading)


class TracingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenTelemetry tracing (off by default): per-batch receive, route and deliver spans."""

    enabled: bool = False
    sample_ratio: float = 0.01  # share of batches traced
    exporter: str = "otlp"  # "otlp" (OTLP/HTTP), "console" (JSON spans on stderr) or "memory" (tests)
    otlp_endpoint: str | None = None  # collector base URL, e.g. http://127.0.0.1:4318 (default: the SDK's)
    service_name: str = "logdist"


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole distributor configuration."""

    listen: str = "127.0.0.1:7400"
    legacy_analyzers: str | None = None  # where the original system's analyzers dial in (HOST:PORT)
    admin: str | None = "127.0.0.1:7401"
    admin_token: str | None = None  # bearer token for the admin API (health and metrics stay open)
    listeners: list[ListenerConfig] = []
    analyzers: list[AnalyzerConfig] = []
    groups: list[GroupConfig] = []
    rules: list[Rule] = []
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    drain_timeout_s: float = 10.0
    ack: str = "accepted"  # emitters' batch ack: "accepted" (in memory), "durable" (spool fsync), "delivered"
    dedup_window: int = 4096  # batch seqs remembered per emitter session to drop retransmissions (0: off)

    def validate(self) -> Config:
        """Check cross-field rules; raise ConfigError naming the key."""
        _check_address("listen", self.listen)
        if self.admin is not None:
            _check_address("admin", self.admin)
        if self.legacy_analyzers is not None:
            _check_address("legacy_analyzers", self.legacy_analyzers)
        from logdist.ingest.listeners import STARTERS

        if self.ack not in ACK_MODES:
            raise ConfigError(f"ack: must be one of {', '.join(ACK_MODES)}, got {self.ack!r}")
        durable = self.ack == "durable" or any(listener.ack == "durable" for listener in self.listeners)
        if durable and not self.spool.path:
            raise ConfigError("ack: 'durable' needs a spool: set spool.path (or --spool-dir)")
        if self.spool.fsync not in ("batch", "interval", "never") or self.spool.max_mb <= 0:
            raise ConfigError("spool: fsync must be batch, interval or never, and max_mb > 0")
        if self.limits.when_full not in ("block", "spill"):
            raise ConfigError(f"limits.when_full: must be block or spill, got {self.limits.when_full!r}")
        if self.limits.when_full == "spill" and not self.spool.path:
            raise ConfigError("limits.when_full = 'spill' needs a spool: set spool.path (or --spool-dir)")
        for i, analyzer in enumerate(self.analyzers):
            if analyzer.failure_policy not in ("reroute", "hold"):
                raise ConfigError(f"analyzers[{i}].failure_policy: must be reroute or hold")
            if analyzer.failure_policy == "hold" and not self.spool.path:
                raise ConfigError(f"analyzers[{i}].failure_policy: 'hold' needs a spool: set spool.path")
        if self.dedup_window < 0:
            raise ConfigError(f"dedup_window: must be >= 0, got {self.dedup_window}")
        for i, listener in enumerate(self.listeners):
            if listener.ack is not None and listener.ack not in ACK_MODES:
                raise ConfigError(f"listeners[{i}].ack: must be one of {', '.join(ACK_MODES)}, got {listener.ack!r}")
            if listener.kind not in STARTERS:
                raise ConfigError(f"listeners[{i}].kind: unknown kind {listener.kind!r}; known: {sorted(STARTERS)}")
            _check_address(f"listeners[{i}].address", listener.address)
        seen: set[str] = set()
        for i, analyzer in enumerate(self.analyzers):
            key = f"analyzers[{i}]"
            if not analyzer.name:
                raise ConfigError(f"{key}.name: must not be empty")
            if analyzer.name in seen:
                raise ConfigError(f"{key}.name: duplicate analyzer name {analyzer.name!r}")
            seen.add(analyzer.name)
            if analyzer.kind not in ANALYZER_KINDS:
                raise ConfigError(f"{key}.kind: must be one of {', '.join(ANALYZER_KINDS)}, got {analyzer.kind!r}")
            if analyzer.kind == "webhook":
                if not analyzer.address.startswith(("http://", "https://")):
                    raise ConfigError(f"{key}.address: a webhook needs an http(s):// URL, got {analyzer.address!r}")
                if analyzer.content_encoding not in (None, "gzip", "zstd"):
                    raise ConfigError(f"{key}.content_encoding: must be 'gzip' or 'zstd'")
            else:
                _check_address(f"{key}.address", analyzer.address)
            if not math.isfinite(analyzer.weight) or analyzer.weight <= 0:
                raise ConfigError(f"{key}.weight: must be a positive number, got {analyzer.weight}")
        group_names = self.group_weights().keys()
        for i, group in enumerate(self.groups):
            if not group.name or not math.isfinite(group.weight) or group.weight < 0:
                raise ConfigError(f"groups[{i}]: needs a name and a finite weight >= 0")
        if len({g.name for g in self.groups}) != len(self.groups):
            raise ConfigError("groups: duplicate group name")
        for i, analyzer in enumerate(self.analyzers):
            if analyzer.group not in group_names:
                raise ConfigError(f"analyzers[{i}].group: unknown group {analyzer.group!r}; declare it in [[groups]]")
        try:
            RuleSet(self.rules, groups=group_names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        d = self.delivery
        for key, value in (
            ("linger_ms", d.linger_ms),
            ("ack_timeout_s", d.ack_timeout_s),
            ("heartbeat_interval_s", d.heartbeat_interval_s),
            ("backoff_initial_s", d.backoff_initial_s),
            ("backoff_max_s", d.backoff_max_s),
            ("slow_start_s", d.slow_start_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"delivery.{key}: must be a non-negative number, got {value}")
        if d.max_batch_messages < 1 or d.window < 1:
            raise ConfigError("delivery.max_batch_messages and delivery.window must be at least 1")
        if d.when_full not in ("block", "drop_newest", "drop_lowest_priority") or d.max_queue_messages < 0:
            raise ConfigError("delivery.when_full: block, drop_newest or drop_lowest_priority; max_queue_messages >= 0")
        if d.compression not in (None, "zstd", "lz4"):
            raise ConfigError(f"delivery.compression: must be 'zstd' or 'lz4', got {d.compression!r}")
        b = self.breaker
        if b.consecutive_failures < 1 or b.window < 1 or b.probes < 1 or not 0 < b.failure_rate <= 1:
            raise ConfigError("breaker: consecutive_failures, window, probes >= 1 and failure_rate in (0, 1]")
        if not 0 <= b.max_ejected_fraction <= 1 or b.base_ejection_s < 0 or b.max_ejection_s < b.base_ejection_s:
            raise ConfigError("breaker: max_ejected_fraction in [0, 1], 0 <= base_ejection_s <= max_ejection_s")
        if self.limits.max_pending_mb <= 0 or not 0 < self.limits.resume_pending_fraction < 1:
            raise ConfigError("limits: max_pending_mb must be > 0 and resume_pending_fraction in (0, 1)")
        t = self.tracing
        if t.exporter not in ("otlp", "console", "memory") or not 0 <= t.sample_ratio <= 1:
            raise ConfigError("tracing: exporter must be otlp, console or memory and sample_ratio in [0, 1]")
        return self

    def group_weights(self) -> dict[str, float]:
        """Route group -> weight; without [[groups]] one group, "default", holds every analyzer."""
        return {g.name: g.weight for g in self.groups} or {"default": 1.0}


def _check_address(key: str, value: str) -> None:
    try:
        parse_hostport(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def parse_analyzer_flag(text: str) -> AnalyzerConfig:
    """``NAME=[KIND://]ADDRESS[@WEIGHT]`` -> AnalyzerConfig.

    KIND is native (default), legacy or lines; an ``http://`` or ``https://`` address is a webhook.
    """
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--analyzer {text!r}: expected NAME=[KIND://]HOST:PORT[@WEIGHT]")
    address, at, weight_text = rest.rpartition("@")
    if not at:
        address, weight_text = rest, ""
    try:
        weight = float(weight_text) if weight_text else 1.0
    except ValueError:
        raise ConfigError(f"--analyzer {text!r}: weight {weight_text!r} is not a number") from None
    kind = "native"
    if address.startswith(("http://", "https://")):
        kind = "webhook"
    elif "://" in address:
        kind, _, address = address.partition("://")
    return AnalyzerConfig(name=name, address=address, weight=weight, kind=kind)


def parse_ingest_flag(text: str) -> ListenerConfig:
    """``KIND=HOST:PORT`` -> ListenerConfig."""
    kind, sep, address = text.partition("=")
    if not sep or not kind or not address:
        raise ConfigError(f"--ingest {text!r}: expected KIND=HOST:PORT, e.g. legacy=127.0.0.1:8080")
    return ListenerConfig(kind=kind, address=address)


def load(path: str | Path) -> Config:
    """Load and validate a TOML config file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
