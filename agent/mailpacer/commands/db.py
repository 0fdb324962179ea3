"""`mailpacer db upgrade`: create the ledger's schema, or bring it to this version."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from mailpacer.commands import EXIT, UsageError

__all__ = ["run_db_upgrade"]


def run_db_upgrade(db: str, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    from mailpacer.ledger.migrations import SCHEMA_VERSION
    from mailpacer.ledger.store import Ledger, LedgerError

    try:
        ledger = Ledger(db)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    try:
        ledger.check()
        applied: list[dict[str, object]] = []

        def step(number: int, description: str) -> None:
            applied.append({"version": number, "description": description})
            if not as_json:
                out.write(f"applied migration {number}: {description}\n")

        version = ledger.upgrade(on_step=step)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        ledger.dispose()
    if as_json:
        document = {"ledger": ledger.url_text, "version": version, "applied": applied}
        out.write(json.dumps(document, indent=2) + "\n")
    elif not applied:
        out.write(f"ledger {ledger.url_text} is up to date (schema version {version})\n")
    else:
        out.write(f"ledger {ledger.url_text} is now at schema version {SCHEMA_VERSION}\n")
    return EXIT["ok"]
