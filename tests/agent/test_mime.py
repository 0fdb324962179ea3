"""Whole messages: they parse back with the stdlib and carry exactly what was rendered."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailpacer.message.factory import PersonalizedFactory, StaticFactory, StaticMessageError
from mailpacer.message.headers import format_mailbox
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import TemplateSet
from mailpacer.smtp.client import OutboundMessage

REPO = Path(__file__).resolve().parents[2]

TRICKY_TEXT = (
    "Grüße, Jörg! Ünïcödé ✓ and emoji 🎉\n"
    ".a line starting with a dot\n"
    ".\n"
    "From the beginning: a line starting with From\n"
    "trailing spaces   \n"
    "trailing tab\t\n"
    "= an equals sign and =3D and =?utf-8?q?x?=\n"
    + "a very long line " * 40
    + "\n"
    + "x" * 300
    + "\n"
    "--=_mp_fake boundary attempt\n"
    "last line without newline"
)


def unstuff(message: OutboundMessage) -> bytes:
    """Undo SMTP dot-stuffing: what the receiving server stores."""
    payload = message.payload
    assert payload.endswith(b"\r\n.\r\n")
    body = payload[: -len(b".\r\n")]
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed.defects == []
    return parsed


def assert_wire_clean(data: bytes) -> None:
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"
    assert data.endswith(b"\r\n")
    assert b"\x00" not in data
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    # quoted-printable bodies and our headers stay within 78 columns
    assert max(len(line) for line in lines) <= 78, max(lines, key=len)


def crlf_text(text: str) -> str:
    """What a text body looks like after transport: CRLF, ending in a line break."""
    text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", "\r\n")


def make_campaign(directory: Path, *, html: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "subject.j2").write_text("Grüße {{ name }}\n", encoding="utf-8")
    (directory / "body.txt.j2").write_text("{{ body }}", encoding="utf-8")
    if html:
        (directory / "body.html.j2").write_text("<pre>{{ body }}</pre>", encoding="utf-8")
    return directory


def make_factory(
    directory: Path, *, unsubscribe: str | None = None
) -> tuple[PersonalizedFactory, MessageComposer]:
    extra = {"unsubscribe_url": unsubscribe} if unsubscribe else None
    templates = TemplateSet(directory, extra=extra)
    composer = MessageComposer(
        from_header=format_mailbox("Nëws Désk", "news@example.org"),
        message_id_domain="example.org",
        extra_headers={"X-Campaign": "spring"},
    )
    factory = PersonalizedFactory(
        templates, composer, envelope_sender="bounce@example.org", campaign="spring"
    )
    return factory, composer


def test_multipart_alternative_with_text_and_html(tmp_path: Path) -> None:
    factory, _ = make_factory(make_campaign(tmp_path, html=True))
    message = factory.build(
        1, "ann@example.org", {"name": "Ann <Lee>", "body": TRICKY_TEXT}, source_row=2
    )
    data = unstuff(message)
    assert message.size == len(data)
    assert message.sender == "bounce@example.org"
    assert message.recipient == "ann@example.org"
    assert message.tag == 1
    assert not message.smtputf8
    assert not message.eight_bit
    assert data.isascii()
    assert_wire_clean(data)

    parsed = parse(data)
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["X-Campaign"] == "spring"
    assert parsed["From"].addresses[0].addr_spec == "news@example.org"
    assert parsed["From"].addresses[0].display_name == "Nëws Désk"
    assert parsed["To"].addresses[0].addr_spec == "ann@example.org"
    assert parsed["To"].addresses[0].display_name == "Ann <Lee>"
    assert parsed["Subject"] == "Grüße Ann <Lee>"
    date = email.utils.parsedate_to_datetime(parsed["Date"])
    assert abs(datetime.now(UTC) - date) < timedelta(minutes=1)
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["List-Unsubscribe"] is None
    assert parsed["List-Unsubscribe-Post"] is None

    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
    assert parts[0].get_content() == crlf_text(TRICKY_TEXT)
    escaped = (
        TRICKY_TEXT.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )
    assert parts[1].get_content() == crlf_text(f"<pre>{escaped}</pre>")


def test_text_only_without_html_template(tmp_path: Path) -> None:
    factory, _ = make_factory(make_campaign(tmp_path, html=False))
    message = factory.build(5, "bob@example.org", {"name": "Bob", "body": TRICKY_TEXT})
    data = unstuff(message)
    assert_wire_clean(data)
    parsed = parse(data)
    assert parsed.get_content_type() == "text/plain"
    assert not parsed.is_multipart()
    assert b"multipart" not in data
    assert parsed.get_content() == crlf_text(TRICKY_TEXT)


def test_dot_lines_survive_smtp_transparency(tmp_path: Path) -> None:
    factory, _ = make_factory(make_campaign(tmp_path, html=False))
    message = factory.build(1, "a@example.org", {"name": "A", "body": ".\n..\n.x\n"})
    # on the wire every line starting with a dot is doubled, so no early end of data
    assert b"\r\n.\r\n" not in message.payload[:-5]
    assert b"\r\n...\r\n" in message.payload  # ".." stuffed; a lone "." is QP "=2E"
    assert parse(unstuff(message)).get_content() == ".\r\n..\r\n.x\r\n"


def test_message_ids_are_unique_and_use_the_sender_domain(tmp_path: Path) -> None:
    factory, _ = make_factory(make_campaign(tmp_path, html=False))
    ids = set()
    for n in range(200):
        parsed = parse(unstuff(factory.build(n, f"r{n}@example.org", {"name": "x", "body": "b"})))
        msgid = parsed["Message-ID"]
        assert re.fullmatch(r"<mp\d+\.[0-9a-f]{12}@example\.org>", msgid), msgid
        assert msgid.startswith(f"<mp{n}.")
        ids.add(msgid)
    assert len(ids) == 200


def test_same_recipient_twice_gets_a_fresh_message_id(tmp_path: Path) -> None:
    factory, _ = make_factory(make_campaign(tmp_path, html=False))
    variables = {"name": "x", "body": "b"}
    first = parse(unstuff(factory.build(1, "a@example.org", variables)))["Message-ID"]
    second = parse(unstuff(factory.build(1, "a@example.org", variables)))["Message-ID"]
    assert first != second


def test_list_unsubscribe_one_click_only_with_url(tmp_path: Path) -> None:
    directory = make_campaign(tmp_path, html=True)
    factory, _ = make_factory(
        directory, unsubscribe="https://example.org/unsub?c={{ campaign }}&r={{ email }}"
    )
    parsed = parse(unstuff(factory.build(1, "ann@example.org", {"name": "A", "body": "b"})))
    assert parsed["List-Unsubscribe"] == ("<https://example.org/unsub?c=spring&r=ann@example.org>")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # RFC 8058
    plain, _ = make_factory(directory)
    data = unstuff(plain.build(1, "ann@example.org", {"name": "A", "body": "b"}))
    assert b"List-Unsubscribe" not in data


def test_unsubscribe_url_from_recipient_data_cannot_add_headers(tmp_path: Path) -> None:
    factory, _ = make_factory(
        make_campaign(tmp_path, html=False), unsubscribe="https://example.org/u/{{ token }}"
    )
    with pytest.raises(ValueError, match="List-Unsubscribe"):
        factory.build(1, "a@example.org", {"name": "A", "body": "b", "token": "x\r\nBcc: e@v.il"})
    with pytest.raises(ValueError, match="'>'"):
        factory.build(1, "a@example.org", {"name": "A", "body": "b", "token": "x>, <mailto:e"})


def test_utf8_recipient_needs_smtputf8_and_still_parses(tmp_path: Path) -> None:
    factory, _ = make_factory(make_campaign(tmp_path, html=False))
    message = factory.build(1, "jörg@example.org", {"name": "Jörg", "body": "hallo"})
    assert message.smtputf8
    assert message.eight_bit
    data = unstuff(message)
    assert "To: Jörg <jörg@example.org>\r\n".encode() in data
    parsed = email.message_from_bytes(data, policy=email.policy.SMTPUTF8)
    assert parsed.get_content() == "hallo\r\n"


def test_composer_crlf_normalizes_any_line_endings() -> None:
    composer = MessageComposer(from_header="a@example.org", message_id_domain="example.org")
    data = composer.compose(
        to_header="b@example.org",
        subject="s",
        text="unix\nmac\rdos\r\nend",
        html="<p>\n</p>\r",
        message_id=composer.new_message_id("x"),
    )
    assert_wire_clean(data)
    parts = list(parse(data).iter_parts())
    assert parts[0].get_content() == "unix\r\nmac\r\ndos\r\nend\r\n"
    assert parts[1].get_content() == "<p>\r\n</p>\r\n"


def test_boundary_is_unique_per_campaign_and_absent_from_bodies() -> None:
    a = MessageComposer(from_header="a@example.org", message_id_domain="example.org")
    b = MessageComposer(from_header="a@example.org", message_id_domain="example.org")
    assert a.boundary != b.boundary
    hostile = f"--{a.boundary}\n--{a.boundary}--\n"
    data = a.compose(
        to_header="b@example.org",
        subject="s",
        text=hostile,
        html=hostile,
        message_id=a.new_message_id("x"),
    )
    parsed = parse(data)
    parts = list(parsed.iter_parts())
    assert len(parts) == 2
    assert parts[0].get_content() == crlf_text(hostile)
    assert data.count(f"\r\n--{a.boundary}\r\n".encode()) == 2


def test_example_welcome_campaign(tmp_path: Path) -> None:
    templates = TemplateSet(REPO / "templates" / "welcome")
    composer = MessageComposer(from_header="news@example.org", message_id_domain="example.org")
    factory = PersonalizedFactory(
        templates, composer, envelope_sender="news@example.org", campaign="welcome"
    )
    variables = {
        "first_name": "Zoë",
        "last_name": "O'Brien",
        "city": "Zürich",
        "member_id": "42",
        "name": "Zoë O'Brien",
    }
    message = factory.build(9, "zoe@example.org", variables)
    assert b"\r\n..A line that starts with a dot" in message.payload
    parsed = parse(unstuff(message))
    assert parsed["Subject"] == "Zoë, your Zürich winter guide is here"
    text, html = (p.get_content() for p in parsed.iter_parts())
    assert "\r\n.A line that starts with a dot survives" in text
    assert "O&#39;Brien" in html
    assert "zoe@example.org subscribed" in text


# -- StaticFactory -------------------------------------------------------------------------


def test_static_message_is_normalized_dot_stuffed_and_shared(tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(
        b"From: a@example.org\nSubject: static\nMIME-Version: 1.0\n\n.dot\nline\r\nlast"
    )
    factory = StaticFactory(eml, envelope_sender="bounce@example.org")
    one = factory.build(1, "x@example.org", {})
    two = factory.build(2, "y@example.org", {"ignored": "v"})
    assert one.payload == two.payload
    assert (one.recipient, two.recipient) == ("x@example.org", "y@example.org")
    assert one.tag == 1
    assert one.sender == "bounce@example.org"
    assert not one.eight_bit
    data = unstuff(one)
    assert data == (
        b"From: a@example.org\r\nSubject: static\r\nMIME-Version: 1.0\r\n\r\n"
        b".dot\r\nline\r\nlast\r\n"
    )
    assert one.size == len(data) - 2  # announced size is the unstuffed file, CRLF-normalized
    assert parse(data)["Subject"] == "static"
    assert not factory.uses_variables


def test_static_message_with_8bit_body_and_utf8_recipient(tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes("Subject: x\r\n\r\nGrüße\r\n".encode())
    factory = StaticFactory(eml, envelope_sender="b@example.org")
    message = factory.build(1, "jörg@example.org", {})
    assert message.eight_bit
    assert message.smtputf8
    assert not factory.build(1, "j@example.org", {}).smtputf8


def test_static_message_errors(tmp_path: Path) -> None:
    with pytest.raises(StaticMessageError, match="cannot read message"):
        StaticFactory(tmp_path / "missing.eml", envelope_sender="b@example.org")
    with pytest.raises(StaticMessageError, match="cannot read message"):
        StaticFactory(tmp_path, envelope_sender="b@example.org")  # a directory
    headers_only = tmp_path / "h.eml"
    headers_only.write_bytes(b"Subject: x\r\nFrom: a@example.org\r\n")
    with pytest.raises(StaticMessageError, match="no blank line"):
        StaticFactory(headers_only, envelope_sender="b@example.org")
