"""A control API served for real (hypercorn's Trio worker on 127.0.0.1:0) over a SQLite
ledger, and an httpx client for it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from mailpacer.http import HealthState, OperatorApp, serve_http
from mailpacer.http.api import ControlApi
from mailpacer.ledger import AsyncLedger, Ledger
from mailpacer.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "welcome"
WRITE = "w-" + "s3cret-write-token-0123456789"
READ = "r-" + "s3cret-read-token-9876543210"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csv_bytes(count: int, *, prefix: str = "r", columns: bool = True) -> bytes:
    header = "email,first_name,last_name,city,member_id\n" if columns else "email,member_id\n"
    rows = "".join(
        f"{prefix}{i:05d}@example.net,Ana,Test{i},Porto,M-{i}\n"
        if columns
        else f"{prefix}{i:05d}@example.net,M-{i}\n"
        for i in range(count)
    )
    return (header + rows).encode()


def spec(name: str = "spring", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "from": "News <news@example.com>",
        "template": str(TEMPLATE),
        "rate": "300/min",
        **extra,
    }


def upload(spec_doc: dict[str, Any] | str, recipients: bytes | None) -> dict[str, Any]:
    files: dict[str, Any] = {
        "spec": (None, spec_doc if isinstance(spec_doc, str) else json.dumps(spec_doc),
                 "application/json"),
    }  # fmt: skip
    if recipients is not None:
        files["recipients"] = ("list.csv", recipients, "text/csv")
    return files


@dataclass
class Served:
    client: httpx.AsyncClient  # base URL .../api/v1, the read-write token
    root: str  # http://127.0.0.1:PORT
    ledger: Ledger
    api: ControlApi | None
    uploads: Path
    wakes: list[float] = field(default_factory=list)


@asynccontextmanager
async def served(
    tmp_path: Path,
    *,
    token: str | None = WRITE,
    read_token: str | None = READ,
    api: bool = True,
    **limits: Any,
) -> AsyncIterator[Served]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    wakes: list[float] = []
    control = (
        ControlApi(
            AsyncLedger(ledger),
            token=token,
            read_token=read_token,
            wake=lambda: wakes.append(trio.current_time()),
            upload_dir=uploads,
            file_roots=limits.pop("file_roots", (TEMPLATE.parent, tmp_path)),
            **limits,
        )
        if api
        else None
    )
    app = OperatorApp(HealthState(), Metrics(), api=control)
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(serve_http, app, "127.0.0.1:0"))
            async with httpx.AsyncClient(
                base_url=binds[0] + "/api/v1/", timeout=20, headers=auth(WRITE)
            ) as client:
                yield Served(client, binds[0], ledger, control, uploads, wakes)
            nursery.cancel_scope.cancel()
    finally:
        ledger.dispose()
