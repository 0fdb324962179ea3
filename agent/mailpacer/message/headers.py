"""Header values that recipient data can never break out of.

Any CR, LF or NUL in a header value is refused (never stripped: a silently altered
value could hide an injection attempt). Non-ASCII text becomes RFC 2047 encoded words.
"""

from __future__ import annotations

import base64

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


class HeaderInjectionError(ValueError):
    """A value meant for a header contains a line break or NUL."""


def check_header_value(value: str, what: str) -> None:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjectionError(f"{what} contains a line break or NUL; refused: {value[:60]!r}")


def _encoded_words(text: str) -> list[str]:
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append("=?utf-8?b?" + base64.b64encode(chunk).decode("ascii") + "?=")
            chunk = bytearray()
        chunk += encoded
    if chunk or not words:
        words.append("=?utf-8?b?" + base64.b64encode(chunk).decode("ascii") + "?=")
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


def encode_text_header(name: str, value: str) -> str:
    """``Name: value`` (without the final CRLF), safe for the wire and folded when long."""
    check_header_value(value, f"{name} header")
    room = _FOLD_AT - len(name) - 2
    if value.isascii():
        if len(value) <= room or " " not in value:
            return f"{name}: {value}"
        return f"{name}: {_fold_ascii(value, room)}"
    return f"{name}: " + "\r\n ".join(_encoded_words(value))


_SPECIALS = frozenset('()<>[]:;@\\,."')


def format_mailbox(display_name: str | None, address: str) -> str:
    """``"Name" <addr>`` with the name quoted or encoded as needed; the address as given.

    A non-ASCII address (SMTPUTF8, RFC 6532) travels raw, and so may the name with it.
    """
    check_header_value(address, "address")
    if not display_name:
        return address
    check_header_value(display_name, "display name")
    if display_name.isascii() or not address.isascii():
        if any(c in _SPECIALS for c in display_name) or display_name != display_name.strip():
            quoted = display_name.replace("\\", "\\\\").replace('"', '\\"')
            return f'"{quoted}" <{address}>'
        return f"{display_name} <{address}>"
    return " ".join(_encoded_words(display_name)) + f" <{address}>"
