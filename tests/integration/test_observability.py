"""Observability end to end, with real processes: /metrics against /stats, /readyz, /debug/profile."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import LogdistProcess, ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(120)


def get(admin: str, path: str, timeout: float = 10) -> tuple[int, str, str]:
    """``(status, content type, body)`` of GET http://ADMIN/PATH, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def stats(admin: str) -> dict[str, Any]:
    return json.loads(get(admin, "/stats")[2])


def scrape(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    status, content_type, body = get(admin, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def serve(procs: ProcessGroup, analyzers: dict[str, LogdistProcess]) -> tuple[LogdistProcess, str]:
    args = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    for name, proc in analyzers.items():
        args += ["--analyzer", f"{name}=127.0.0.1:{proc.port}@1"]
    distributor = procs.start(*args)
    admin = distributor.ready["admin"]
    wait_until(lambda: all(a["state"] == "up" for a in stats(admin)["analyzers"]), 20, "analyzers up")
    return distributor, admin


def emit(procs: ProcessGroup, target: str, rate: int, duration: float) -> LogdistProcess:
    args = ["emit", "--target", target, "--rate", str(rate), "--duration", str(duration)]
    args += ["--connections", "2", "--size", "200", "--batch", "200", "--json", "--quiet"]
    return procs.start(*args, ready=False)


def drained(admin: str) -> bool:
    snapshot = stats(admin)
    return not snapshot["parked"] and all(not a["queued"] and not a["in_flight"] for a in snapshot["analyzers"])


def test_metrics_match_stats_and_profile_sees_logdist() -> None:
    with ProcessGroup() as procs:
        analyzers = {"a1": procs.analyzer(name="a1"), "a2": procs.analyzer(name="a2")}
        distributor, admin = serve(procs, analyzers)
        assert get(admin, "/readyz")[0] == 200
        assert get(admin, "/healthz")[0] == 200

        emitter = emit(procs, distributor.ready["listen"], rate=20_000, duration=3)
        profiled: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: profiled.update(r=get(admin, "/debug/profile?seconds=1")))
        wait_until(lambda: stats(admin)["ingest"]["messages"] > 0, 20, "traffic flowing")
        thread.start()
        thread.join(30)
        assert emitter.wait(60) == 0, emitter.describe()
        summary = emitter.wait_event("summary")
        assert summary["sent"] > 0 and summary["sent"] == summary["acked"]
        wait_until(lambda: drained(admin), 30, "distributor drained")

        samples = scrape(admin)
        snapshot = stats(admin)
        for analyzer in snapshot["analyzers"]:
            labels = (("analyzer", analyzer["name"]), ("kind", "native"))
            delivered = samples["logdist_analyzer_delivered_messages_total", labels]
            assert delivered == analyzer["delivered"] > 0
            assert samples["logdist_analyzer_state", (*labels, ("state", "up"))] == 1
            assert samples["logdist_analyzer_route_share", labels] == pytest.approx(analyzer["route_share"])
            batches = samples["logdist_analyzer_delivered_batches_total", labels]
            only = (("analyzer", analyzer["name"]),)
            assert samples["logdist_delivery_round_trip_seconds_count", only] == batches > 0
            assert samples["logdist_delivery_oldest_message_age_seconds_count", only] == batches
        assert samples["logdist_ingest_messages_total", ()] == snapshot["ingest"]["messages"] == summary["sent"]
        assert samples["logdist_parked_messages", ()] == 0
        assert samples["logdist_ingest_paused", ()] == 0
        assert samples["process_resident_memory_bytes", ()] > 0

        status, content_type, report = profiled["r"]
        assert status == 200 and content_type.startswith("text/plain"), report
        assert "by cumulative time" in report
        assert "logdist/" in report, report[:2000]
        assert distributor.terminate() == 0


def test_readyz_turns_503_when_the_only_analyzer_dies() -> None:
    with ProcessGroup() as procs:
        analyzer = procs.analyzer(name="only")
        distributor, admin = serve(procs, {"only": analyzer})
        status, _, body = get(admin, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        analyzer.kill()
        wait_until(lambda: get(admin, "/readyz")[0] == 503, 10, "not ready")
        body = json.loads(get(admin, "/readyz")[2])
        assert body["ready"] is False and body["missing"] == ["analyzers"]
        assert "only" in body["reasons"]["analyzers"]
        assert get(admin, "/healthz")[0] == 200  # still alive
        assert distributor.terminate() == 0
