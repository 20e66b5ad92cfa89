"""Per-analyzer queue bounds: "block" backpressures the emitters, drop policies count every drop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import Cluster, finish
from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(120)


def test_drop_lowest_priority_counts_every_dropped_message(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = Cluster(
            procs, tmp_path, {"a1": 1.0}, analyzer_args={"a1": ["--delay-ms", "200"]},
            max_queue_messages="5000", when_full="drop_lowest_priority", window="1",
        )  # fmt: skip
        summary = finish(cluster, cluster.emit(rate=40_000, duration=3, connections=1, batch=1000))
        drops = cluster.stats()["drops"].get("queue_full_drop_lowest_priority", 0)
        assert drops > 0, "a slow analyzer behind a small bound must shed load"
        acct = cluster.account(summary)
        assert acct["lost"] == drops, "every message not delivered is a counted drop, nothing else is missing"
        assert cluster.distributor.terminate() == 0


def test_block_policy_backpressures_instead_of_dropping(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        cluster = Cluster(
            procs, tmp_path, {"a1": 1.0}, analyzer_args={"a1": ["--delay-ms", "200"]},
            max_queue_messages="5000", when_full="block", window="1",
        )  # fmt: skip
        emitter = cluster.emit(rate=40_000, duration=3, connections=1, batch=1000)
        wait_until(lambda: cluster.stats()["queue_blocked"], 20, "ingest blocked by the full queue")
        summary = finish(cluster, emitter)
        assert not cluster.stats()["drops"]
        assert cluster.account(summary)["lost"] == 0
        assert cluster.distributor.terminate() == 0
