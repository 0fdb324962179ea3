"""The reference receiver: what a customer's main server does with mailpacer's reports.

``ReceiverApp`` (ASGI) checks the signature and its timestamp before anything else, refuses
replays, inflates gzip with a bound, validates the document and stores every event once by
``(source, seq)`` in SQLite (``ReceiverStore``). ``mailpacer report-receiver`` serves it with
hypercorn's Trio worker. Nothing here ever prints or returns the secret.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from mailpacer.asgi import Receive, Scope, Send, serve_lifespan
from mailpacer.report.protocol import PROTOCOL_VERSION, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

__all__ = ["ReceiverApp", "ReceiverStore", "StoreResult", "serve_receiver"]


PATH = "/v1/progress"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    campaign_id INTEGER,
    campaign TEXT,
    recipient_id INTEGER,
    created_at REAL,
    data TEXT NOT NULL,
    received_at REAL NOT NULL,
    request_key TEXT NOT NULL,
    PRIMARY KEY (source, seq)
);
CREATE TABLE IF NOT EXISTS requests (
    idempotency_key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    first_seq INTEGER,
    last_seq INTEGER,
    events INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT,
    per_minute REAL,
    counters TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, name)
);
CREATE TABLE IF NOT EXISTS signatures (
    signature TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoreResult:
    new: int
    duplicates: int
    repeated_request: bool


class Rejected(Exception):
    """A request refused with ``status``; the message is safe to show and log."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReceiverStore:
    """Idempotent storage in one SQLite file; blocking, so the app calls it on one thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self.limiter = trio.CapacityLimiter(1)

    def close(self) -> None:
        self._db.close()

    def remember_signature(self, signature: str, *, now: float, tolerance: float) -> bool:
        """False if this exact signature was seen within the tolerance window (a replay)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM signatures WHERE seen_at < ?", (now - 2 * tolerance,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO signatures (signature, seen_at) VALUES (?, ?)",
                (signature, now),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cursor.rowcount == 1

    def store(self, document: Mapping[str, Any], *, now: float) -> StoreResult:
        source = document["source"]
        key = document["idempotency_key"]
        sequence = document.get("sequence") or {}
        events = document["events"]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            repeated = (
                db.execute(
                    "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                    (key, source, sequence.get("first"), sequence.get("last"), len(events), now),
                ).rowcount
                == 0
            )
            new = 0
            for e in events:
                new += db.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        source, e["seq"], e["type"], e.get("campaign_id"), e.get("campaign"),
                        e.get("recipient_id"), e.get("created_at"),
                        json.dumps(e.get("data") or {}, sort_keys=True), now, key,
                    ),
                ).rowcount  # fmt: skip
            for c in document["campaigns"]:
                db.execute(
                    "INSERT OR REPLACE INTO campaigns VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        source, c["name"], c.get("status"), c.get("per_minute"),
                        json.dumps(c.get("counters") or {}, sort_keys=True), now,
                    ),
                )  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return StoreResult(new, len(events) - new, repeated)

    def event_seqs(self, source: str) -> list[int]:
        rows = self._db.execute(
            "SELECT seq FROM events WHERE source = ? ORDER BY received_at, rowid", (source,)
        )
        return [r[0] for r in rows]

    def events(self, source: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT seq, type, campaign, recipient_id, data FROM events WHERE source = ? "
            "ORDER BY seq",
            (source,),
        )
        return [
            {"seq": s, "type": t, "campaign": c, "recipient_id": r, "data": json.loads(d)}
            for s, t, c, r, d in rows
        ]

    def counters(self, source: str) -> dict[str, dict[str, int]]:
        rows = self._db.execute("SELECT name, counters FROM campaigns WHERE source = ?", (source,))
        return {name: json.loads(counters) for name, counters in rows}


class ReceiverApp:
    """ASGI 3 app answering ``POST /v1/progress``."""

    def __init__(
        self,
        secret: bytes,
        store: ReceiverStore,
        *,
        tolerance: float = 300.0,
        max_body: int = 8 * 1024 * 1024,
        max_inflated: int = 64 * 1024 * 1024,
        on_progress: Callable[[str], None] | None = None,
        path: str = PATH,
    ) -> None:
        self._secret = secret
        self.store = store
        self.tolerance = tolerance
        self.max_body = max_body
        self.max_inflated = max_inflated
        self.on_progress = on_progress or (lambda line: None)
        self.path = path
        self.accepted = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"ReceiverApp(path={self.path!r}, store={str(self.store.path)!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        client = (scope.get("client") or ("?", 0))[0]
        try:
            if scope["path"] != self.path:
                raise Rejected(404, f"no such endpoint: {scope['path'][:100]}")
            if scope["method"] != "POST":
                raise Rejected(405, "method not allowed: use POST")
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            body = await self._read_body(receive, headers)
            answer = await self._handle(headers, body)
        except Rejected as exc:
            self.rejected += 1
            self.on_progress(f"rejected a request from {client}: {exc} (HTTP {exc.status})")
            await _json(send, exc.status, {"error": str(exc)})
            return
        self.accepted += 1
        await _json(send, 200, answer)

    async def _read_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise Rejected(413, f"body of {int(length):,} bytes is over {self.max_body:,}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Rejected(400, "client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise Rejected(413, f"body over {self.max_body:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _handle(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        stamp = headers.get(TIMESTAMP_HEADER.lower(), "")
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        if not stamp or not signature:
            raise Rejected(
                401, f"unsigned request: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} required"
            )
        if not stamp.isdigit():
            raise Rejected(401, f"{TIMESTAMP_HEADER} must be UNIX seconds")
        now = time.time()
        if abs(now - int(stamp)) > self.tolerance:
            raise Rejected(
                401,
                f"stale timestamp ({int(now) - int(stamp):+d} s; tolerance {self.tolerance:g} s)",
            )
        if not verify(self._secret, stamp, body, signature):
            raise Rejected(401, "bad signature: the agent and the receiver have different secrets")
        fresh = await trio.to_thread.run_sync(
            lambda: self.store.remember_signature(signature, now=now, tolerance=self.tolerance),
            limiter=self.store.limiter,
        )
        if not fresh:
            raise Rejected(409, "replayed request (this signature was already used)")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            body = self._inflate(body)
        elif encoding not in ("", "identity"):
            raise Rejected(415, f"unsupported Content-Encoding {encoding[:40]!r}")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Rejected(400, "body is not JSON") from None
        problem = check_document(document)
        if problem:
            raise Rejected(400, f"invalid report: {problem}")
        result = await trio.to_thread.run_sync(
            lambda: self.store.store(document, now=now), limiter=self.store.limiter
        )
        self.on_progress(_progress_line(document, result))
        return {
            "idempotency_key": document["idempotency_key"],
            "accepted": result.new,
            "duplicates": result.duplicates,
        }

    def _inflate(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(body, self.max_inflated)
            if inflater.unconsumed_tail:
                raise Rejected(413, f"inflated body over {self.max_inflated:,} bytes")
            out += inflater.flush()
        except zlib.error:
            raise Rejected(400, "body is not valid gzip") from None
        if not inflater.eof:
            raise Rejected(400, "body is truncated gzip")
        return out


def check_document(doc: Any) -> str | None:
    """What is wrong with a report document, or None (the checks of the JSON Schema that
    matter for storing it; docs/report-protocol.schema.json is the full contract)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("protocol") != PROTOCOL_VERSION:
        return f"protocol must be {PROTOCOL_VERSION}"
    for key in ("source", "idempotency_key"):
        if not isinstance(doc.get(key), str) or not doc[key] or len(doc[key]) > 200:
            return f"{key} must be a non-empty string"
    events, campaigns = doc.get("events"), doc.get("campaigns")
    if not isinstance(events, list) or not isinstance(campaigns, list):
        return "events and campaigns must be arrays"
    sequence = doc.get("sequence")
    first: Any = None
    last: Any = None
    if sequence is not None:
        if not isinstance(sequence, dict):
            return "sequence must be an object or null"
        first, last = sequence.get("first"), sequence.get("last")
        if not (_is_int(first) and _is_int(last) and 1 <= first <= last):
            return "sequence.first and sequence.last must be integers, 1 <= first <= last"
    elif events:
        return "events without a sequence range"
    for i, e in enumerate(events):
        if (
            not isinstance(e, dict)
            or not _is_int(e.get("seq"))
            or not isinstance(e.get("type"), str)
        ):
            return f"events[{i}] needs an integer seq and a string type"
        if first is not None and last is not None and not first <= e["seq"] <= last:
            return f"events[{i}].seq {e['seq']} is outside the sequence range"
        if "data" in e and not isinstance(e["data"], dict):
            return f"events[{i}].data must be an object"
    for i, c in enumerate(campaigns):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return f"campaigns[{i}] needs a string name"
        if not isinstance(c.get("counters", {}), dict):
            return f"campaigns[{i}].counters must be an object"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _progress_line(doc: Mapping[str, Any], result: StoreResult) -> str:
    seq = doc.get("sequence")
    where = f"seq {seq['first']}-{seq['last']}" if seq else "counters only"
    line = f"{doc['source']} {where}: {result.new:,} new events, {result.duplicates:,} duplicates"
    if result.repeated_request:
        line += " (a retried request)"
    for c in doc["campaigns"][:5]:
        counts = " ".join(f"{k} {v:,}" for k, v in sorted(c.get("counters", {}).items()))
        line += f" | {c['name']} {c.get('status') or ''} {counts}".rstrip()
    return line


async def _json(send: Send, status: int, body: Mapping[str, Any]) -> None:
    payload = json.dumps(body).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def serve_receiver(
    app: ReceiverApp,
    bind: str,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` (``host:port``, port 0 picks one) until cancelled;
    ``task_status.started`` gets the bound URLs."""
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("mailpacer.report.receiver")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    config.h11_max_incomplete_size = 16 * 1024
    if certfile:
        config.certfile = certfile
        config.keyfile = keyfile
    await serve(app, config, mode="asgi", task_status=task_status)  # type: ignore[arg-type]
