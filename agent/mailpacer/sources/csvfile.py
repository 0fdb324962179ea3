"""Recipients from a CSV file, streamed in constant memory, every bad row reported by line.

The header row is required and must have an ``email`` column; every other column becomes
a template variable. Rows that cannot be used (bad address, wrong number of fields,
invalid UTF-8, over-long lines, NUL bytes) are reported with their line number and
skipped - they never stop the import.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mailpacer.sources.rows import (
    MAX_ROW_BYTES,
    RecipientSourceError,
    RejectedRow,
    RowChecker,
    SourceRow,
    check_columns,
)

__all__ = [
    "CsvRecipients",
    "RecipientSourceError",
    "RejectedRow",
    "SourceRow",
    "file_fingerprint",
]

MAX_LINE = MAX_ROW_BYTES
csv.field_size_limit(MAX_LINE)


def file_fingerprint(path: Path) -> str:
    """SHA-256 of the file: an unchanged list is not imported twice on resume."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise RecipientSourceError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return digest.hexdigest()


@dataclass
class _LineReader:
    """Feeds csv.reader physical lines, cutting any line longer than MAX_LINE."""

    handle: IO[str]
    rejected: list[RejectedRow] = field(default_factory=list)
    line: int = 0

    def __iter__(self) -> Iterator[str]:
        readline = self.handle.readline
        while True:
            text = readline(MAX_LINE + 1)
            if not text:
                return
            self.line += 1
            if len(text) > MAX_LINE and not text.endswith("\n"):
                while True:  # skip the rest of this physical line without keeping it
                    rest = readline(MAX_LINE)
                    if not rest or rest.endswith("\n"):
                        break
                self.rejected.append(RejectedRow(self.line, f"line longer than {MAX_LINE} bytes"))
                yield "\n"
                continue
            yield text


class CsvRecipients:
    """Iterate a CSV file's rows as :class:`SourceRow` or :class:`RejectedRow`."""

    unit = "line"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)
        if not path.exists():
            raise RecipientSourceError(f"recipient file {str(path)!r} does not exist")
        if not path.is_file():
            raise RecipientSourceError(f"recipient file {str(path)!r} is not a regular file")
        try:
            with path.open("rb") as probe:
                probe.read(1)
        except OSError as exc:
            raise RecipientSourceError(
                f"cannot read recipient file {str(path)!r}: {exc.strerror or exc}"
            ) from None
        self.columns = self._read_header()

    def fingerprint(self) -> str:
        return file_fingerprint(self.path)

    def _open(self) -> IO[str]:
        # surrogateescape: invalid UTF-8 reaches us as lone surrogates and is reported per
        # row instead of aborting the whole file.
        return self.path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")

    def _read_header(self) -> list[str]:
        with self._open() as handle:
            lines = _LineReader(handle)
            reader = csv.reader(lines)
            try:
                header = next(reader, None)
            except csv.Error as exc:
                raise RecipientSourceError(f"{self.path}: cannot parse the header: {exc}") from None
        if not header or not any(h.strip() for h in header):
            raise RecipientSourceError(
                f"{self.path}: empty file or no header row (the first line must name the "
                "columns, one of them 'email')"
            )
        return check_columns(header, str(self.path), "the header")

    def __iter__(self) -> Iterator[SourceRow | RejectedRow]:
        columns = self.columns
        width = len(columns)
        check = RowChecker(columns).check
        with self._open() as handle:
            lines = _LineReader(handle)
            reader = csv.reader(lines)
            try:
                next(reader)  # header, validated already
            except (csv.Error, StopIteration):
                return
            while True:
                start_line = lines.line + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    yield RejectedRow(lines.line, f"unparseable CSV: {exc}")
                    continue
                if lines.rejected:
                    yield from lines.rejected
                    lines.rejected.clear()
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != width:
                    yield RejectedRow(start_line, f"{len(row)} fields where the header has {width}")
                    continue
                yield check(start_line, row)
            if lines.rejected:
                yield from lines.rejected
                lines.rejected.clear()
