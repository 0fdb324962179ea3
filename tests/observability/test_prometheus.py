"""A real Prometheus server scrapes a running ``mailpacer send --http`` every second; the
agent's series are read back through Prometheus's HTTP API; ``promtool check metrics`` passes
on a real scrape; the alert rules load into the server."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import (
    Running,
    free_port,
    need_prometheus,
    need_promtool,
    start_sender,
    stop,
    wait_until,
)

ALERTS = Path(__file__).resolve().parents[2] / "templates" / "prometheus" / "alerts.yml"


@pytest.fixture
def sender(tmp_path: Path, sink: Running) -> Iterator[Running]:
    running = start_sender(
        tmp_path, f"smtp://{sink.address}", f"sqlite:///{tmp_path / 'ledger.db'}",
        recipients=2_000, rate="20/s",
    )  # fmt: skip
    try:
        yield running
    finally:
        running.process.send_signal(signal.SIGINT)
        running.close()


def test_promtool_check_metrics_on_a_real_scrape(sender: Running) -> None:
    with httpx.Client(base_url=sender.url, timeout=5) as client:
        wait_until(lambda: 'result="sent"' in client.get("/metrics").text, 30, "sent")
        wait_until(lambda: "mailpacer_database_up 1.0" in client.get("/metrics").text, 10, "db")
        text = client.get("/metrics").text
    for family in ("mailpacer_messages_total", "mailpacer_event_loop_lag_seconds_bucket",
                   "mailpacer_ledger_backlog_recipients", "mailpacer_relay_breaker_state",
                   "mailpacer_host_nofile_limit", "mailpacer_host_tcp_congestion_control_info",
                   "mailpacer_disk_free_bytes", "mailpacer_database_probe_seconds"):  # fmt: skip
        assert family in text, family
    done = subprocess.run([need_promtool(), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    print(f"promtool check metrics: rc={done.returncode} {done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_agent_and_serves_its_series(
    tmp_path: Path, sender: Running
) -> None:
    prometheus = need_prometheus()
    port = free_port()
    rules = tmp_path / "alerts.yml"
    shutil.copy(ALERTS, rules)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: mailpacer\n    static_configs:\n"
        f"      - targets: ['{sender.address}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        with httpx.Client(timeout=5) as client:

            def query(expr: str) -> list[dict[str, Any]]:
                body = client.get(f"{api}/query", params={"query": expr}).json()
                assert body["status"] == "success", body
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            def value(expr: str) -> float:
                return float(query(expr)[0]["value"][1])

            def sent_series() -> bool:
                return bool(query('mailpacer_messages_total{job="mailpacer",result="sent"}'))

            wait_until(sent_series, 60, "mailpacer_messages_total in Prometheus")
            first = float(query('mailpacer_messages_total{result="sent"}')[0]["value"][1])
            wait_until(
                lambda: (
                    float(query('mailpacer_messages_total{result="sent"}')[0]["value"][1])
                    > first + 20
                ),
                30,
                "the counter to grow in Prometheus",
            )
            series = query('mailpacer_messages_total{result="sent"}')[0]
            labels = series["metric"]
            print(f"\nPrometheus read back: {labels} = {series['value']}")
            assert labels["job"] == "mailpacer"
            assert labels["instance"] == sender.address
            assert labels["campaign"] == "template-list"
            assert query('up{job="mailpacer"}')[0]["value"][1] == "1"
            rate = query('rate(mailpacer_messages_total{result="sent"}[10s])')
            assert rate, "no rate"
            assert 0 < float(rate[0]["value"][1]) < 40, rate  # paced at 20/s
            # more families round-trip, and the alert rules are loaded and healthy
            for name in (
                "mailpacer_ledger_backlog_recipients",
                "mailpacer_database_up",
                "mailpacer_relay_breaker_state",
                "mailpacer_host_nofile_limit",
            ):
                assert query(name), name
            groups = client.get(f"{api}/rules").json()["data"]["groups"]
            names = {r["name"]: r["health"] for g in groups for r in g["rules"]}
            assert "MailpacerCampaignStalled" in names
            assert len(names) == 7
            wait_until(
                lambda: all(
                    r["health"] == "ok"
                    for g in client.get(f"{api}/rules").json()["data"]["groups"]
                    for r in g["rules"]
                ),
                15,
                "rules evaluated",
            )
            firing = client.get(f"{api}/alerts").json()["data"]["alerts"]
            assert [a for a in firing if a["state"] == "firing"] == [], firing
    finally:
        stop(server)
        log.close()
