"""Where recipients come from, and how they get into the ledger.

``sql`` (the CRM query source) is not imported here: it pulls in SQLAlchemy's MySQL
dialect, which a CSV import does not need.
"""

from mailpacer.sources.csvfile import CsvRecipients, file_fingerprint
from mailpacer.sources.importer import ImportReport, import_rows
from mailpacer.sources.rows import (
    RecipientSource,
    RecipientSourceError,
    RejectedRow,
    RowChecker,
    SourceRow,
    check_columns,
)

__all__ = [
    "CsvRecipients",
    "ImportReport",
    "RecipientSource",
    "RecipientSourceError",
    "RejectedRow",
    "RowChecker",
    "SourceRow",
    "check_columns",
    "file_fingerprint",
    "import_rows",
]
