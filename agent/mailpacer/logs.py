"""Operator logs: text or JSON lines, with campaign and recipient ids, never a secret.

The engine logs through ``logging`` with structured fields in ``extra`` (``campaign``,
``recipient_id``, ``email``, ``relay``, ``state``, ``code``, ``reply``, ``event``). The
JSON formatter writes them as keys of one object per line; the text formatter appends them
as ``key=value``. A filter masks anything shaped like credentials in a URL
(``scheme://user:secret@``) and known secrets registered at start-up, as a second line of
defence behind the code never putting them in a message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["FIELDS", "JsonFormatter", "SecretFilter", "TextFormatter", "configure_logging"]

FIELDS = ("event", "campaign", "recipient_id", "email", "relay", "state", "code", "reply")

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@\s/]+@")


class SecretFilter(logging.Filter):
    """Masks URL credentials and registered secrets in messages and fields."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s]

    def _clean(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.getMessage())
        record.args = None
        for name in FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                setattr(record, name, self._clean(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{name}={record.__dict__[name]!r}"
            for name in FIELDS
            if record.__dict__.get(name) is not None
        )
        text = f"{stamp} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        return f"{text} {fields}" if fields else text


def configure_logging(
    *,
    fmt: str = "text",
    level: str = "warning",
    file: Path | None = None,
    secrets: list[str] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the ``mailpacer`` loggers to ``file`` (or stderr) in the chosen format."""
    handler: logging.Handler
    if file is not None:
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger("mailpacer")
    root.handlers = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return handler
