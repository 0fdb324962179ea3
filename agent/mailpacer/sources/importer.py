"""Stream a recipient source into the ledger in batches, counting what was kept and why not."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mailpacer.ledger.store import Ledger
from mailpacer.sources.csvfile import RejectedRow, SourceRow

__all__ = ["ImportReport", "import_rows"]

MAX_REJECTED_KEPT = 1000


@dataclass
class ImportReport:
    rows: int = 0  # data rows read (valid or not)
    imported: int = 0  # new recipients in the ledger
    duplicates: int = 0  # valid rows whose address was already there
    rejected: int = 0
    rejected_samples: list[RejectedRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejected_rows": [{"line": r.line, "reason": r.reason} for r in self.rejected_samples],
        }


def import_rows(
    ledger: Ledger,
    campaign_id: int,
    rows: Iterable[SourceRow | RejectedRow],
    *,
    batch_size: int = 5000,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Insert valid rows (duplicates dropped by the ledger's unique key); report the rest."""
    report = ImportReport()
    batch: list[dict[str, Any]] = []
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def flush() -> None:
        inserted = ledger.insert_recipients(campaign_id, batch)
        report.imported += inserted
        report.duplicates += len(batch) - inserted
        batch.clear()
        if progress is not None:
            progress(report)

    for row in rows:
        if isinstance(row, RejectedRow):
            report.rows += 1
            report.rejected += 1
            if len(report.rejected_samples) < MAX_REJECTED_KEPT:
                report.rejected_samples.append(row)
            continue
        report.rows += 1
        batch.append(
            {
                "email": row.address.address,
                "email_key": row.address.key,
                "source_row": row.line,
                "variables": dumps(row.variables),
            }
        )
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return report
