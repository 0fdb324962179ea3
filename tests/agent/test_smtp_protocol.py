"""Pure protocol pieces: replies, commands, extensions, dot-stuffing."""

from __future__ import annotations

import base64

import pytest

from mailpacer.smtp.protocol import (
    Extensions,
    Reply,
    ReplyParser,
    SMTPProtocolError,
    auth_plain,
    dot_stuff,
    mail_command,
    normalize_line_endings,
    rcpt_command,
)


def parse_all(*chunks: bytes) -> list[Reply]:
    parser = ReplyParser()
    replies = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    return replies


def test_single_and_multiline_replies() -> None:
    replies = parse_all(b"250-first\r\n250-second\r\n250 last\r\n354 go\r\n")
    assert replies == [Reply(250, ("first", "second", "last")), Reply(354, ("go",))]


def test_reply_split_across_reads_and_bare_lf() -> None:
    replies = parse_all(b"25", b"0 2.1.0 O", b"k\n550-5.1.1 no\r", b"\n550 5.1.1 such user\r\n")
    assert replies[0] == Reply(250, ("2.1.0 Ok",))
    assert replies[1].code == 550
    assert replies[1].lines == ("5.1.1 no", "5.1.1 such user")
    assert replies[1].enhanced_status == "5.1.1"
    assert replies[1].is_permanent


def test_code_only_reply() -> None:
    assert parse_all(b"250\r\n") == [Reply(250, ("",))]


@pytest.mark.parametrize(
    "garbage",
    [b"hello\r\n", b"25x ok\r\n", b"999 nope\r\n", b"250?ok\r\n", b"250-a\r\n251 b\r\n"],
)
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(SMTPProtocolError):
        parse_all(garbage)


def test_endless_line_is_refused() -> None:
    parser = ReplyParser()
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"250 " + b"x" * 10_000)


def test_extensions_from_ehlo() -> None:
    ehlo = parse_all(
        b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-AUTH PLAIN LOGIN\r\n"
        b"250-STARTTLS\r\n250 SMTPUTF8\r\n"
    )[0]
    ext = Extensions.from_ehlo(ehlo)
    assert ext.pipelining
    assert ext.starttls
    assert ext.smtputf8
    assert not ext.eightbitmime
    assert ext.size_limit == 1000
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN"}
    assert Extensions.from_ehlo(Reply(250, ("x", "SIZE"))).size_limit is None


def test_mail_and_rcpt_commands() -> None:
    assert mail_command("a@example.com") == b"MAIL FROM:<a@example.com>\r\n"
    assert (
        mail_command("a@example.com", size=42, body_8bit=True, smtputf8=True)
        == b"MAIL FROM:<a@example.com> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n"
    )
    assert rcpt_command("jörg@exämple.de") == "RCPT TO:<jörg@exämple.de>\r\n".encode()


@pytest.mark.parametrize(
    "evil", ["a@example.com>\r\nRCPT TO:<x@y.z", "a@b.c\nDATA", "a b@c.d", "<a@b.c>", "a\x00@b.c"]
)
def test_envelope_injection_is_refused(evil: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        rcpt_command(evil)
    with pytest.raises(ValueError, match="unsafe"):
        mail_command(evil)


def test_auth_plain_encoding() -> None:
    line = auth_plain("user", "pässword")
    assert line.startswith(b"AUTH PLAIN ")
    assert line.endswith(b"\r\n")
    assert base64.b64decode(line[11:-2]) == b"\0user\0p\xc3\xa4ssword"


def test_dot_stuffing_and_terminator() -> None:
    assert dot_stuff(b".first\r\nmid\r\n.\r\n..two\r\nend") == (
        b"..first\r\nmid\r\n..\r\n...two\r\nend\r\n.\r\n"
    )
    assert dot_stuff(b"ends with crlf\r\n") == b"ends with crlf\r\n.\r\n"


def test_line_endings_normalized() -> None:
    assert normalize_line_endings(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"
