"""DKIM: messages signed at build time verify with dkimpy after a real SMTP round trip."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailpacer.message.dkim import DkimError, load_signer

from ..e2e.test_send_cli import TEMPLATE, Sink, people, sink, write_list

__all__ = ["sink"]

DOMAIN = "example.com"
SELECTOR = "mp2026"


def make_key(directory: Path, name: str = "dkim") -> tuple[Path, str]:
    """A fresh RSA key file and the TXT record one would publish for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / f"{name}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def dns_for(record: str, selector: str = SELECTOR, domain: str = DOMAIN):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        wanted = f"{selector}._domainkey.{domain}."
        return record.encode() if name.decode() == wanted else None

    return lookup


MESSAGE = (
    b"From: News <news@example.com>\r\nTo: reader@example.net\r\nSubject: Hello\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://example.com/u?e=1>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nHello reader\r\n"
)


def test_signed_message_verifies_and_tampering_is_detected(tmp_path: Path) -> None:
    key, record = make_key(tmp_path)
    signer = load_signer(domain=DOMAIN, selector=SELECTOR, key_file=key, dns_record=record)
    signed = signer.sign(MESSAGE)
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(signed, dnsfunc=dns_for(record))
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    signed_headers = header.split(" h=", 1)[1].split(";", 1)[0].replace("\r\n", "").replace(" ", "")
    for name in ("from", "to", "subject", "date", "message-id", "list-unsubscribe-post"):
        assert name in signed_headers.lower().split(":")
    assert not dkim.verify(
        signed.replace(b"Hello reader", b"Hello robber"), dnsfunc=dns_for(record)
    )
    assert not dkim.verify(
        signed.replace(b"Subject: Hello", b"Subject: Win"), dnsfunc=dns_for(record)
    )


def test_unreadable_or_garbage_key(tmp_path: Path) -> None:
    with pytest.raises(DkimError, match="cannot read DKIM key"):
        load_signer(domain=DOMAIN, selector=SELECTOR, key_file=tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n"
    )
    with pytest.raises(DkimError, match="not a usable"):
        load_signer(domain=DOMAIN, selector=SELECTOR, key_file=garbage)


def test_key_not_matching_the_published_record(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "one")
    _, other_record = make_key(tmp_path, "two")
    with pytest.raises(DkimError, match="does not match the public key published for selector"):
        load_signer(domain=DOMAIN, selector=SELECTOR, key_file=key, dns_record=other_record)


@pytest.mark.parametrize(("domain", "selector"), [("exa mple.com", SELECTOR), (DOMAIN, "bad_sel")])
def test_bad_names(tmp_path: Path, domain: str, selector: str) -> None:
    key, _ = make_key(tmp_path)
    with pytest.raises(DkimError, match="not a valid DNS name"):
        load_signer(domain=domain, selector=selector, key_file=key)


def run_send(tmp_path: Path, sink: Sink, *extra: str) -> subprocess.CompletedProcess[str]:
    csv_path = write_list(tmp_path / "list.csv", people(40))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mailpacer",
            "send",
            "--recipients",
            str(csv_path),
            "--template",
            str(TEMPLATE),
            "--from",
            f"News <news@{DOMAIN}>",
            "--relay",
            sink.relay,
            "--db",
            f"sqlite:///{tmp_path / 'l.db'}",
            "--unsubscribe-url",
            "https://example.com/u?e={{ email | urlencode }}",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_received_message_verifies(tmp_path: Path, sink: Sink) -> None:
    key, record = make_key(tmp_path)
    (tmp_path / "record.txt").write_text(record + "\n")
    done = run_send(
        tmp_path,
        sink,
        "--dkim-key",
        str(key),
        "--dkim-selector",
        SELECTOR,
        "--dkim-dns-record",
        str(tmp_path / "record.txt"),
    )
    assert done.returncode == 0, done.stderr
    files = sink.files()
    assert len(files) == 40
    lookup = dns_for(record)
    for path in files:
        raw = path.read_bytes()  # the sink added Return-Path and Delivered-To above it
        assert b"\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;" in raw
        assert dkim.verify(raw, dnsfunc=lookup), path.name


def test_mismatched_key_stops_before_anything_is_sent(tmp_path: Path, sink: Sink) -> None:
    key, _ = make_key(tmp_path, "one")
    _, other = make_key(tmp_path, "two")
    (tmp_path / "record.txt").write_text(other)
    done = run_send(
        tmp_path,
        sink,
        "--dkim-key",
        str(key),
        "--dkim-selector",
        SELECTOR,
        "--dkim-dns-record",
        str(tmp_path / "record.txt"),
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: DKIM key")
    assert "Traceback" not in done.stderr
    assert not sink.files()
    assert not (tmp_path / "l.db").exists()


def test_half_a_dkim_configuration_is_refused(tmp_path: Path, sink: Sink) -> None:
    done = run_send(tmp_path, sink, "--dkim-selector", SELECTOR)
    assert done.returncode == 2
    assert "--dkim-key" in done.stderr
    assert not sink.files()
