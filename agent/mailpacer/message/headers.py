"""Header values that recipient data can never break out of.

Any CR, LF or NUL in a header value is refused (never stripped: a silently altered
value could hide an injection attempt), and so is every other character that Unicode-aware
tools treat as a line break (VT, FF, FS/GS/RS, NEL, U+2028, U+2029: ``str.splitlines``).
Non-ASCII text becomes RFC 2047 encoded words, as does unstructured ASCII text that could not
otherwise be folded to 78 characters or that looks like an encoded word itself.
"""

from __future__ import annotations

import base64
import re

__all__ = [
    "HeaderInjectionError",
    "check_header_value",
    "encode_text_header",
    "format_mailbox",
]

# Encoded words may be at most 75 characters: "=?utf-8?b?" + base64 + "?=" leaves 63;
# 45 bytes of UTF-8 become 60 base64 characters.
_WORD_BYTES = 45
_FOLD_AT = 78


# "=?utf-8?b?" + "?=": the 12 characters an encoded word adds to its base64 text.
_WORD_OVERHEAD = 12
_LINE_BREAKS = re.compile("[\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class HeaderInjectionError(ValueError):
    """A value meant for a header contains a line break or NUL."""


def check_header_value(value: str, what: str) -> None:
    if _LINE_BREAKS.search(value):
        raise HeaderInjectionError(f"{what} contains a line break or NUL; refused: {value[:60]!r}")


def _encoded_words(text: str, first_line_room: int = _FOLD_AT) -> list[str]:
    """Encoded words of at most 75 characters, the first one fitting ``first_line_room``.

    Each word takes as many whole characters as fit: the UTF-8 bytes are cut greedily and
    a cut never falls inside a character (never before a continuation byte). One pass over
    bytes; a per-character loop cost ~50 µs per subject, more than the rest of the headers.
    """
    data = text.encode("utf-8")
    words: list[str] = []
    limit = min(max(3, (first_line_room - _WORD_OVERHEAD) // 4 * 3), _WORD_BYTES)
    start, end_all = 0, len(data)
    while start < end_all:
        cut = min(start + limit, end_all)
        while cut < end_all and data[cut] & 0xC0 == 0x80:
            cut -= 1  # back to the start of the character the limit fell into
        if cut == start:  # one character longer than the room: it goes alone
            cut = start + 1
            while cut < end_all and data[cut] & 0xC0 == 0x80:
                cut += 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:cut]).decode("ascii") + "?=")
        start = cut
        limit = _WORD_BYTES
    if not words:
        words.append("=?utf-8?b??=")
    return words


def _fold_ascii(text: str, first_line_room: int) -> str:
    """Fold a long ASCII value at spaces (RFC 5322 2.2.3), never inside a word."""
    lines: list[str] = []
    current = ""
    room = first_line_room
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and len(candidate) > room:
            lines.append(current)
            current = word
            room = _FOLD_AT - 1
        else:
            current = candidate
    lines.append(current)
    return "\r\n ".join(lines)


def encode_text_header(name: str, value: str, *, structured: bool = False) -> str:
    """``Name: value`` (without the final CRLF), safe for the wire and folded when long.

    ``structured`` (address headers, already encoded by :func:`format_mailbox`, raw UTF-8
    only for SMTPUTF8): only ever folded at spaces, never encoded. Unstructured text (such
    as Subject) is encoded when not ASCII, when it cannot be folded to 78 characters, or
    when it would be mistaken for encoded words.
    """
    check_header_value(value, f"{name} header")
    prefix = f"{name}: "
    room = _FOLD_AT - len(prefix)
    if structured or (value.isascii() and "=?" not in value):
        if len(value) <= room:
            return prefix + value
        folded = prefix + (_fold_ascii(value, room) if " " in value else value)
        if structured or all(len(line) <= _FOLD_AT for line in folded.split("\r\n")):
            return folded
    return prefix + "\r\n ".join(_encoded_words(value, room))


_SPECIALS = frozenset('()<>[]:;@\\,."')


def format_mailbox(display_name: str | None, address: str) -> str:
    """``"Name" <addr>`` with the name quoted or encoded as needed; the address as given.

    A non-ASCII address (SMTPUTF8, RFC 6532) travels raw, and so may the name with it.
    """
    check_header_value(address, "address")
    if not display_name:
        return address
    check_header_value(display_name, "display name")
    if (display_name.isascii() and "=?" not in display_name) or not address.isascii():
        if any(c in _SPECIALS for c in display_name) or display_name != display_name.strip():
            quoted = display_name.replace("\\", "\\\\").replace('"', '\\"')
            return f'"{quoted}" <{address}>'
        return f"{display_name} <{address}>"
    return " ".join(_encoded_words(display_name)) + f" <{address}>"
