"""Operator HTTP endpoints (hypercorn's Trio worker + a small ASGI app)."""

from mailpacer.http.app import OperatorApp
from mailpacer.http.health import HealthState
from mailpacer.http.server import serve_http

__all__ = ["HealthState", "OperatorApp", "serve_http"]
