"""A small ASGI app for operators: /healthz, /readyz and /metrics, answered from memory only;
``/api/v1/...`` is handed to the control API (:mod:`mailpacer.http.api`) and
``/unsubscribe/...`` to the one-click endpoint (:mod:`mailpacer.http.unsubscribe`) when
the agent has them."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailpacer.asgi import Receive, Scope, Send, serve_lifespan
from mailpacer.http.api import PREFIX, ControlApi
from mailpacer.http.health import HealthState
from mailpacer.http.readiness import Readiness, watch_event_loop
from mailpacer.http.unsubscribe import PATH_PREFIX, UnsubscribeEndpoint
from mailpacer.metrics import Metrics

__all__ = ["OperatorApp"]


class OperatorApp:
    """ASGI 3 application. Never touches the database, so it answers while the DB hangs
    (the control API's ledger calls run in worker threads)."""

    def __init__(
        self,
        health: HealthState,
        metrics: Metrics,
        readiness: Readiness | None = None,
        api: ControlApi | None = None,
        unsubscribe: UnsubscribeEndpoint | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.readiness = readiness
        self.api = api
        self.unsubscribe = unsubscribe

    async def run_monitors(self) -> None:
        """Background probes that keep the in-memory state fresh (serve_http runs this)."""
        if self.readiness is not None:
            await self.readiness.run()
        else:
            await watch_event_loop(self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == PREFIX or path.startswith(PREFIX + "/"):
            if self.api is None:
                await _json(send, 404, {"error": "the control API is disabled"})
            else:
                await self.api(scope, receive, send)
        elif path.startswith(PATH_PREFIX):
            if self.unsubscribe is None:
                await _json(send, 404, {"error": "unsubscribe links are not configured"})
            else:
                await self.unsubscribe(scope, receive, send)
        elif scope["method"] not in ("GET", "HEAD"):
            await _json(send, 405, {"error": "method not allowed"})
        elif path == "/healthz":
            ok, body = self.health.liveness()
            await _json(send, 200 if ok else 503, body)
        elif path == "/readyz":
            if self.readiness is None:
                ready, body = True, {"status": "ready", "components": {}}
            else:
                ready, body = self.readiness.check()
            live, liveness = self.health.liveness()
            body["components"]["heartbeats"] = {"ok": live, **liveness["components"]}
            ready = ready and live
            if not ready:
                body["status"] = "not ready"
            await _json(send, 200 if ready else 503, body)
        elif path == "/metrics":
            payload = generate_latest(self.metrics.registry)
            await _reply(send, 200, payload, CONTENT_TYPE_LATEST)
        else:
            await _json(send, 404, {"error": f"no such endpoint: {path}"})


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    await _reply(send, status, json.dumps(body).encode() + b"\n", "application/json")


async def _reply(send: Send, status: int, payload: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
