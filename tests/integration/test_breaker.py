"""Circuit breakers with real processes: an unhealthy analyzer is ejected, nothing is lost, and the panic
threshold keeps enough analyzers in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import Cluster, finish
from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(120)


class UnhealthyCluster(Cluster):
    """a4 answers RETRY to every batch (and a3 too when ``both``)."""

    unhealthy: tuple[str, ...] = ("a4",)

    def start_analyzer(self, name: str, port: int = 0):  # type: ignore[no-untyped-def]
        extra = ["--retry-rate", "1"] if name in self.unhealthy else []
        proc = self.procs.analyzer(
            "--journal", self.tmp / f"{name}.journal", *extra, listen=f"127.0.0.1:{port}", name=name
        )
        self.analyzers[name] = proc
        self.ports[name] = proc.port
        return proc


def circuit(cluster: Cluster, name: str) -> str:
    return next(a["circuit"] for a in cluster.stats()["analyzers"] if a["name"] == name)


def test_unhealthy_analyzer_is_ejected_and_nothing_is_lost(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = UnhealthyCluster(procs, tmp_path)
        emitter = cluster.emit(rate=20_000, duration=4)
        wait_until(lambda: circuit(cluster, "a4") != "closed", 10, "a4's breaker opens")
        wait_until(lambda: sum(cluster.delivered().values()) > 40_000, 20, "traffic")
        base = cluster.delivered()
        wait_until(lambda: sum(cluster.delivered().values()) > sum(base.values()) + 20_000, 20, "more traffic")
        after = cluster.delivered()
        assert after["a4"] == 0, "an analyzer that only asks for retries delivers nothing"
        summary = finish(cluster, emitter)
        stats = cluster.stats()
        a4 = next(a for a in stats["analyzers"] if a["name"] == "a4")
        assert a4["ejections"] >= 1
        assert cluster.account(summary)["lost"] == 0
        assert cluster.distributor.terminate() == 0


def test_panic_threshold_keeps_analyzers_in(tmp_path: Path) -> None:
    UnhealthyCluster.unhealthy = ("a3", "a4")
    try:
        with ProcessGroup() as procs:
            cluster = UnhealthyCluster(procs, tmp_path)
            # allow only 1 of 4 to be ejected at once
            cluster.distributor.stop()
            procs.procs.remove(cluster.distributor)
            args = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--max-ejected-fraction", "0.25"]
            for name, weight in cluster.weights.items():
                args += ["--analyzer", f"{name}=127.0.0.1:{cluster.ports[name]}@{weight}"]
            cluster.distributor = procs.start(*args)
            cluster.admin = cluster.distributor.ready["admin"]
            cluster.target = cluster.distributor.ready["listen"]
            emitter = cluster.emit(rate=20_000, duration=3)
            wait_until(lambda: "open" in (circuit(cluster, "a3"), circuit(cluster, "a4")), 10, "an ejection")
            states = {a["name"]: a["effective_weight"] for a in cluster.stats()["analyzers"]}
            assert states["a3"] > 0 or states["a4"] > 0, "the panic threshold keeps one of the two in"
            summary = finish(cluster, emitter)
            assert cluster.account(summary)["lost"] == 0
    finally:
        UnhealthyCluster.unhealthy = ("a4",)
