"""The operator endpoints over real HTTP: hypercorn (mailpacer.http.serve_http) + httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from mailpacer.config import parse_relay_url
from mailpacer.http import HealthState, OperatorApp, serve_http
from mailpacer.metrics import Metrics


@asynccontextmanager
async def running_app(
    health: HealthState | None = None, metrics: Metrics | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the app on a free 127.0.0.1 port; yield a client for it; stop the server."""
    app = OperatorApp(health or HealthState(), metrics or Metrics())
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve_http, app, "127.0.0.1:0"))
        assert len(binds) == 1
        assert binds[0].startswith("http://127.0.0.1:")
        assert not binds[0].endswith(":0")
        async with httpx.AsyncClient(base_url=binds[0], timeout=5) as client:
            yield client
        nursery.cancel_scope.cancel()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition format (fails on malformed output) into {(name, labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_healthz_ok_then_stalled() -> None:
    last_beat = trio.current_time()
    health = HealthState(max_age=10.0)
    health.watch("sender", lambda: last_beat, lambda: {"campaign": "spring", "remaining": 12})
    async with running_app(health) as client:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["status"] == "ok"
        assert body["uptime_seconds"] >= 0
        sender = body["components"]["sender"]
        assert sender["ok"] is True
        assert 0 <= sender["heartbeat_age_seconds"] < 10
        assert (sender["campaign"], sender["remaining"]) == ("spring", 12)

        last_beat = trio.current_time() - 11.0  # the scheduler stopped beating 11 s ago
        response = await client.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "stalled"
        assert body["components"]["sender"]["ok"] is False
        assert 11 <= body["components"]["sender"]["heartbeat_age_seconds"] < 12

        last_beat = trio.current_time()  # beating again: healthy again
        assert (await client.get("/healthz")).status_code == 200

        health.forget("sender")
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json()["components"] == {}


async def test_one_stalled_component_fails_the_whole_check() -> None:
    now = trio.current_time()
    health = HealthState(max_age=2.0)
    health.watch("fresh", lambda: now)
    health.watch("stale", lambda: now - 5)
    async with running_app(health) as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    components = response.json()["components"]
    assert components["fresh"]["ok"] is True
    assert components["stale"]["ok"] is False


async def test_metrics_exposition() -> None:
    metrics = Metrics()
    metrics.messages.labels("spring", "sent").inc(5)
    metrics.messages.labels("spring", "bounced").inc()
    for seconds in (0.003, 0.2, 0.2, 45.0):
        metrics.transaction_seconds.observe(seconds)
    metrics.in_flight.set(7)
    metrics.send_rate.set(42.5)
    metrics.rate_limiter_wait.inc(1.25)
    metrics.campaign_remaining.labels("spring").set(994)
    metrics.campaign_eta_seconds.labels("spring").set(-1)
    async with running_app(metrics=metrics) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert "# TYPE mailpacer_messages_total counter" in text
    assert "# TYPE mailpacer_smtp_transaction_seconds histogram" in text
    values = samples(text)
    assert values[("mailpacer_messages_total", (("campaign", "spring"), ("result", "sent")))] == 5
    assert (
        values[("mailpacer_messages_total", (("campaign", "spring"), ("result", "bounced")))] == 1
    )

    def bucket(le: str) -> float:
        return values[("mailpacer_smtp_transaction_seconds_bucket", (("le", le),))]

    assert bucket("0.001") == 0
    assert bucket("0.005") == 1
    assert bucket("0.25") == 3
    assert bucket("30.0") == 3
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 4
    assert values[("mailpacer_smtp_transaction_seconds_count", ())] == 4
    assert values[("mailpacer_smtp_transaction_seconds_sum", ())] == pytest.approx(45.403)
    assert values[("mailpacer_messages_in_flight", ())] == 7
    assert values[("mailpacer_send_rate_messages_per_second", ())] == 42.5
    assert values[("mailpacer_rate_limiter_wait_seconds_total", ())] == 1.25
    assert values[("mailpacer_campaign_remaining_recipients", (("campaign", "spring"),))] == 994
    assert values[("mailpacer_campaign_eta_seconds", (("campaign", "spring"),))] == -1


async def test_metrics_never_show_a_relay_password() -> None:
    """Relay labels come from RelayConfig.name, which masks the password."""
    metrics = Metrics()
    for url in (
        "smtps://mailer:secret@relay.example:465",
        "smtp+starttls://mailer%40corp:top%2Fsecret@relay2.example?verify=false",
    ):
        relay = parse_relay_url(url)
        metrics.connections.labels(relay.name).inc()
        metrics.connect_failures.labels(relay.name).inc()
    async with running_app(metrics=metrics) as client:
        text = (await client.get("/metrics")).text
    assert "secret" not in text
    values = samples(text)
    label = (("relay", "smtps://mailer:***@relay.example:465"),)
    assert values[("mailpacer_smtp_connections", label)] == 1
    assert values[("mailpacer_smtp_connect_failures_total", label)] == 1
    label = (("relay", "smtp+starttls://mailer@corp:***@relay2.example:587"),)
    assert values[("mailpacer_smtp_connections", label)] == 1


async def test_unknown_path_and_method() -> None:
    async with running_app() as client:
        response = await client.get("/nope")
        assert response.status_code == 404
        assert response.json() == {"error": "no such endpoint: /nope"}
        assert (await client.post("/healthz", content=b"x")).status_code == 405
        assert (await client.get("/healthz/")).status_code == 404
        head = await client.head("/healthz")
        assert head.status_code == 200
        assert head.content == b""
        # The server still answers after all that, on the same keep-alive connection.
        assert (await client.get("/metrics")).status_code == 200


async def test_oversized_request_is_refused_and_server_survives() -> None:
    async with running_app() as client:
        response = await client.get("/healthz", headers={"X-Big": "x" * 64 * 1024})
        assert response.status_code == 431  # Request Header Fields Too Large
        assert (await client.get("/healthz")).status_code == 200
