"""SMTP protocol pieces with no I/O: replies, commands, extensions, dot-stuffing.

Kept apart from the client so every byte we send and every reply we parse can be
tested over plain bytes and memory streams.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CRLF",
    "Extensions",
    "Reply",
    "ReplyParser",
    "SMTPProtocolError",
    "auth_login_password",
    "auth_login_start",
    "auth_plain",
    "data_command",
    "dot_stuff",
    "ehlo_command",
    "helo_command",
    "mail_command",
    "normalize_line_endings",
    "quit_command",
    "rcpt_command",
    "rset_command",
    "starttls_command",
]

CRLF = b"\r\n"
#: RFC 5321 4.5.3.1.5 allows 512 octets per reply line; servers exceed it, so be generous.
MAX_REPLY_LINE = 8192
#: A multi-line reply longer than this is a broken or hostile server.
MAX_REPLY_LINES = 256

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class SMTPProtocolError(Exception):
    """The server sent something that is not SMTP."""


class Reply(NamedTuple):
    """One complete (possibly multi-line) server reply (a tuple: cheap to create)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def enhanced_status(self) -> str | None:
        """The RFC 3463 enhanced status code (e.g. ``5.1.1``) if the server gave one."""
        if not self.lines:
            return None
        match = _ENHANCED.match(self.lines[0])
        return match.group(0) if match else None

    def __str__(self) -> str:
        return f"{self.code} {' / '.join(self.lines)}".rstrip()


class ReplyParser:
    """Incremental reply parser: feed received bytes, take complete replies out.

    Tolerates bare LF line ends (seen in the wild) but nothing that is not a reply.
    """

    __slots__ = ("_code", "_lines", "_partial", "_replies")

    def __init__(self) -> None:
        self._partial = b""
        self._lines: list[str] = []
        self._code = 0
        self._replies: deque[Reply] = deque()

    def feed(self, data: bytes | bytearray) -> None:
        """Parse every complete line at once (a pipelined read often carries four replies)."""
        if self._partial:
            data = self._partial + data
        lines = bytes(data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_REPLY_LINE:
            raise SMTPProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")
        append = self._replies.append
        for line in lines:
            # The common case inline: a complete one-line reply "250 2.0.0 Ok\r".
            if (
                not self._lines
                and line[3:4] == b" "
                and line[-1:] == b"\r"
                and line[:3].isdigit()
                and b"200" <= line[:3] <= b"599"
                and len(line) <= MAX_REPLY_LINE
            ):
                append(
                    tuple.__new__(Reply, (int(line[:3]), (line[4:-1].decode("utf-8", "replace"),)))
                )
            else:
                self._line(line)

    def _line(self, line: bytes) -> None:
        if line[-1:] == b"\r":
            line = line[:-1]
        if not self._lines and line[3:4] == b" " and line[:3].isdigit():
            code = int(line[:3])  # the common case: a complete one-line reply
            if 200 <= code <= 599 and len(line) <= MAX_REPLY_LINE:
                self._replies.append(Reply(code, (line[4:].decode("utf-8", "replace"),)))
                return
        if len(line) > MAX_REPLY_LINE:
            raise SMTPProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")
        digits = line[:3]
        sep = line[3:4]
        if len(digits) < 3 or not digits.isdigit() or sep not in (b" ", b"-", b""):
            raise SMTPProtocolError(f"malformed reply line: {line[:80]!r}")
        code = int(digits)
        if code < 200 or code > 599:
            raise SMTPProtocolError(f"reply code out of range: {line[:80]!r}")
        if self._lines and code != self._code:
            raise SMTPProtocolError(f"multi-line reply changed code from {self._code} to {code}")
        text = line[4:].decode("utf-8", "replace")
        if sep == b"-":
            self._code = code
            self._lines.append(text)
            if len(self._lines) > MAX_REPLY_LINES:
                raise SMTPProtocolError(f"reply has more than {MAX_REPLY_LINES} lines")
        elif self._lines:
            self._lines.append(text)
            self._replies.append(Reply(code, tuple(self._lines)))
            self._lines = []
        else:
            self._replies.append(Reply(code, (text,)))

    @property
    def has_partial(self) -> bool:
        """True when any received bytes are not yet consumed as replies."""
        return bool(self._partial or self._lines or self._replies)

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None if more bytes are needed."""
        replies = self._replies
        return replies.popleft() if replies else None


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the server announced in its EHLO reply."""

    keywords: dict[str, str]

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            word, _, params = line.strip().partition(" ")
            if word:
                keywords[word.upper()] = params.strip()
        return cls(keywords)

    @classmethod
    def none(cls) -> Extensions:
        return cls({})

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def size_limit(self) -> int | None:
        """The SIZE limit in bytes; None when not announced or announced as 0 (no limit)."""
        value = self.keywords.get("SIZE")
        if value is None:
            return None
        try:
            limit = int(value.split()[0]) if value else 0
        except ValueError:
            return None
        return limit or None

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        value = self.keywords.get("AUTH")
        if value is None:
            # Some old servers only announce "AUTH=PLAIN LOGIN".
            value = self.keywords.get("AUTH=PLAIN", "")
        return frozenset(m.upper() for m in value.split())


_UNSAFE_ADDRESS = re.compile(r"[\r\n<>\x00 ]")


def _check_address(address: str) -> None:
    """Refuse envelope addresses that could smuggle commands (defence in depth)."""
    if _UNSAFE_ADDRESS.search(address):
        raise ValueError(f"unsafe characters in envelope address {address!r}")


def _check_arg(value: str, what: str) -> None:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"line break in {what} {value!r}")


def ehlo_command(hostname: str) -> bytes:
    _check_arg(hostname, "EHLO name")
    return b"EHLO " + hostname.encode("idna" if not hostname.isascii() else "ascii") + CRLF


def helo_command(hostname: str) -> bytes:
    _check_arg(hostname, "HELO name")
    return b"HELO " + hostname.encode("idna" if not hostname.isascii() else "ascii") + CRLF


def mail_command(
    sender: str,
    *,
    size: int | None = None,
    body_8bit: bool = False,
    smtputf8: bool = False,
) -> bytes:
    """MAIL FROM with the ESMTP parameters the caller decided the server supports."""
    _check_address(sender)
    parts = [b"MAIL FROM:<", sender.encode("utf-8"), b">"]
    if size is not None:
        parts.append(b" SIZE=%d" % size)
    if body_8bit:
        parts.append(b" BODY=8BITMIME")
    if smtputf8:
        parts.append(b" SMTPUTF8")
    parts.append(CRLF)
    return b"".join(parts)


def rcpt_command(recipient: str) -> bytes:
    _check_address(recipient)
    return b"RCPT TO:<" + recipient.encode("utf-8") + b">" + CRLF


def data_command() -> bytes:
    return b"DATA" + CRLF


def rset_command() -> bytes:
    return b"RSET" + CRLF


def quit_command() -> bytes:
    return b"QUIT" + CRLF


def starttls_command() -> bytes:
    return b"STARTTLS" + CRLF


def auth_plain(username: str, password: str) -> bytes:
    """AUTH PLAIN with the initial response (RFC 4616)."""
    token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())
    return b"AUTH PLAIN " + token + CRLF


def auth_login_start() -> bytes:
    return b"AUTH LOGIN" + CRLF


def auth_login_password(secret: str) -> bytes:
    """One base64 line of the AUTH LOGIN dialogue (the username, then the password)."""
    return base64.b64encode(secret.encode()) + CRLF


_BARE_NEWLINE = re.compile(rb"\r\n|\r|\n")


def normalize_line_endings(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF (for messages we did not build ourselves)."""
    return _BARE_NEWLINE.sub(CRLF, data)


def dot_stuff(message: bytes) -> bytes:
    """Return the DATA payload: dot-stuffed (RFC 5321 4.5.2) and terminated by CRLF.CRLF.

    ``message`` must already use CRLF line endings. ``bytes.replace`` is ~10x cheaper
    than a regular expression here, and this runs once per message.
    """
    if message.startswith(b"."):
        message = b"." + message
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if not stuffed.endswith(CRLF):
        stuffed += CRLF
    return stuffed + b".\r\n"
