"""The streaming multipart/form-data parser: every way a body can be cut into chunks."""

from __future__ import annotations

import pytest

from mailpacer.http.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_boundary,
)

BOUNDARY = b"xYzZY"


def body(*parts: tuple[bytes, bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for headers, data in parts:
        out += b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n" + epilogue


SPEC = (b'Content-Disposition: form-data; name="spec"\r\nContent-Type: application/json', b"{}")
# data that almost looks like a boundary, and CRLFs at its edges
TRICKY = b"\r\nemail\r\n--xYzZ\r\na--xYzZY\r\n\r\n"
CSV = (
    b'Content-Disposition: form-data; name="recipients"; filename="l.csv"\r\n'
    b"Content-Type: text/csv",
    TRICKY,
)


def parse(data: bytes, chunk: int) -> list[object]:
    parser = MultipartParser(BOUNDARY)
    events: list[object] = []
    for i in range(0, len(data), chunk):
        events += parser.feed(data[i : i + chunk])
    parser.close()
    # merge adjacent data events: how the data is chunked is not part of the contract
    merged: list[object] = []
    for event in events:
        if isinstance(event, PartData) and merged and isinstance(merged[-1], PartData):
            merged[-1] = PartData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 13, 64, 10_000])
def test_parts_survive_any_chunking(chunk: int) -> None:
    data = body(SPEC, CSV, preamble=b"ignored preamble\r\n", epilogue=b"ignored")
    assert parse(data, chunk) == [
        PartStart("spec", None, "application/json"),
        PartData(b"{}"),
        PartEnd(),
        PartStart("recipients", "l.csv", "text/csv"),
        PartData(TRICKY),
        PartEnd(),
    ]


def test_empty_part_and_no_content_type() -> None:
    data = body((b'Content-Disposition: form-data; name="spec"', b""))
    assert parse(data, 5) == [PartStart("spec", None, None), PartEnd()]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (body(SPEC)[:-12], "before the closing boundary"),
        (b"--xYzZY\r\nContent-Type: text/csv\r\n\r\nx\r\n--xYzZY--", "no Content-Disposition"),
        (b"--xYzZY\r\nContent-Disposition: attachment\r\n\r\nx\r\n--xYzZY--", "not form-data"),
        (b"--xYzZY\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xYzZY--", "no name"),
        (b"--xYzZY\r\nno colon here\r\n\r\nx\r\n--xYzZY--", "malformed part header"),
        (b"--xYzZY\r\n" + b"X-Long: " + b"a" * 20_000, "exceed"),
        (b"--xYzZYjunk\r\n", "garbage after a boundary"),
        (b"no boundary at all", "before the closing boundary"),
    ],
)
def test_malformed_bodies_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(MultipartError, match=needle):
        parse(data, 4096)


def test_boundary_from_content_type() -> None:
    assert parse_boundary('multipart/form-data; boundary="a b"') == b"a b"
    assert parse_boundary("multipart/form-data; boundary=xyz") == b"xyz"
    assert parse_boundary("multipart/form-data") is None
    assert parse_boundary("application/json; boundary=xyz") is None
    assert parse_boundary("multipart/form-data; boundary=" + "x" * 71) is None
