"""Recipients from a query against a separate CRM database (MySQL/MariaDB through PyMySQL).

``SqlRecipients("mysql+pymysql://user:pass@host/crm", "SELECT email, first_name FROM ...")``
streams the result with a server-side cursor (PyMySQL's ``SSUnbufferedCursor``): rows
arrive as they are read, so a million-row result costs no more memory than ten. The
query's column names become template variables, one of them must be ``email``; each row
is checked like a CSV row and a bad one is reported with its row number in the result set.

The query is read-only by construction: before anything else it is checked as a derived
table (``SELECT * FROM (<query>) ... LIMIT 0``, which only a single SELECT passes, and
which names its columns without reading any row), then it runs inside ``START
TRANSACTION READ ONLY``. Every failure (bad URL, unreachable server, wrong password,
syntax error, unknown table, connection lost mid-stream) is a RecipientSourceError in one
line that never contains the password.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mailpacer.sources.rows import (
    MAX_ROW_BYTES,
    RecipientSourceError,
    RejectedRow,
    RowChecker,
    SourceRow,
    check_columns,
)

__all__ = ["SqlRecipients"]

_SCHEMES = {"mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"}
_OPTIONS = {"charset", "unix_socket"}


def _mask(text: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """PyMySQL errors as 'message (MySQL error N)'; never the password (it is not in them)."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{_one_line(args[1])} (MySQL error {args[0]})"
    return _one_line(f"{type(exc).__name__}: {exc}")


def _text(value: Any) -> str:
    """A column value as template text: NULL is empty, bytes are decoded (bad UTF-8 kept
    as surrogates, so that the row checker rejects it), the rest is ``str()``."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


class SqlRecipients:
    """Iterate a query's rows as :class:`SourceRow` or :class:`RejectedRow`."""

    unit = "row"

    def __init__(
        self,
        url: str,
        query: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
    ) -> None:
        self.url_text = _mask(url)
        self.url = self._parse_url(url)
        self.url_text = self.url.render_as_string(hide_password=True)
        self.query = query.strip().rstrip(";").strip()
        if not self.query:
            raise RecipientSourceError("--query is empty: give a SELECT with an 'email' column")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.description = f"{self.url_text} (query)"
        self.columns = self._probe()

    def _parse_url(self, url: str) -> URL:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:
            detail = f" ({_one_line(str(exc))})" if isinstance(exc, ValueError) else ""
            raise RecipientSourceError(
                f"invalid CRM database URL {self.url_text!r}{detail}: expected "
                "mysql+pymysql://user:password@host/database"
            ) from None
        if parsed.drivername not in _SCHEMES:
            raise RecipientSourceError(
                f"unsupported CRM database {parsed.render_as_string(hide_password=True)!r}: "
                "only MySQL/MariaDB (mysql+pymysql://user:password@host/database)"
            )
        unknown = sorted(set(parsed.query) - _OPTIONS)
        if unknown:
            raise RecipientSourceError(
                f"CRM database URL: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_OPTIONS))})"
            )
        if not parsed.database:
            raise RecipientSourceError(
                f"CRM database URL {parsed.render_as_string(hide_password=True)!r} names no "
                "database: mysql+pymysql://user:password@host/database"
            )
        return parsed

    def fingerprint(self) -> str:
        """The URL (without the password) and the query: the same query is imported once.

        Running the same command again resumes the campaign without re-running the query;
        change the query (or give a new --campaign) to import again.
        """
        return hashlib.sha256(f"{self.url_text}\0{self.query}".encode()).hexdigest()

    def _where(self) -> str:
        return f"CRM query on {self.url_text}"

    def _connect(self, *, streaming: bool) -> Any:
        import pymysql
        import pymysql.cursors

        url = self.url
        options = dict(url.query)
        kwargs: dict[str, Any] = {
            "host": url.host or "localhost",
            "port": url.port or 3306,
            "user": url.username or "",
            "password": url.password or "",
            "database": url.database,
            "charset": str(options.get("charset", "utf8mb4")),
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "write_timeout": 30,
            "autocommit": True,
            "program_name": "mailpacer",
        }
        if "unix_socket" in options:
            kwargs["unix_socket"] = str(options["unix_socket"])
        if streaming:
            kwargs["cursorclass"] = pymysql.cursors.SSCursor
        try:
            return pymysql.connect(**kwargs)
        except pymysql.MySQLError as exc:
            raise RecipientSourceError(
                f"cannot connect to the CRM database {self.url_text}: {_describe(exc)}"
            ) from None
        except (OSError, ValueError) as exc:  # e.g. a host name that does not resolve
            raise RecipientSourceError(
                f"cannot connect to the CRM database {self.url_text}: {_describe(exc)}"
            ) from None

    def _probe(self) -> list[str]:
        """Check the query without reading a row: one SELECT, valid, its column names."""
        import pymysql

        connection = self._connect(streaming=False)
        try:
            with connection.cursor() as cursor:
                # the newline ends a trailing "-- comment" in the query
                cursor.execute(f"SELECT * FROM (\n{self.query}\n) AS mailpacer_query LIMIT 0")
                names = [str(d[0]) for d in cursor.description or ()]
        except pymysql.MySQLError as exc:
            hint = ""
            if getattr(exc, "args", (None,))[0] == 1064:
                hint = "; the query must be one SELECT statement"
            raise RecipientSourceError(f"{self._where()} failed: {_describe(exc)}{hint}") from None
        finally:
            connection.close()
        return check_columns(names, self._where(), "the query's columns")

    def __iter__(self) -> Iterator[SourceRow | RejectedRow]:
        import pymysql

        connection = self._connect(streaming=True)
        position = 0
        try:
            cursor = connection.cursor()  # never closed: see _drop()
            try:
                # the server must not give up on us while the ledger takes a batch
                cursor.execute("SET SESSION net_write_timeout = 600")
                cursor.execute("START TRANSACTION READ ONLY")
                cursor.execute(self.query)
                names = [str(d[0]) for d in cursor.description or ()]
            except pymysql.MySQLError as exc:
                raise RecipientSourceError(f"{self._where()} failed: {_describe(exc)}") from None
            columns = check_columns(names, self._where(), "the query's columns")
            if columns != self.columns:
                raise RecipientSourceError(
                    f"{self._where()}: the columns changed since the check "
                    f"({', '.join(self.columns)} -> {', '.join(columns)})"
                )
            check = RowChecker(columns).check
            fetch = cursor.fetchmany
            while True:
                try:
                    chunk = fetch(1000)
                except pymysql.MySQLError as exc:
                    raise RecipientSourceError(
                        f"{self._where()} failed after {position:,} rows: {_describe(exc)}"
                    ) from None
                if not chunk:
                    break
                for raw in chunk:
                    position += 1
                    values = [v if type(v) is str else _text(v) for v in raw]
                    if sum(map(len, values)) > MAX_ROW_BYTES:
                        yield RejectedRow(position, f"row larger than {MAX_ROW_BYTES} bytes")
                        continue
                    yield check(position, values)
        finally:
            _drop(connection)


def _drop(connection: Any) -> None:
    """Close at once. PyMySQL would first read (and throw away) the rest of an unbuffered
    result - a million rows after an error - from the cursor's close() and the result's
    __del__; both are told that nothing is pending, then the socket is closed."""
    result = getattr(connection, "_result", None)
    if result is not None:
        result.unbuffered_active = False
        connection._result = None
    with contextlib.suppress(Exception):  # already closed by a lost connection
        connection.close()
