"""Where recipients come from, and how they get into the ledger."""

from mailpacer.sources.csvfile import (
    CsvRecipients,
    RecipientSourceError,
    RejectedRow,
    SourceRow,
    file_fingerprint,
)
from mailpacer.sources.importer import ImportReport, import_rows

__all__ = [
    "CsvRecipients",
    "ImportReport",
    "RecipientSourceError",
    "RejectedRow",
    "SourceRow",
    "file_fingerprint",
    "import_rows",
]
