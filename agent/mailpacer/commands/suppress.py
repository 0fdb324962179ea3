"""`mailpacer suppress add | remove | list | import`: the suppression list.

A listed address (``a@example.org``) or domain (``example.org``) is never mailed: recipients
on the list become *suppressed* before rendering (at the start of a run and every minute).
Hard bounces and DSNs add addresses by themselves; this is for unsubscribes, complaints and
lists from elsewhere.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mailpacer.commands import EXIT, UsageError

__all__ = ["SuppressOptions", "run_suppress"]


@dataclass
class SuppressOptions:
    action: str  # add | remove | list | import
    db: str
    values: tuple[str, ...] = ()
    reason: str | None = None
    source: str | None = None
    file: Path | None = None
    limit: int = 100
    after: int = 0
    as_json: bool = False


def run_suppress(opts: SuppressOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    from mailpacer.commands.campaign import open_ledger
    from mailpacer.ledger.store import LedgerError

    ledger = open_ledger(opts.db, create=opts.action in ("add", "import"))
    try:
        if opts.action == "add":
            return _add(ledger, opts, out)
        if opts.action == "remove":
            removed = {v: ledger.remove_suppression(v) for v in opts.values}
            if opts.as_json:
                out.write(json.dumps({"removed": removed}, indent=2) + "\n")
            for value, done in removed.items():
                if not opts.as_json:
                    out.write(f"{value}: {'removed' if done else 'was not listed'}\n")
            return EXIT["ok"] if all(removed.values()) else EXIT["attention"]
        if opts.action == "list":
            rows = ledger.list_suppressions(after=opts.after, limit=opts.limit)
            if opts.as_json:
                page: dict[str, Any] = {
                    "suppressions": rows,
                    "total": ledger.count_suppressions(),
                    "next_after": rows[-1]["id"] if len(rows) == opts.limit else None,
                }
                out.write(json.dumps(page, indent=2) + "\n")
                return EXIT["ok"]
            for row in rows:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created_at"]))
                out.write(
                    f"{row['id']:>8}  {row['kind']:<7}  {row['value']}  ({when}, "
                    f"{row['source'] or '-'}: {row['reason'] or '-'})\n"
                )
            if len(rows) == opts.limit:
                out.write(f"... more: --after {rows[-1]['id']}\n")
            return EXIT["ok"]
        if opts.action == "import":
            return _import(ledger, opts, out, err)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        ledger.dispose()
    raise UsageError(f"unknown suppress action {opts.action!r}")


def _add(ledger: Any, opts: SuppressOptions, out: TextIO) -> int:
    now = time.time()
    added = {
        v: ledger.add_suppression(v, reason=opts.reason, source=opts.source or "operator", now=now)
        for v in opts.values
    }
    if opts.as_json:
        out.write(json.dumps({"added": added}, indent=2) + "\n")
    else:
        for value, new in added.items():
            out.write(f"{value}: {'suppressed' if new else 'already listed'}\n")
    return EXIT["ok"]


def _import(ledger: Any, opts: SuppressOptions, out: TextIO, err: TextIO) -> int:
    """One address or domain per line (or a CSV whose first column holds them; a header
    row ``email`` / ``value`` is skipped). Bad lines are reported and skipped."""
    from mailpacer.ledger.store import LedgerError

    assert opts.file is not None
    source = opts.source or f"import:{opts.file.name}"
    added = already = 0
    bad: list[str] = []
    now = time.time()
    try:
        handle = opts.file.open(newline="", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {str(opts.file)!r}: {exc.strerror}") from None
    with handle:
        for number, row in enumerate(csv.reader(handle), 1):
            value = row[0].strip() if row else ""
            if not value or value.startswith("#"):
                continue
            if number == 1 and value.lower() in ("email", "value", "address", "domain"):
                continue
            try:
                new = ledger.add_suppression(value, reason=opts.reason, source=source, now=now)
            except LedgerError as exc:
                bad.append(f"line {number}: {exc}")
                continue
            added += new
            already += not new
    document = {"added": added, "already_listed": already, "rejected": len(bad)}
    if opts.as_json:
        out.write(json.dumps({**document, "rejected_lines": bad[:100]}, indent=2) + "\n")
    else:
        out.write(
            f"{added:,} added, {already:,} already listed, {len(bad):,} lines rejected "
            f"from {opts.file}\n"
        )
        for line in bad[:20]:
            err.write(f"  {line}\n")
    return EXIT["ok"] if not bad else EXIT["attention"]
