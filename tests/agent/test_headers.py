"""Header values built from recipient data: no injection, RFC 2047 round-trips, folding."""

from __future__ import annotations

import email
import email.policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest

from mailpacer.message.headers import (
    HeaderInjectionError,
    check_header_value,
    encode_text_header,
    format_mailbox,
)
from mailpacer.message.mime import MessageComposer

EXPECTED_HEADERS = [
    "From",
    "MIME-Version",
    "Date",
    "To",
    "Subject",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
]

# Every character Python's str.splitlines() (and many Unicode-aware tools) treats as a
# line break, plus NUL: none of them may reach a header raw.
LINE_BREAKS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]
LINE_BREAKS += ["\u2028", "\u2029"]


def composer() -> MessageComposer:
    return MessageComposer(from_header="News <news@example.org>", message_id_domain="example.org")


def compose_bytes(to_header: str, subject: str = "Hello") -> bytes:
    c = composer()
    return c.compose(
        to_header=to_header,
        subject=subject,
        text="body\n",
        html=None,
        message_id=c.new_message_id("t1"),
    )


def compose(to_header: str, subject: str = "Hello") -> EmailMessage:
    parsed = email.message_from_bytes(
        compose_bytes(to_header, subject), policy=email.policy.default
    )
    assert isinstance(parsed, EmailMessage)
    return parsed


def decoded_display_name(data: bytes) -> str:
    """The To display name decoded per RFC 2047 6.2 (space between encoded words ignored).

    (policy.default's address parser keeps that space, a stdlib quirk, so the raw header
    is decoded with email.header instead.)
    """
    raw = email.message_from_bytes(data, policy=email.policy.compat32)["To"]
    unfolded = "".join(raw.splitlines())
    return str(make_header(decode_header(unfolded.rpartition(" <")[0])))


def header_lines(name: str, value: str) -> list[str]:
    return encode_text_header(name, value).split("\r\n")


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_display_name_with_line_break_is_refused(brk: str) -> None:
    with pytest.raises(HeaderInjectionError, match="display name"):
        format_mailbox(f"Eve{brk}Bcc: victim@evil.example", "eve@example.org")


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_subject_with_line_break_is_refused(brk: str) -> None:
    c = composer()
    with pytest.raises(HeaderInjectionError, match="Subject"):
        c.compose(
            to_header="rcpt@example.org",
            subject=f"Hi{brk}Bcc: victim@evil.example",
            text="x",
            html=None,
            message_id=c.new_message_id("t"),
        )


@pytest.mark.parametrize("brk", ["\r\n", "\n", "\u2028"])
def test_address_and_message_id_with_line_break_are_refused(brk: str) -> None:
    with pytest.raises(HeaderInjectionError, match="address"):
        format_mailbox("Name", f"a@example.org{brk}Bcc: x@evil.example")
    c = composer()
    with pytest.raises(HeaderInjectionError, match="Message-ID"):
        c.compose(
            to_header="a@example.org",
            subject="s",
            text="x",
            html=None,
            message_id=f"<x@example.org>{brk}Bcc: x@evil.example",
        )


def test_refusal_message_shows_the_value_escaped() -> None:
    with pytest.raises(HeaderInjectionError) as info:
        check_header_value("Eve\r\nBcc: x@evil.example", "display name")
    text = str(info.value)
    assert "\\r\\n" in text  # repr of the value, never a raw line break in a log line
    assert "\r" not in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "name",
    [
        'Eve" <eve@evil.example>, "Bob',  # quote-breaking attempt
        "Eve <eve@evil.example>",
        "Doe, John",
        "a@b.example",
        "=?utf-8?b?QmNjOiB4QGV2aWwuZXhhbXBsZQ==?=",  # looks like an encoded word
        "Back\\slash \\",
        " leading and trailing ",
    ],
)
def test_hostile_ascii_display_names_stay_one_mailbox(name: str) -> None:
    parsed = compose(format_mailbox(name, "rcpt@example.org"))
    assert list(parsed.keys()) == EXPECTED_HEADERS
    addresses = parsed["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].addr_spec == "rcpt@example.org"
    assert addresses[0].display_name == name
    assert parsed.defects == []


@pytest.mark.parametrize(
    "name",
    ["Jörg Müller", "山田 太郎", 'Zoë, "the" <boss>', "Ωμέγα " * 20, "emoji 🎉 party"],
)
def test_non_ascii_display_name_is_rfc2047_encoded_and_round_trips(name: str) -> None:
    header = format_mailbox(name, "rcpt@example.org")
    assert header.isascii()
    assert "=?utf-8?b?" in header
    decoded = str(make_header(decode_header(header.rpartition(" <")[0])))
    assert decoded == name
    assert decoded_display_name(compose_bytes(header)) == name
    parsed = compose(header)
    assert len(parsed["To"].addresses) == 1
    assert parsed["To"].addresses[0].addr_spec == "rcpt@example.org"
    assert list(parsed.keys()) == EXPECTED_HEADERS


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus Köln",
        "日本語の件名" * 10,
        "Bcc: x@evil.example\u2003(em space)",
        "a" + "é" * 200,
        "=?utf-8?b?QmNjOiB4?= literal",
    ],
)
def test_subject_encoding_round_trips(subject: str) -> None:
    line = encode_text_header("Subject", subject)
    assert line.isascii()
    value = line.removeprefix("Subject: ")
    assert str(make_header(decode_header(value))) == subject
    parsed = compose("rcpt@example.org", subject)
    assert parsed["Subject"] == subject
    assert list(parsed.keys()) == EXPECTED_HEADERS


def test_plain_ascii_subject_is_left_readable() -> None:
    assert encode_text_header("Subject", "Your winter guide") == "Subject: Your winter guide"


@pytest.mark.parametrize(
    "subject",
    [
        "word " * 60 + "end",  # foldable at spaces
        "x" * 2000,  # one endless token: must be encoded to fold at all
        "see https://example.org/" + "p" * 150 + " soon",
        "ü" * 400,
        "mixed ascii and ü " * 40,
    ],
)
def test_long_subjects_fold_to_78_and_round_trip(subject: str) -> None:
    lines = header_lines("Subject", subject)
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line.startswith(" ") for line in lines[1:])
    assert all(line.strip() for line in lines)  # no whitespace-only line (RFC 5322 3.2.2)
    assert compose("rcpt@example.org", subject)["Subject"] == subject


def test_long_to_header_folds_but_never_breaks_the_address() -> None:
    name = "Ünïcödé " * 30
    address = "a" * 64 + "@" + ("b" * 60 + ".") * 3 + "example"
    header = format_mailbox(name.strip(), address)
    lines = encode_text_header("To", header, structured=True).split("\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert all(len(line) <= 78 for line in lines if address not in line)
    parsed = compose(header)
    assert parsed["To"].addresses[0].addr_spec == address
    assert decoded_display_name(compose_bytes(header)) == name.strip()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, "a@example.org"),
        ("", "a@example.org"),
        ("John Doe", "John Doe <a@example.org>"),
        ("Doe, John", '"Doe, John" <a@example.org>'),
        ("J. Doe", '"J. Doe" <a@example.org>'),
        ('Say "hi"', '"Say \\"hi\\"" <a@example.org>'),
        ("back\\slash", '"back\\\\slash" <a@example.org>'),
        ("a:b;c", '"a:b;c" <a@example.org>'),
        ("(comment)", '"(comment)" <a@example.org>'),
        ("[x]", '"[x]" <a@example.org>'),
        (" padded", '" padded" <a@example.org>'),
    ],
)
def test_format_mailbox_quotes_specials(name: str | None, expected: str) -> None:
    assert format_mailbox(name, "a@example.org") == expected


def test_utf8_address_keeps_name_raw_for_smtputf8_and_parses() -> None:
    header = format_mailbox("Jörg, Sr.", "jörg@example.org")
    assert header == '"Jörg, Sr." <jörg@example.org>'
    raw = encode_text_header("To", header, structured=True)
    assert raw == f"To: {header}"


def test_utf8_address_with_unicode_line_separator_in_name_is_refused() -> None:
    # raw UTF-8 headers (SMTPUTF8) are where U+2028 would otherwise travel unencoded
    with pytest.raises(HeaderInjectionError):
        format_mailbox("Jörg\u2028Bcc: x@evil.example", "jörg@example.org")


def test_extra_headers_are_checked_too() -> None:
    with pytest.raises(HeaderInjectionError, match="X-Campaign"):
        MessageComposer(
            from_header="a@example.org",
            message_id_domain="example.org",
            extra_headers={"X-Campaign": "spring\r\nBcc: x@evil.example"},
        )
    with pytest.raises(HeaderInjectionError, match="From"):
        MessageComposer(from_header="a@example.org\nBcc: x@e.example", message_id_domain="e.org")


def _reference_words(text: str, first_line_room: int) -> list[str]:
    """The obvious per-character packing, to check the byte-cutting encoder against."""
    import base64

    words: list[str] = []
    chunk = b""
    limit = min(max(3, (first_line_room - 12) // 4 * 3), 45)
    for char in text:
        encoded = char.encode("utf-8")
        if chunk and len(chunk) + len(encoded) > limit:
            words.append("=?utf-8?b?" + base64.b64encode(chunk).decode() + "?=")
            chunk, limit = b"", 45
        chunk += encoded
    if chunk or not words:
        words.append("=?utf-8?b?" + base64.b64encode(chunk).decode() + "?=")
    return words


def test_encoded_words_cut_only_between_characters() -> None:
    import random

    from mailpacer.message.headers import _encoded_words

    rng = random.Random(4)
    alphabet = "aZ 9.,ü€ßé中文😀𝄞" + "\u00a0\u200b"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        room = rng.choice([3, 10, 15, 20, 40, 69, 78])
        words = _encoded_words(text, room)
        assert words == _reference_words(text, room), (text, room)
        assert all(len(w) <= 75 for w in words[1:])
