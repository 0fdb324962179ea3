"""The control API under ``/api/v1``: campaigns and suppressions over HTTP, for scripts.

A small ASGI app that :class:`~mailpacer.http.app.OperatorApp` hands every ``/api/v1/...``
request to. It shares the CLI's logic (:mod:`mailpacer.campaigns`), so a pause through the
API is exactly ``mailpacer campaign pause``.

- **Auth**: ``Authorization: Bearer <token>``, compared in constant time with the agent's
  read-write token and its read-only token (``[api] token_file`` / ``read_token_file``).
  No token or a wrong one: 401 with ``WWW-Authenticate: Bearer``; the read-only token on a
  write: 403. With no token configured the API answers 404 (disabled); ``/healthz`` and
  ``/metrics`` are not part of it and stay open. Tokens are never logged.
- **Never blocks the event loop**: every ledger call runs in a worker thread (the
  AsyncLedger's limiter; a campaign's import in a thread of its own, one at a time).
- **Bad input** is a 4xx with ``{"error": "..."}`` and nothing changed: 400 (bad JSON or
  field, a template the list does not fit), 404, 405, 409 (state conflict, name taken),
  413 (JSON over ``max_json`` bytes, upload over ``max_upload``), 415 (content type).
  Recipients are streamed to a temporary file, never held in memory.
- The OpenAPI 3.1 description is at ``/api/v1/openapi.json`` (:mod:`mailpacer.http.openapi`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import trio

from mailpacer.asgi import Message, Receive, Scope, Send
from mailpacer.campaign_spec import CampaignSpec, CampaignSpecError
from mailpacer.campaigns import (
    RETRYABLE,
    CampaignConflict,
    CampaignError,
    CampaignInvalid,
    CampaignNotFound,
    campaign_document,
    change_status,
    create_campaign,
    requeue,
)
from mailpacer.http.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_boundary,
    parse_content_type,
)
from mailpacer.ledger.states import CampaignState
from mailpacer.ledger.store import Campaign, Ledger, LedgerError
from mailpacer.ledger.threaded import AsyncLedger, is_outage
from mailpacer.sources.rows import RecipientSourceError

__all__ = ["MAX_JSON", "MAX_UPLOAD", "PREFIX", "ROUTES", "ControlApi", "Route"]

log = logging.getLogger("mailpacer.api")

PREFIX = "/api/v1"
MAX_JSON = 1024 * 1024  # a JSON body or the spec part of an upload
MAX_UPLOAD = 64 * 1024 * 1024  # the recipients CSV of one create (default)
MAX_PAGE = 1000  # suppressions per page


CSV_TYPES = {
    None,
    "text/csv",
    "text/plain",
    "application/csv",
    "application/octet-stream",
    "application/vnd.ms-excel",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _Disconnected(Exception):
    """The client went away before its request body was complete."""


DRAIN_BYTES = 8 * 1024 * 1024  # what is read and dropped to answer an early error cleanly
DRAIN_SECONDS = 5.0


class _BodyTracker:
    """Remembers whether the request body has been read to its end.

    A request refused before its body was read (401, 413, 415...) gets its answer after the
    rest of the body is read and dropped (up to ``DRAIN_BYTES``), so that the client, still
    sending, reads the answer instead of a reset connection; beyond that the answer says
    ``Connection: close``."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
        return message

    async def drain(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > DRAIN_BYTES:
            return False
        dropped = 0
        with trio.move_on_after(DRAIN_SECONDS):
            while not self.complete and dropped <= DRAIN_BYTES:
                dropped += len((await self.receive()).get("body", b""))
        return self.complete


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # under PREFIX; ``{name}`` matches one path segment
    handler: str  # ControlApi method name
    write: bool  # needs the read-write token
    auth: bool = True

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = self.path.strip("/").split("/")
        if len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}"):
                if not segment:
                    return None
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", "openapi", write=False, auth=False),
    Route("GET", "/campaigns", "list_campaigns", write=False),
    Route("POST", "/campaigns", "create", write=True),
    Route("GET", "/campaigns/{name}", "get_campaign", write=False),
    Route("POST", "/campaigns/{name}/pause", "pause", write=True),
    Route("POST", "/campaigns/{name}/resume", "resume", write=True),
    Route("POST", "/campaigns/{name}/cancel", "cancel", write=True),
    Route("POST", "/campaigns/{name}/retry", "retry", write=True),
    Route("POST", "/campaigns/{name}/resolve-uncertain", "resolve_uncertain", write=True),
    Route("GET", "/suppressions", "list_suppressions", write=False),
    Route("POST", "/suppressions", "add_suppression", write=True),
    Route("GET", "/suppressions/{value}", "get_suppression", write=False),
    Route("DELETE", "/suppressions/{value}", "delete_suppression", write=True),
)


@dataclass
class Request:
    scope: Scope
    receive: Receive
    params: dict[str, str]
    headers: dict[str, str]
    query: dict[str, list[str]]


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


# CLI option names in the spec's messages, as the API calls the fields.
_FIELD_NAMES = (
    ("--template DIR", "template"),
    ("--message FILE.eml", "message"),
    ("--dkim-key FILE", "dkim_key"),
    ("--dkim-selector NAME", "dkim_selector"),
    ("--guard-bounce-rate", "guard_bounce_rate"),
    ("--guard-deferral-rate", "guard_deferral_rate"),
    ("--dkim-", "dkim_"),
    ("--name", "name"),
    ("--from", "from"),
    ("--rate", "rate"),
    ("--burst", "burst"),
)


def _api_words(message: str) -> str:
    for option, name in _FIELD_NAMES:
        message = message.replace(option, name)
    message = message.replace("run the same command again", "send the same request again")
    return message.replace("run the command again", "send the request again")


class ControlApi:
    """The ``/api/v1`` ASGI app. ``wake`` is called after a change that gives the agents
    work (a created or resumed campaign, a retry): the agent polls soon, still at most four
    times a minute."""

    def __init__(
        self,
        ledger: AsyncLedger,
        *,
        token: str | None,
        read_token: str | None = None,
        wake: Callable[[], None] | None = None,
        max_json: int = MAX_JSON,
        max_upload: int = MAX_UPLOAD,
        upload_dir: Path | None = None,
        file_roots: Sequence[Path] = (),
    ) -> None:
        """``file_roots``: the only directories a created campaign's template, message and
        DKIM key may come from (none: the API creates no campaign), so a token holder
        cannot have any readable file of the host mailed out."""
        self.ledger = ledger
        self._token = token.encode() if token else None
        self._read_token = read_token.encode() if read_token else None
        self.wake = wake
        self.max_json = max_json
        self.max_upload = max_upload
        self.upload_dir = upload_dir
        self.file_roots = tuple(Path(r).resolve() for r in file_roots)
        self._creating = trio.CapacityLimiter(1)  # one import at a time, beside the limiter

    def _check_files(self, spec: CampaignSpec) -> None:
        if (spec.template is None) == (spec.message is None):
            return  # refused as a bad request before any file is read
        for key, path in (
            ("template", spec.template),
            ("message", spec.message),
            ("dkim_key", spec.dkim_key),
        ):
            if path is None:
                continue
            if not self.file_roots:
                raise ApiError(
                    403,
                    f"{key}: this agent allows no files to campaigns created through the API "
                    "(set [api].file_roots)",
                )
            resolved = path.resolve()
            if not any(resolved.is_relative_to(root) for root in self.file_roots):
                raise ApiError(
                    403, f"{key}: {str(path)!r} is outside the directories in [api].file_roots"
                )

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._read_token is not None

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = _BodyTracker(receive)
        try:
            response = await self._handle(scope, body.receive)
        except _Disconnected:
            return
        except ApiError as exc:
            response = Response(exc.status, {"error": exc.message}, exc.headers)
            if not body.complete and not await body.drain(scope):
                # Too much left to read: answer now and close, rather than read it all.
                response.headers["connection"] = "close"
        await _send_json(send, response)

    async def _handle(self, scope: Scope, receive: Receive) -> Response:
        if not self.enabled:
            raise ApiError(404, "the control API is disabled: set [api] token_file")
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        rest = path[len(PREFIX) :] if path.startswith(PREFIX) else path
        try:
            segments = [unquote(s, errors="strict") for s in rest.strip("/").split("/")]
        except UnicodeDecodeError:
            raise ApiError(400, "the path is not valid UTF-8 once percent-decoded") from None
        method = scope["method"]
        candidates = [(r, p) for r in ROUTES if (p := r.match(segments)) is not None]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        public = bool(candidates) and all(not r.auth for r, _ in candidates)
        role = None if public else self._authorize(headers.get("authorization"))
        if not candidates:
            raise ApiError(404, f"no such endpoint: {path}")
        chosen = [(r, p) for r, p in candidates if r.method == method]
        if not chosen:
            allowed = ", ".join(sorted({r.method for r, _ in candidates}))
            raise ApiError(
                405, f"{method} not allowed here (allowed: {allowed})", {"allow": allowed}
            )
        route, params = chosen[0]
        if route.write and role != "write":
            raise ApiError(403, "this token may only read; a write needs the read-write token")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        request = Request(scope, receive, params, headers, query)
        handler: Callable[[Request], Awaitable[Response]] = getattr(self, route.handler)
        try:
            return await handler(request)
        except (ApiError, _Disconnected):
            raise
        except CampaignNotFound as exc:
            raise ApiError(404, f"no campaign named {exc.name!r}") from None
        except CampaignConflict as exc:
            raise ApiError(409, self._clean(exc)) from None
        except CampaignError as exc:
            raise ApiError(400, self._clean(exc)) from None
        except Exception as exc:
            if is_outage(exc):
                raise ApiError(
                    503, "the ledger database is unavailable; try again", {"retry-after": "15"}
                ) from None
            log.exception(
                "control API: %s %s failed", method, route.path, extra={"event": "api.error"}
            )
            raise ApiError(500, "internal error (the agent's log has the details)") from None

    def _clean(self, exc: Exception) -> str:
        """An operator's message without the ledger's URL (the API's clients need not see it)."""
        text = str(exc).replace(f" in {self.ledger.sync.url_text}", "")
        return _api_words(text)

    def _authorize(self, value: str | None) -> str:
        """``"write"`` or ``"read"``; ApiError(401) for no token or a wrong one. Both tokens
        are compared, in constant time, whatever is presented."""
        challenge = {"www-authenticate": 'Bearer realm="mailpacer"'}
        if not value:
            raise ApiError(401, "missing bearer token (Authorization: Bearer TOKEN)", challenge)
        scheme, _, credentials = value.strip().partition(" ")
        presented = credentials.strip().encode("latin-1")
        write = hmac.compare_digest(presented, self._token or b"\0" * 32)
        read = hmac.compare_digest(presented, self._read_token or b"\0" * 32)
        ok_write = write and self._token is not None and scheme.lower() == "bearer"
        ok_read = read and self._read_token is not None and scheme.lower() == "bearer"
        if ok_write:
            return "write"
        if ok_read:
            return "read"
        challenge["www-authenticate"] += ', error="invalid_token"'
        raise ApiError(401, "invalid bearer token", challenge)

    # -- request bodies ----------------------------------------------------------------

    async def _body_chunks(self, request: Request, limit: int) -> list[bytes]:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "bad Content-Length")
            if int(length) > limit:
                raise ApiError(413, f"request body too large (at most {limit:,} bytes)")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise ApiError(413, f"request body too large (at most {limit:,} bytes)")
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                return chunks

    async def _json_body(self, request: Request, *, required: bool) -> dict[str, Any]:
        ctype = request.headers.get("content-type")
        main = parse_content_type(ctype)[0] if ctype else None
        if main is not None and main != "application/json":
            raise ApiError(415, f"expected application/json, not {main}")
        body = b"".join(await self._body_chunks(request, self.max_json))
        if not body.strip():
            if required:
                raise ApiError(400, "a JSON object is required in the body")
            return {}
        if main is None:
            raise ApiError(415, "expected Content-Type: application/json")
        return _parse_object(body, "the body")

    # -- campaigns ---------------------------------------------------------------------

    async def openapi(self, request: Request) -> Response:
        from mailpacer.http.openapi import OPENAPI

        return Response(200, OPENAPI)

    def _document(self, ledger: Ledger, campaign: Campaign) -> dict[str, Any]:
        document = campaign_document(ledger, campaign)
        document["note"] = campaign.note
        return document

    async def list_campaigns(self, request: Request) -> Response:
        def documents(ledger: Ledger) -> list[dict[str, Any]]:
            return [self._document(ledger, c) for c in ledger.list_campaigns()]

        return Response(200, {"campaigns": await self.ledger.run(documents, self.ledger.sync)})

    async def get_campaign(self, request: Request) -> Response:
        name = request.params["name"]

        def document(ledger: Ledger) -> dict[str, Any]:
            return self._document(ledger, _find(ledger, name))

        return Response(200, await self.ledger.run(document, self.ledger.sync))

    async def _status(self, request: Request, action: str) -> Response:
        await self._json_body(request, required=False)
        name = request.params["name"]

        def act(ledger: Ledger) -> dict[str, Any]:
            return self._document(ledger, change_status(ledger, _find(ledger, name), action))

        document = await self.ledger.run(act, self.ledger.sync)
        if action == "resume":
            self._wake()
        return Response(200, document)

    async def pause(self, request: Request) -> Response:
        return await self._status(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._status(request, "resume")

    async def cancel(self, request: Request) -> Response:
        return await self._status(request, "cancel")

    async def retry(self, request: Request) -> Response:
        body = await self._json_body(request, required=True)
        _only(body, {"states", "emails"})
        states = body.get("states")
        if (
            not isinstance(states, list)
            or not states
            or not all(isinstance(s, str) and s in RETRYABLE for s in states)
        ):
            raise ApiError(400, f"states: a non-empty list of {', '.join(RETRYABLE)}")
        return await self._requeue(request, body, states=list(dict.fromkeys(states)))

    async def resolve_uncertain(self, request: Request) -> Response:
        body = await self._json_body(request, required=True)
        _only(body, {"resolution", "emails"})
        resolution = body.get("resolution")
        if resolution not in ("resend", "mark-sent"):
            raise ApiError(400, 'resolution: "resend" or "mark-sent"')
        return await self._requeue(request, body, resolution=str(resolution))

    async def _requeue(
        self,
        request: Request,
        body: dict[str, Any],
        *,
        states: list[str] | None = None,
        resolution: str | None = None,
    ) -> Response:
        emails = body.get("emails")
        if emails is not None and not (
            isinstance(emails, list)
            and 0 < len(emails) <= 10_000
            and all(isinstance(e, str) and e.strip() for e in emails)
        ):
            raise ApiError(400, "emails: a list of 1 to 10,000 addresses")
        name = request.params["name"]

        def act(ledger: Ledger) -> dict[str, Any]:
            result = requeue(
                ledger,
                _find(ledger, name),
                states=states or (),
                resolution=resolution,
                emails=emails,
            )
            document = self._document(ledger, result.campaign)
            document["changed"] = result.changed
            return document

        document = await self.ledger.run(act, self.ledger.sync)
        if resolution != "mark-sent" and sum(document["changed"].values()):
            self._wake()
        return Response(200, document)

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    async def create(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        boundary = parse_boundary(ctype) if ctype else None
        if boundary is None:
            raise ApiError(
                415,
                "POST /api/v1/campaigns takes multipart/form-data with a 'spec' part "
                "(JSON) and a 'recipients' part (CSV)",
            )
        length = request.headers.get("content-length")
        overall = self.max_upload + self.max_json + 64 * 1024
        if length is not None and length.isdigit() and int(length) > overall:
            raise ApiError(413, f"upload too large (recipients: at most {self.max_upload:,} bytes)")
        upload = await trio.to_thread.run_sync(_upload_file, self.upload_dir)
        try:
            spec_bytes, filename = await self._receive_upload(request, boundary, upload)
            spec, paused = _spec_from_json(_parse_object(spec_bytes, "the 'spec' part"))
            self._check_files(spec)
            created = await self._create(spec, upload, filename, paused)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(partial(upload.unlink, missing_ok=True))
        if not paused:
            self._wake()
        return Response(201, created, {"location": f"{PREFIX}/campaigns/{quote(spec.name, '')}"})

    async def _receive_upload(
        self, request: Request, boundary: bytes, upload: Path
    ) -> tuple[bytes, str]:
        """Stream the multipart body: the spec into memory (bounded), the recipients into
        ``upload``. Returns the spec's bytes and the CSV's file name."""
        parser = MultipartParser(boundary)
        spec: bytearray | None = None
        csv_size: int | None = None
        filename = "recipients.csv"
        current: str | None = None
        seen: set[str] = set()
        async with await trio.open_file(upload, "wb") as out:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                try:
                    events = parser.feed(message.get("body", b""))
                except MultipartError as exc:
                    raise ApiError(400, f"bad multipart body: {exc}") from None
                for event in events:
                    if isinstance(event, PartStart):
                        if event.name not in ("spec", "recipients"):
                            raise ApiError(
                                400, f"unexpected part {event.name!r} (expected spec, recipients)"
                            )
                        if event.name in seen:
                            raise ApiError(400, f"part {event.name!r} given twice")
                        seen.add(event.name)
                        current = event.name
                        if current == "spec":
                            if event.content_type not in (None, "application/json", "text/plain"):
                                raise ApiError(
                                    415,
                                    f"the 'spec' part must be application/json, not "
                                    f"{event.content_type}",
                                )
                            spec = bytearray()
                        else:
                            if event.content_type not in CSV_TYPES:
                                raise ApiError(
                                    415,
                                    f"the 'recipients' part must be text/csv, not "
                                    f"{event.content_type}",
                                )
                            filename = event.filename or filename
                            csv_size = 0
                    elif isinstance(event, PartData):
                        if current == "spec":
                            assert spec is not None
                            spec += event.data
                            if len(spec) > self.max_json:
                                raise ApiError(
                                    413, f"the 'spec' part is over {self.max_json:,} bytes"
                                )
                        else:
                            assert csv_size is not None
                            csv_size += len(event.data)
                            if csv_size > self.max_upload:
                                raise ApiError(
                                    413,
                                    f"the recipients upload is over {self.max_upload:,} bytes",
                                )
                            await out.write(event.data)
                    elif isinstance(event, PartEnd):
                        current = None
                if not message.get("more_body", False):
                    break
        try:
            parser.close()
        except MultipartError as exc:
            raise ApiError(400, f"bad multipart body: {exc}") from None
        if spec is None:
            raise ApiError(400, "the 'spec' part (JSON) is missing")
        if csv_size is None:
            raise ApiError(400, "the 'recipients' part (CSV) is missing")
        return bytes(spec), filename

    async def _create(
        self, spec: CampaignSpec, upload: Path, filename: str, paused: bool
    ) -> dict[str, Any]:
        ledger = self.ledger.sync
        shown = f"the uploaded list {filename!r}"

        def build() -> dict[str, Any]:
            from mailpacer.sources.csvfile import CsvRecipients

            try:
                spec.check()
                source = CsvRecipients(upload)
                source.description = shown
                created = create_campaign(
                    ledger,
                    spec,
                    source,
                    source_text=f"uploaded through the control API ({filename})",
                    paused=paused,
                )
            except CampaignSpecError as exc:
                raise CampaignInvalid(str(exc)) from None
            except RecipientSourceError as exc:
                raise CampaignInvalid(str(exc).replace(str(upload), shown)) from None
            except LedgerError as exc:  # the name was taken a moment ago by another creator
                raise CampaignConflict(str(exc)) from None
            except CampaignError as exc:
                exc.args = (str(exc).replace(str(upload), shown),)
                raise
            document = self._document(ledger, created.campaign)
            document["recipients"] = created.total
            document["import"] = created.report.as_dict()
            return document

        # The import may take a minute: a thread of its own, so that the running
        # campaigns' ledger calls (the AsyncLedger's limiter) never wait behind it.
        started = time.monotonic()
        document = await trio.to_thread.run_sync(build, limiter=self._creating)
        log.info(
            "control API: campaign %s created (%d recipients, %.1f s)",
            spec.name,
            document["recipients"],
            time.monotonic() - started,
            extra={"event": "api.campaign_created", "campaign": spec.name},
        )
        return document

    # -- suppressions ------------------------------------------------------------------

    async def list_suppressions(self, request: Request) -> Response:
        unknown = set(request.query) - {"after", "limit", "kind"}
        if unknown:
            raise ApiError(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        after = _int_query(request.query, "after", 0, 0, 2**62)
        limit = _int_query(request.query, "limit", 100, 1, MAX_PAGE)
        kind = request.query.get("kind", [None])[-1]
        if kind not in (None, "address", "domain"):
            raise ApiError(400, "kind: address or domain")

        def page(ledger: Ledger) -> dict[str, Any]:
            items = ledger.list_suppressions(after=after, limit=limit, kind=kind)
            return {
                "suppressions": items,
                "total": ledger.count_suppressions(kind=kind),
                "next_after": items[-1]["id"] if len(items) == limit else None,
            }

        return Response(200, await self.ledger.run(page, self.ledger.sync))

    async def add_suppression(self, request: Request) -> Response:
        body = await self._json_body(request, required=True)
        _only(body, {"value", "reason", "source"})
        value = body.get("value")
        if not isinstance(value, str) or not value.strip() or len(value) > 320:
            raise ApiError(400, "value: an address (a@example.com) or a domain (example.com)")
        reason = _optional_str(body, "reason", 1000)
        source = _optional_str(body, "source", 200) or "api"

        def add(ledger: Ledger) -> tuple[bool, dict[str, Any] | None, int]:
            now = time.time()
            created = ledger.add_suppression(value, reason=reason, source=source, now=now)
            applied = 0
            live = (CampaignState.READY, CampaignState.RUNNING, CampaignState.PAUSED)
            for campaign in ledger.list_campaigns():
                if campaign.status in {s.value for s in live}:
                    applied += ledger.apply_suppressions(campaign.id, now=now)
            return created, ledger.find_suppression(value), applied

        try:
            created, entry, applied = await self.ledger.run(add, self.ledger.sync)
        except LedgerError as exc:
            raise ApiError(400, str(exc)) from None
        body = {"suppression": entry, "created": created, "recipients_suppressed": applied}
        return Response(201 if created else 200, body)

    async def get_suppression(self, request: Request) -> Response:
        value = request.params["value"]
        try:
            entry = await self.ledger.run(self.ledger.sync.find_suppression, value)
        except LedgerError as exc:
            raise ApiError(400, str(exc)) from None
        if entry is None:
            raise ApiError(404, f"{value!r} is not on the suppression list")
        return Response(200, {"suppression": entry})

    async def delete_suppression(self, request: Request) -> Response:
        value = request.params["value"]

        def delete(ledger: Ledger) -> dict[str, Any] | None:
            entry = ledger.find_suppression(value)
            if entry is not None and not ledger.remove_suppression(value):
                entry = None  # removed by someone else in between
            return entry

        try:
            entry = await self.ledger.run(delete, self.ledger.sync)
        except LedgerError as exc:
            raise ApiError(400, str(exc)) from None
        if entry is None:
            raise ApiError(404, f"{value!r} is not on the suppression list")
        return Response(200, {"deleted": entry})


# -- helpers ---------------------------------------------------------------------------------


def _upload_file(directory: Path | None) -> Path:
    """A new private temporary file for an upload (mode 0600), in ``directory``."""
    fd, name = tempfile.mkstemp(prefix="mailpacer-upload-", suffix=".csv", dir=directory)
    os.close(fd)
    return Path(name)


def _find(ledger: Ledger, name: str) -> Campaign:
    campaign = ledger.campaign_by_name(name)
    if campaign is None:
        raise CampaignNotFound(name, f"no campaign named {name!r}")
    return campaign


def _parse_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return value


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})",
        )


def _optional_str(body: Mapping[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or re.search(r"[\r\n\0]", value):
        raise ApiError(400, f"{key}: a string of at most {limit} characters on one line")
    return value


def _int_query(query: Mapping[str, list[str]], key: str, default: int, low: int, high: int) -> int:
    values = query.get(key)
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{key}: an integer from {low} to {high}")
    return int(text)


SPEC_FIELDS = {
    "name",
    "from",
    "template",
    "message",
    "rate",
    "burst",
    "unsubscribe_url",
    "dkim_key",
    "dkim_selector",
    "dkim_domain",
    "guard_bounce_rate",
    "guard_deferral_rate",
    "paused",
    "pacing",
}


def _spec_from_json(body: dict[str, Any]) -> tuple[CampaignSpec, bool]:
    """The create request's ``spec`` part -> (CampaignSpec, paused); ApiError(400) naming
    the field otherwise. Paths are the agent host's, and must be absolute."""
    _only(body, SPEC_FIELDS)

    def text(key: str, *, required: bool = False) -> str | None:
        value = body.get(key)
        if value is None:
            if required:
                raise ApiError(400, f"{key}: required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, f"{key}: a non-empty string")
        return value

    def path(key: str) -> Path | None:
        value = text(key)
        if value is None:
            return None
        if not os.path.isabs(value):
            raise ApiError(400, f"{key}: an absolute path on the agent's host")
        return Path(value)

    def share(key: str, default: float) -> float:
        value = body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ApiError(400, f"{key}: a number from 0 to 1 (0 = off)")
        return float(value)

    burst = body.get("burst", 1)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ApiError(400, "burst: an integer, at least 1")
    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        raise ApiError(400, "paused: true or false")
    pacing = body.get("pacing")
    if pacing is not None and not isinstance(pacing, dict):
        raise ApiError(400, "pacing: an object (see docs/pacing.md), or null")
    name = text("name", required=True)
    sender = text("from", required=True)
    assert name is not None
    assert sender is not None
    spec = CampaignSpec(
        name=name.strip(),
        sender=sender,
        template=path("template"),
        message=path("message"),
        rate=text("rate"),
        burst=burst,
        unsubscribe_url=text("unsubscribe_url"),
        dkim_key=path("dkim_key"),
        dkim_selector=text("dkim_selector"),
        dkim_domain=text("dkim_domain"),
        guard_bounce_rate=share("guard_bounce_rate", 0.05),
        guard_deferral_rate=share("guard_deferral_rate", 0.30),
        pacing=pacing,
    )
    return spec, paused


async def _send_json(send: Send, response: Response) -> None:
    payload = json.dumps(response.body, indent=None, default=str).encode() + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
