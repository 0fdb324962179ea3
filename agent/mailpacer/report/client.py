"""POST one signed report to the main server with httpx; every outcome is an ``Attempt``.

Expected network trouble (refused, reset, TLS, timeouts, 1-byte-per-second answers,
redirects, garbage) never raises: it becomes a failed ``Attempt`` with a one-line reason
that never contains the signing secret.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from mailpacer.report.config import ReportConfig
from mailpacer.report.protocol import encode

__all__ = ["Attempt", "ReportClient", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    status: int | None = None
    retry_after: float | None = None
    reason: str = ""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _endpoint(url: str) -> str:
    """The URL without user info or query, for log lines."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class ReportClient:
    """``async with ReportClient(config) as client: attempt = await client.post(document)``."""

    def __init__(self, config: ReportConfig, *, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.endpoint = _endpoint(config.url)
        verify: ssl.SSLContext | bool
        if isinstance(config.verify_tls, str):
            verify = ssl.create_default_context(cafile=config.verify_tls)
        else:
            verify = config.verify_tls
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.write_timeout,
                pool=config.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=config.max_in_flight,
                max_keepalive_connections=config.max_in_flight,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            verify=verify,
            trust_env=False,
            transport=transport,
            headers={"User-Agent": "mailpacer-reporter/1"},
        )

    async def __aenter__(self) -> ReportClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    async def post(self, document: Mapping[str, Any]) -> Attempt:
        """Sign and send; ``ok`` only for a 2xx that acknowledges this idempotency key."""
        now = time.time()
        # A fresh sent_at makes every attempt's bytes (and signature) unique, so a retry is
        # never mistaken for a replay.
        document = {**document, "sent_at": now}
        encoded = encode(
            document,
            secret=self.config.secret,
            timestamp=now,
            gzip_min=self.config.gzip_min_bytes,
        )
        attempt: Attempt | None = None
        with trio.move_on_after(self.config.request_deadline):
            attempt = await self._post(encoded.body, encoded.headers, document)
        if attempt is None:
            return Attempt(
                False, reason=f"no complete answer within {self.config.request_deadline:g} s"
            )
        return attempt

    async def _post(
        self, body: bytes, headers: dict[str, str], document: Mapping[str, Any]
    ) -> Attempt:
        try:
            request = self._http.build_request(
                "POST", self.config.url, content=body, headers=headers
            )
            response = await self._http.send(request, stream=True)
            try:
                answer = await self._read_capped(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            return Attempt(False, reason=f"timeout ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return Attempt(False, reason=_transport_reason(exc))
        status = response.status_code
        if 300 <= status < 400:
            where = urlsplit(response.headers.get("location", "")).hostname or "?"
            return Attempt(False, status, reason=f"HTTP {status} redirect to {where} not followed")
        if status in (401, 403):
            return Attempt(
                False,
                status,
                reason=f"HTTP {status}: signature rejected; check report.secret on both sides",
            )
        if status in (429, 503):
            retry = parse_retry_after(response.headers.get("retry-after"))
            return Attempt(False, status, retry_after=retry, reason=f"HTTP {status}")
        if not 200 <= status < 300:
            return Attempt(False, status, reason=f"HTTP {status}")
        if answer is None:
            return Attempt(False, status, reason=f"HTTP {status} with an oversized answer")
        try:
            ack = json.loads(answer)
        except ValueError:
            ack = None
        if not isinstance(ack, dict) or ack.get("idempotency_key") != document["idempotency_key"]:
            return Attempt(
                False, status, reason=f"HTTP {status} without an acknowledgement (garbage answer)"
            )
        return Attempt(True, status)

    async def _read_capped(self, response: httpx.Response) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.config.max_response_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


def _transport_reason(exc: httpx.TransportError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {getattr(cause, 'reason', None) or cause}"
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
