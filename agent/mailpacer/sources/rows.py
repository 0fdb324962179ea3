"""What every recipient source yields, and the checks every source applies to its rows.

A source (CSV file, SQL query) has named columns, one of them ``email``; each of its rows
becomes a :class:`SourceRow` (a valid address plus its template variables) or a
:class:`RejectedRow` (why it cannot be used, and where it was: the line of a CSV file,
the row number in a query's result set). A rejected row never stops an import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailpacer.message.address import Address, InvalidAddress, parse_address

__all__ = [
    "MAX_ROW_BYTES",
    "RecipientSource",
    "RecipientSourceError",
    "RejectedRow",
    "RowChecker",
    "SourceRow",
    "check_columns",
]

MAX_ROW_BYTES = 64 * 1024  # one recipient's data; a CSV line or a query row


class RecipientSourceError(Exception):
    """The source as a whole is unusable (missing file, no email column, query failed)."""


@dataclass(frozen=True, slots=True)
class SourceRow:
    line: int  # CSV: physical line where the row starts; SQL: row number in the result set
    address: Address
    variables: dict[str, str]


@dataclass(frozen=True, slots=True)
class RejectedRow:
    line: int
    reason: str


class RecipientSource(Protocol):
    """What `mailpacer send` needs from a source of recipients."""

    columns: list[str]
    #: how a position is named in reports: "line" (CSV) or "row" (query result)
    unit: str
    #: shown to the operator and stored with the campaign (no password in it)
    description: str

    def fingerprint(self) -> str:
        """Changes when the source changes: an unchanged source is not imported twice."""
        ...

    def __iter__(self) -> Iterator[SourceRow | RejectedRow]: ...


def check_columns(names: Sequence[str], where: str, what: str) -> list[str]:
    """Column names, stripped, with the one called email (any case) renamed ``email``.

    Raises RecipientSourceError (``"{where}: ... {what} ..."``) when a name is empty,
    repeated (ignoring case) or not valid UTF-8, or when no column is called email.
    """
    columns = [name.strip() for name in names]
    for position, name in enumerate(columns, 1):
        if not name:
            raise RecipientSourceError(f"{where}: column {position} has no name")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise RecipientSourceError(f"{where}: {what} is not valid UTF-8") from None
    lowered = [c.lower() for c in columns]
    duplicates = sorted(name for name, n in Counter(lowered).items() if n > 1)
    if duplicates:
        raise RecipientSourceError(
            f"{where}: duplicate column name(s) in {what}: {', '.join(duplicates)}"
        )
    if "email" not in lowered:
        raise RecipientSourceError(
            f"{where}: no 'email' column in {what} (found: {', '.join(columns)[:300]})"
        )
    columns[lowered.index("email")] = "email"
    return columns


class RowChecker:
    """Turns one row of text values into a SourceRow or a RejectedRow.

    The values must be as many as the columns. Invalid UTF-8 (lone surrogates from a
    ``surrogateescape`` decoder), NUL bytes and bad addresses are rejected; the address
    is normalized (IDNA domain, lowercase domain) in the variables too, as it will be sent.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self.email_index = self.columns.index("email")

    def check(self, position: int, values: Sequence[str]) -> SourceRow | RejectedRow:
        joined = "\x1f".join(values)
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            return RejectedRow(position, "invalid UTF-8")
        if "\x00" in joined:  # the csv module (3.11+) lets NUL through
            return RejectedRow(position, "NUL byte in a field")
        try:
            address = parse_address(values[self.email_index])
        except InvalidAddress as exc:
            return RejectedRow(position, f"invalid address: {exc}")
        variables = dict(zip(self.columns, values, strict=True))
        variables["email"] = address.address
        return SourceRow(position, address, variables)
