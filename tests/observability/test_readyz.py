"""/readyz over real HTTP (hypercorn + httpx): per-component JSON, 503 when not ready."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import trio

from mailpacer.hoststate import read_host_state
from mailpacer.http import HealthState, OperatorApp, serve_http
from mailpacer.http.readiness import Readiness
from mailpacer.metrics import Metrics


async def readyz(app: OperatorApp, waits: float = 0.3) -> httpx.Response:
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve_http, app, "127.0.0.1:0"))
        await trio.sleep(waits)  # the background probes run once
        async with httpx.AsyncClient(base_url=binds[0], timeout=5) as client:
            response = await client.get("/readyz")
        nursery.cancel_scope.cancel()
    return response


async def test_ready_with_sqlite_and_a_closed_breaker(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.relays.register("smtp://relay.example:25")
    readiness = Readiness.for_ledger(metrics, f"sqlite:///{tmp_path / 'l.db'}")
    response = await readyz(OperatorApp(HealthState(), metrics, readiness))
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert body["components"]["database"]["ok"] is True
    assert body["components"]["relays"]["relays"]["smtp://relay.example:25"]["breaker"] == "closed"
    assert body["components"]["data_dir"]["path"] == str(tmp_path)


async def test_unreachable_database_and_open_breaker_make_it_503(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.relays.register("smtp://a:25")
    metrics.relays.report("smtp://a:25", "open", "5 connect failures")
    readiness = Readiness(
        metrics, database_url="mysql+pymysql://root:Secret-1@127.0.0.1:1/x", db_timeout=1.0
    )
    response = await readyz(OperatorApp(HealthState(), metrics, readiness), waits=1.2)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["components"]["database"]["ok"] is False
    assert "Secret-1" not in response.text
    assert body["components"]["relays"]["ok"] is False
    assert body["components"]["relays"]["relays"]["smtp://a:25"]["detail"] == "5 connect failures"


def test_host_state_reads_tuning_json_and_detects_drift(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net/ipv4").mkdir(parents=True)
    (proc / "net/ipv4/tcp_congestion_control").write_text("cubic\n")
    (proc / "net/ipv4/tcp_rmem").write_text("4096\t131072\t16777216\n")
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"profile": "gentle", "sysctl": {"keys": {
        "applied": {"net.ipv4.tcp_congestion_control": "bbr",
                    "net.ipv4.tcp_rmem": "4096 131072 16777216"},
        "skipped": {"vm.swappiness": "EROFS"}, "unsupported": {"net.core.default_qdisc": "no fq"},
    }}}))  # fmt: skip
    state = read_host_state(tuning, tmp_path, proc)
    assert state.congestion_control == "cubic"
    assert state.tuning_profile == "gentle"
    assert state.tuning_counts == {"applied": 2, "skipped": 1, "unsupported": 1,
                                   "not_applicable": 0}  # fmt: skip
    assert [c.key for c in state.drifted] == ["net.ipv4.tcp_congestion_control"]
    tuning.write_text("{not json")
    assert read_host_state(tuning, tmp_path, proc).tuning_error
