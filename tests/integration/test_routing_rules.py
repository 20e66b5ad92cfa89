"""Routing rules and weighted route groups with real processes: measured shares per group and per analyzer
match the configuration; drop rules are counted, never sampled."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import ProcessGroup, wait_until
from tests.procs import admin_stats as stats

pytestmark = pytest.mark.timeout(120)


def test_groups_rules_and_drops_hold_the_configured_shares(tmp_path: Path) -> None:
    with ProcessGroup() as procs:
        ports = {name: procs.analyzer(name=name).port for name in ("m1", "m2", "x1", "c1")}
        config = tmp_path / "logdist.toml"
        config.write_text(
            'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
            '[[groups]]\nname = "main"\nweight = 0.95\n'
            '[[groups]]\nname = "experimental"\nweight = 0.05\n'
            '[[groups]]\nname = "critical"\nweight = 0\n'
            f'[[analyzers]]\nname = "m1"\naddress = "127.0.0.1:{ports["m1"]}"\nweight = 3\ngroup = "main"\n'
            f'[[analyzers]]\nname = "m2"\naddress = "127.0.0.1:{ports["m2"]}"\nweight = 1\ngroup = "main"\n'
            f'[[analyzers]]\nname = "x1"\naddress = "127.0.0.1:{ports["x1"]}"\ngroup = "experimental"\n'
            f'[[analyzers]]\nname = "c1"\naddress = "127.0.0.1:{ports["c1"]}"\ngroup = "critical"\n'
            '[[rules]]\nname = "urgent"\ngroup = "critical"\nmatch = { severity_max = 127 }\n'
            '[[rules]]\nname = "no-debug"\naction = "drop"\nmatch = { levels = ["debug"] }\n'
        )
        distributor = procs.start("serve", "--config", config)
        admin = distributor.ready["admin"]
        wait_until(lambda: all(a["state"] == "up" for a in stats(admin)["analyzers"]), 20, "all up")
        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "60000", "--duration", "3",
            "--connections", "2", "--batch", "500", "--json", "--quiet", ready=False,
        )  # fmt: skip
        assert emitter.wait(60) == 0, emitter.describe()
        sent = emitter.wait_event("summary")["sent"]
        wait_until(lambda: not any(a["in_flight"] or a["queued"] for a in stats(admin)["analyzers"]), 20)
        snapshot = stats(admin)
        delivered = {a["name"]: a["delivered"] for a in snapshot["analyzers"]}
        dropped = snapshot["drops"].get("rule:no-debug", 0)
        assert dropped > 0 and delivered["c1"] > 0, "the load generator mixes every level"
        assert sum(delivered.values()) + dropped == sent, "every message delivered once or dropped by a rule"
        default = delivered["m1"] + delivered["m2"] + delivered["x1"]
        assert abs(delivered["x1"] / default - 0.05) < 0.005, "A/B: 5 % of the unmatched traffic"
        assert abs(delivered["m1"] / default - 0.95 * 0.75) < 0.005
        assert abs(delivered["m2"] / default - 0.95 * 0.25) < 0.005
        assert distributor.terminate() == 0
