"""A streaming ``multipart/form-data`` parser (RFC 7578), pure: bytes in, events out.

The control API receives a campaign's recipients as a part of a multipart upload that may be
far larger than memory should hold; this parser hands each part's data on as it arrives
(the caller writes it to a file), keeping at most one chunk plus a delimiter's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

__all__ = [
    "MultipartError",
    "MultipartParser",
    "PartData",
    "PartEnd",
    "PartStart",
    "parse_boundary",
    "parse_content_type",
]

MAX_HEADER_BYTES = 16 * 1024  # one part's header block


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data; the message says where."""


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/form-data; boundary=x'`` -> ``('multipart/form-data', {'boundary': 'x'})``."""
    message = Message()
    message["content-type"] = value
    params = message.get_params() or []
    main = params[0][0].lower() if params else ""
    return main, {k.lower(): str(v) for k, v in params[1:]}


def parse_boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data content type (None when it is not one)."""
    main, params = parse_content_type(content_type)
    boundary = params.get("boundary", "")
    if main != "multipart/form-data" or not 1 <= len(boundary) <= 70:
        return None
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        return None


def _part_start(block: bytes) -> PartStart:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError("a part's headers are not UTF-8") from None
    message = Message()
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header {line[:80]!r}")
        message[name.strip()] = value.strip()
    disposition = message.get("content-disposition")
    if disposition is None:
        raise MultipartError("a part has no Content-Disposition header")
    params = message.get_params(header="content-disposition") or []
    if not params or params[0][0].lower() != "form-data":
        raise MultipartError("a part's Content-Disposition is not form-data")
    values = {k.lower(): str(v) for k, v in params[1:]}
    if not values.get("name"):
        raise MultipartError("a part has no name")
    ctype = message.get("content-type")
    return PartStart(
        name=values["name"],
        filename=values.get("filename"),
        content_type=parse_content_type(ctype)[0] if ctype else None,
    )


class MultipartParser:
    """``events = parser.feed(chunk)`` for each chunk of the body, then ``parser.close()``."""

    def __init__(self, boundary: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.max_header_bytes = max_header_bytes
        # The first boundary may open the body without a CRLF before it.
        self._buffer = bytearray(b"\r\n")
        self._state = "preamble"  # preamble | after_boundary | headers | body | end

    @property
    def finished(self) -> bool:
        return self._state == "end"

    def feed(self, data: bytes) -> list[Event]:
        if self._state == "end":
            return []  # the epilogue is ignored
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        delimiter = self.delimiter
        keep = len(delimiter) - 1
        while True:
            state = self._state
            if state in ("preamble", "body"):
                found = buffer.find(delimiter)
                if found < 0:
                    cut = len(buffer) - keep
                    if cut > 0:
                        if state == "body":
                            events.append(PartData(bytes(buffer[:cut])))
                        del buffer[:cut]
                    return events
                if state == "body":
                    if found:
                        events.append(PartData(bytes(buffer[:found])))
                    events.append(PartEnd())
                del buffer[: found + len(delimiter)]
                self._state = "after_boundary"
            elif state == "after_boundary":
                if len(buffer) < 2:
                    return events
                if buffer.startswith(b"--"):
                    self._state = "end"
                    buffer.clear()
                    return events
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    if len(buffer) > 256:
                        raise MultipartError("garbage after a boundary")
                    return events
                if buffer[:line_end].strip(b" \t"):
                    raise MultipartError("garbage after a boundary")
                del buffer[: line_end + 2]
                self._state = "headers"
            elif state == "headers":
                if buffer.startswith(b"\r\n"):
                    raise MultipartError("a part has no headers (Content-Disposition needed)")
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > self.max_header_bytes:
                        raise MultipartError(
                            f"a part's headers exceed {self.max_header_bytes} bytes"
                        )
                    return events
                if end > self.max_header_bytes:
                    raise MultipartError(f"a part's headers exceed {self.max_header_bytes} bytes")
                events.append(_part_start(bytes(buffer[:end])))
                del buffer[: end + 4]
                self._state = "body"
            else:  # pragma: no cover - "end" returns above
                return events

    def close(self) -> None:
        """The body ended: MultipartError unless the closing boundary was seen."""
        if self._state != "end":
            raise MultipartError("the body ended before the closing boundary (truncated upload?)")
