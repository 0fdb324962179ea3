"""Stream a recipient source into the ledger in batches, counting what was kept and why not.

Reading and validating rows (Python work, holding the GIL) and inserting batches (the
database driver, which releases the GIL while SQLite or the server works) overlap: a
writer thread inserts batch N while this thread prepares batch N + 1. At most
``QUEUE_DEPTH`` batches wait between the two, so memory stays constant whatever the
size of the source.

On SQLite the connections the import uses get a larger page cache and fewer WAL
checkpoints for its duration (:func:`_sqlite_bulk_settings`): a list in random order
touches a random page of the unique address index with every row, and with SQLite's
defaults most of an import's time went to re-reading those pages and checkpointing them.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _escape
from typing import Any

from sqlalchemy import event

from mailpacer.ledger.store import Ledger
from mailpacer.sources.rows import RecipientSourceError, RejectedRow, SourceRow

__all__ = ["MAX_REJECTED_KEPT", "ImportReport", "import_rows"]

MAX_REJECTED_KEPT = 1000  # samples kept for the report; all are counted
QUEUE_DEPTH = 2
# SQLite settings while importing (restored afterwards): 32 MB of page cache (allocated as
# used) instead of 2 MB; a checkpoint every 200 MB of WAL instead of every 4 MB. Each
# checkpoint fsyncs, and with random addresses every batch dirties thousands of index
# pages: with the default, a 400k-row import spent half its time waiting for fsync.
# The WAL is truncated when the import ends.
_BULK_PRAGMAS = {"cache_size": -32768, "wal_autocheckpoint": 50_000}


@dataclass
class ImportReport:
    rows: int = 0  # data rows read (valid or not)
    imported: int = 0  # new recipients in the ledger
    duplicates: int = 0  # valid rows whose address was already there
    rejected: int = 0
    rejected_samples: list[RejectedRow] = field(default_factory=list)
    elapsed: float = 0.0  # seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejected_rows": [{"line": r.line, "reason": r.reason} for r in self.rejected_samples],
            "elapsed_seconds": round(self.elapsed, 3),
        }


class _Writer(threading.Thread):
    """Inserts the batches it is given, in order; remembers the first error."""

    def __init__(self, ledger: Ledger, campaign_id: int, report: ImportReport) -> None:
        super().__init__(name="mailpacer-import-writer", daemon=True)
        self.ledger = ledger
        self.campaign_id = campaign_id
        self.report = report
        self.batches: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.abandon = threading.Event()

    def run(self) -> None:
        while True:
            batch = self.batches.get()
            if batch is None or self.abandon.is_set():
                return
            try:
                inserted = self.ledger.insert_recipients(self.campaign_id, batch)
            except BaseException as exc:
                self.error = exc
                return
            self.report.imported += inserted
            self.report.duplicates += len(batch) - inserted

    def put(self, item: list[dict[str, Any]] | None) -> None:
        """Hand over a batch (None: no more); raise the writer's error if it has failed."""
        while True:
            if self.error is not None:
                raise self.error
            if not self.is_alive():
                return
            try:
                self.batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


class _VariablesEncoder:
    """A row's variables (str keys, str values) as compact JSON, twice as fast as
    json.dumps: the keys are encoded once per column, the values by json's C escaper."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def encode(self, variables: dict[str, str]) -> str:
        keys = self.keys
        try:
            return "{" + ",".join([keys[k] + _escape(v) for k, v in variables.items()]) + "}"
        except KeyError:  # a column not seen yet (sources have a few, always the same)
            if len(keys) > 1000 or not all(isinstance(k, str) for k in variables):
                return self.fallback(variables)
            for k in variables:
                keys.setdefault(k, _escape(k) + ":")
            return self.encode(variables)
        except TypeError:  # not a str value: let json decide
            return self.fallback(variables)


@contextlib.contextmanager
def _sqlite_bulk_settings(ledger: Ledger) -> Iterator[None]:
    """Apply _BULK_PRAGMAS to every connection the ledger hands out meanwhile; restore them.

    Uses SQLAlchemy's pool events on ``ledger.engine`` (the ledger itself is unchanged).
    """
    if ledger.backend != "sqlite":
        yield
        return
    touched: dict[int, tuple[Any, dict[str, int]]] = {}

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if id(dbapi_connection) in touched:
            return
        before = {}
        for name, value in _BULK_PRAGMAS.items():
            before[name] = dbapi_connection.execute(f"PRAGMA {name}").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA {name}={int(value)}")
        touched[id(dbapi_connection)] = (dbapi_connection, before)

    event.listen(ledger.engine, "checkout", on_checkout)
    try:
        yield
    finally:
        event.remove(ledger.engine, "checkout", on_checkout)
        for dbapi_connection, before in touched.values():
            with contextlib.suppress(Exception):  # closed meanwhile: nothing to restore
                for name, value in before.items():
                    dbapi_connection.execute(f"PRAGMA {name}={int(value)}")
                # copy the WAL into the database and give its disk space back (best effort:
                # a reader elsewhere only makes this a partial checkpoint)
                dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def import_rows(
    ledger: Ledger,
    campaign_id: int,
    rows: Iterable[SourceRow | RejectedRow],
    *,
    batch_size: int = 10_000,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Insert valid rows (duplicates dropped by the ledger's unique key); report the rest.

    Errors of the source (e.g. a query whose connection drops) and of the ledger propagate;
    what was inserted before stays (importing again only adds what is missing).
    """
    started = time.monotonic()
    report = ImportReport()
    with _sqlite_bulk_settings(ledger):
        _import(ledger, campaign_id, rows, report, batch_size, progress)
    report.elapsed = time.monotonic() - started
    if progress is not None:
        progress(report)
    return report


def _import(
    ledger: Ledger,
    campaign_id: int,
    rows: Iterable[SourceRow | RejectedRow],
    report: ImportReport,
    batch_size: int,
    progress: Callable[[ImportReport], None] | None,
) -> None:
    samples = report.rejected_samples
    dumps = _VariablesEncoder().encode
    writer = _Writer(ledger, campaign_id, report)
    writer.start()
    batch: list[dict[str, Any]] = []
    rejected = 0
    count = 0
    finished = False
    try:
        try:
            for row in rows:
                count += 1
                if type(row) is RejectedRow:
                    rejected += 1
                    if len(samples) < MAX_REJECTED_KEPT:
                        samples.append(row)
                    continue
                assert isinstance(row, SourceRow)
                address = row.address
                batch.append(
                    {
                        "email": address.address,
                        "email_key": address.key,
                        "source_row": row.line,
                        "variables": dumps(row.variables),
                    }
                )
                if len(batch) >= batch_size:
                    writer.put(batch)
                    batch = []
                    report.rows, report.rejected = count, rejected
                    if progress is not None:
                        progress(report)
        except RecipientSourceError:
            # The source broke (a CRM connection lost...): keep every valid row read before
            # it, so running the import again only adds the rest.
            report.rows, report.rejected = count, rejected
            if batch:
                writer.put(batch)
            writer.put(None)
            writer.join()
            finished = True
            raise
        if batch:
            writer.put(batch)
        writer.put(None)
        writer.join()
        if writer.error is not None:
            raise writer.error
        finished = True
    finally:
        if not finished:  # a ledger error, or Ctrl-C: insert nothing more
            writer.abandon.set()
            if writer.is_alive():
                with contextlib.suppress(queue.Full):  # it checks `abandon` first anyway
                    writer.batches.put_nowait(None)
                writer.join(timeout=30)
        report.rows, report.rejected = count, rejected
