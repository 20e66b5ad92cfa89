"""Hot reload of the configuration file: on change (polled) or SIGHUP, validated, then applied atomically.

An invalid file is rejected as a whole: the running configuration stays, and the error is logged and kept
in :attr:`ConfigReloader.last` for the admin API and metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from logdist.config import AnalyzerConfig, Config, ConfigError, load

if TYPE_CHECKING:
    from logdist.distributor import Distributor

log = logging.getLogger("logdist.reload")


class ReloadStatus(msgspec.Struct):
    """Outcome of the latest reload attempt."""

    ok: bool = True
    at: float | None = None  # unix time
    error: str | None = None
    changes: list[str] = []
    reloads: int = 0
    failures: int = 0


class ConfigReloader:
    """Watches ``path`` and applies a changed, valid configuration to the running distributor."""

    def __init__(self, distributor: Distributor, path: str | Path, poll_s: float = 1.0) -> None:
        self.distributor = distributor
        self.path = Path(path)
        self.poll_s = poll_s
        self.last = ReloadStatus()
        self._digest = self._read_digest()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def start(self) -> None:
        """Poll the file for changes in the background."""
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="config-watch")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            digest = self._read_digest()
            if digest is not None and digest != self._digest:
                await self.reload()

    async def reload(self) -> ReloadStatus:
        """Load, validate and apply the file now; the status says what changed or why nothing did."""
        async with self._lock:
            self._digest = self._read_digest()
            try:
                new = load(self.path)
            except ConfigError as exc:
                self.last = ReloadStatus(
                    ok=False, at=time.time(), error=str(exc), reloads=self.last.reloads, failures=self.last.failures + 1
                )
                log.error("config reload rejected, keeping the running configuration: %s", exc)
                return self.last
            changes = await apply(self.distributor, new)
            self.last = ReloadStatus(
                ok=True, at=time.time(), changes=changes, reloads=self.last.reloads + 1, failures=self.last.failures
            )
            log.info("config reloaded: %s", "; ".join(changes) or "no changes")
            return self.last

    def status(self) -> dict[str, Any]:
        """The latest status as JSON-ready data."""
        return msgspec.to_builtins(self.last)


async def apply(distributor: Distributor, new: Config) -> list[str]:
    """Move the running distributor to ``new``; returns a description of each change."""
    old = distributor.config
    changes: list[str] = []
    old_analyzers = {a.name: a for a in old.analyzers}
    new_analyzers = {a.name: a for a in new.analyzers}
    for name, spec in new_analyzers.items():
        before = old_analyzers.get(name)
        if before is None and name not in distributor.links:
            distributor.add_analyzer(spec)
            changes.append(f"added analyzer {name}")
        elif before is not None and _endpoint(before) != _endpoint(spec):
            await distributor.remove_analyzer(name, drain=True)
            distributor.add_analyzer(spec)
            changes.append(
                f"replaced analyzer {name} ({before.kind}://{before.address} -> {spec.kind}://{spec.address})"
            )
        elif name in distributor.links and distributor.links[name].weight != spec.weight:
            running = distributor.links[name].weight  # the file wins over changes made through the API
            distributor.set_weight(name, spec.weight)
            changes.append(f"weight of {name}: {running:g} -> {spec.weight:g}")
    for name in old_analyzers.keys() - new_analyzers.keys():
        if name in distributor.links:
            await distributor.remove_analyzer(name, drain=True)
        changes.append(f"removed analyzer {name}")
    for field in msgspec.structs.fields(new.delivery):
        value = getattr(new.delivery, field.name)
        if getattr(old.delivery, field.name) != value:
            setattr(old.delivery, field.name, value)  # links share this object: applies from their next step
            changes.append(f"delivery.{field.name} = {value}")
    if old.groups != new.groups or old.rules != new.rules:
        for spec in new.analyzers:
            distributor.group_of[spec.name] = spec.group
        distributor.set_routing(new.group_weights(), new.rules)
        old.groups, old.rules = new.groups, new.rules
        changes.append("route groups and rules replaced")
    if old.limits != new.limits:
        distributor.set_limits(new.limits)
        changes.append("limits updated")
    restart_only = [
        key for key in ("listen", "admin", "legacy_analyzers", "listeners") if getattr(old, key) != getattr(new, key)
    ]
    for key in restart_only:
        changes.append(f"{key} changed: takes effect after a restart")
        log.warning("config key %s changed; listeners are only rebound at start-up", key)
    old.analyzers = new.analyzers
    old.drain_timeout_s = new.drain_timeout_s
    old.limits = new.limits
    return changes


def _endpoint(spec: AnalyzerConfig) -> tuple[str, str, str | None]:
    return (spec.kind, spec.address, spec.content_encoding)
