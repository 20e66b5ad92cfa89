"""Operating a running distributor: the admin API and hot reload change it live without losing a message."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from logdist.analyzer.journal import read_journal
from logdist.analyzer.stats import merge_runs, runs_length
from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(180)
TOKEN = "s3cret"


class Admin:
    def __init__(self, address: str, token: str | None = TOKEN) -> None:
        self.base = f"http://{address}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if (token or self.token) is not None:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def delivered(self) -> dict[str, int]:
        return {a["name"]: a["delivered"] for a in self.call("GET", "/v1/analyzers")[1]}

    def analyzer(self, name: str) -> dict[str, Any]:
        return next(a for a in self.call("GET", "/v1/analyzers")[1] if a["name"] == name)


def write_config(path: Path, ports: dict[str, int], weights: dict[str, float]) -> None:
    text = f'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nadmin_token = "{TOKEN}"\n'
    text += "[delivery]\nslow_start_s = 0.5\n"
    for name, weight in weights.items():
        text += f'[[analyzers]]\nname = "{name}"\naddress = "127.0.0.1:{ports[name]}"\nweight = {weight}\n'
    path.write_text(text)


def shares_after(admin: Admin, messages: int) -> dict[str, float]:
    before = admin.delivered()
    wait_until(lambda: sum(admin.delivered().values()) - sum(before.values()) >= messages, 30, "traffic")
    after = admin.delivered()
    total = sum(after.values()) - sum(before.values())
    return {name: (after[name] - before.get(name, 0)) / total for name in after}


def test_admin_api_and_hot_reload_change_routing_live_without_loss(tmp_path: Path) -> None:
    config = tmp_path / "logdist.toml"
    with ProcessGroup() as procs:
        analyzers = {n: procs.analyzer("--journal", tmp_path / f"{n}.journal", name=n) for n in ("a1", "a2", "a3")}
        ports = {name: proc.port for name, proc in analyzers.items()}
        write_config(config, ports, {"a1": 1, "a2": 1})
        distributor = procs.start("serve", "--config", config)
        admin = Admin(distributor.ready["admin"])
        wait_until(lambda: all(a["state"] == "up" for a in admin.call("GET", "/v1/analyzers")[1]), 20, "up")

        assert admin.call("GET", "/v1/analyzers", token="wrong")[0] == 403
        assert Admin(distributor.ready["admin"], token=None).call("GET", "/v1/analyzers")[0] == 401
        assert Admin(distributor.ready["admin"], token=None).call("GET", "/healthz")[0] == 200

        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "25000", "--duration", "14",
            "--connections", "2", "--batch", "250", "--json", "--quiet", ready=False,
        )  # fmt: skip

        # a weight change through the API: 1:3
        status, body = admin.call("PUT", "/v1/analyzers/a2/weight", {"weight": 3})
        assert status == 200 and body["weight"] == 3
        shares = shares_after(admin, 30_000)
        assert abs(shares["a2"] - 0.75) < 0.01, shares
        assert admin.call("PUT", "/v1/analyzers/a2/weight", {"weight": -1})[0] == 400
        assert admin.call("PUT", "/v1/analyzers/nope/weight", {"weight": 1})[0] == 404

        # add an analyzer at runtime
        status, body = admin.call("POST", "/v1/analyzers", {"name": "a3", "address": f"127.0.0.1:{ports['a3']}"})
        assert status == 201, body
        assert admin.call("POST", "/v1/analyzers", {"name": "a3", "address": "127.0.0.1:1"})[0] == 409
        assert admin.call("POST", "/v1/analyzers", {"name": "x", "address": "nowhere"})[0] == 400
        wait_until(lambda: admin.analyzer("a3")["state"] == "up", 10, "a3 up")

        # drain a1: it gets nothing new; restore: it gets its share back
        assert admin.call("POST", "/v1/analyzers/a1/drain")[0] == 200
        assert admin.analyzer("a1")["state"] == "drained"
        wait_until(lambda: not (admin.analyzer("a1")["in_flight"] or admin.analyzer("a1")["queued"]), 10, "a1 idle")
        assert shares_after(admin, 20_000)["a1"] == 0, "what it held completed; nothing new reaches it"
        assert admin.call("POST", "/v1/analyzers/a1/restore")[0] == 200

        # pause ingest: nothing more is accepted until resume
        assert admin.call("POST", "/v1/ingest/pause")[1]["paused"] is True
        wait_until(lambda: admin.call("GET", "/stats")[1]["ingest"]["messages"], 5)
        first = admin.call("GET", "/stats")[1]["ingest"]["messages"]
        wait_until(lambda: not any(a["in_flight"] or a["queued"] for a in admin.call("GET", "/v1/analyzers")[1]), 10)
        assert admin.call("GET", "/stats")[1]["ingest"]["messages"] - first < 30_000, "paused ingest reads little"
        assert admin.call("POST", "/v1/ingest/resume")[1]["paused"] is False

        # remove a3 (drained first)
        assert admin.call("DELETE", "/v1/analyzers/a3")[0] == 200
        assert "a3" not in admin.delivered()

        # hot reload: an invalid file is rejected and the old config stays
        config.write_text(config.read_text().replace("weight = 1\n", "weight = -5\n", 1))
        status, body = admin.call("POST", "/v1/config/reload")
        assert status == 400 and "weight" in body["error"]
        assert {a["name"] for a in admin.call("GET", "/v1/analyzers")[1]} == {"a1", "a2"}
        # a valid change is picked up from the file by itself
        write_config(config, ports, {"a1": 1, "a2": 1, "a3": 2})
        wait_until(lambda: "a3" in admin.delivered(), 10, "reload added a3")
        wait_until(lambda: admin.analyzer("a3")["state"] == "up", 10, "a3 up again")
        shares = shares_after(admin, 20_000)
        assert abs(shares["a3"] - 0.5) < 0.02, shares

        assert emitter.wait(60) == 0, emitter.describe()
        summary = emitter.wait_event("summary")
        wait_until(lambda: not any(a["in_flight"] or a["queued"] for a in admin.call("GET", "/v1/analyzers")[1]), 20)
        lost = 0
        for stream, sent in summary["streams"].items():
            runs = [read_journal(tmp_path / f"{n}.journal").get(stream) for n in analyzers]
            seen = runs_length(merge_runs(__import__("numpy").concatenate([r for r in runs if r is not None])))
            lost += sent - seen
        assert lost == 0
        assert distributor.terminate() == 0
