"""Command implementations behind the CLI.

Only what every command shares lives here, so that `mailpacer sink` or a usage error does not
pay for importing the engine, SQLAlchemy and Jinja2.
"""

from __future__ import annotations

__all__ = ["EXIT", "UsageError"]

EXIT = {"ok": 0, "attention": 1, "usage": 2, "aborted": 3, "interrupted": 130}


class UsageError(Exception):
    """Bad input: reported in one line, exit code 2, nothing sent."""
