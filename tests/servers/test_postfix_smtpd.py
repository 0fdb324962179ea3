"""Prove the private Postfix fixture with the stdlib client, over real sockets on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import ssl
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
import trio

from . import postfix_smtpd as postfix_smtpd_module
from .postfix_smtpd import (
    PostfixServer,
    PostfixStartError,
    instance_processes,
    is_running,
    running_postfix,
)

MECHANISMS = ["PLAIN", "LOGIN"]


def _message(subject: str, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "campaign@sender.example"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@sender.example>"
    msg.set_content(f"Body of {subject}\n")
    return msg


def _starttls_client(server: PostfixServer) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, timeout=10)
    client.ehlo()
    client.starttls(context=server.ssl_context())
    client.ehlo()
    return client


def _auth(client: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH exchange with the given mechanism (smtplib.login would pick one itself)."""
    client.user, client.password = user, password
    return client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))


def test_starttls_verifies_against_the_test_ca(postfix_smtpd: PostfixServer) -> None:
    with smtplib.SMTP(postfix_smtpd.host, postfix_smtpd.port, timeout=10) as client:
        assert client.ehlo()[0] == 250
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=postfix_smtpd.ssl_context())
        assert code == 220
        assert isinstance(client.sock, ssl.SSLSocket)
        cert = client.sock.getpeercert()
        assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
        assert client.ehlo()[0] == 250


def test_starttls_is_rejected_without_the_test_ca(postfix_smtpd: PostfixServer) -> None:
    """The system trust store does not know the test CA, so verification must fail."""
    with smtplib.SMTP(postfix_smtpd.host, postfix_smtpd.port, timeout=10) as client:
        client.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())


def test_auth_not_offered_or_accepted_before_tls(postfix_smtpd: PostfixServer) -> None:
    with smtplib.SMTP(postfix_smtpd.host, postfix_smtpd.port, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        client.esmtp_features["auth"] = "PLAIN LOGIN"  # force smtplib to try anyway
        for mechanism in MECHANISMS:
            # smtplib returns 503 instead of raising (it reads it as "already authenticated").
            code, reply = _auth(client, mechanism, postfix_smtpd.username, postfix_smtpd.password)
            assert (code, reply) == (503, b"5.5.1 Error: authentication not enabled")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_auth_succeeds_after_starttls(postfix_smtpd: PostfixServer, mechanism: str) -> None:
    with _starttls_client(postfix_smtpd) as client:
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        code, reply = _auth(client, mechanism, postfix_smtpd.username, postfix_smtpd.password)
        assert (code, reply) == (235, b"2.7.0 Authentication successful")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_fails_with_535(postfix_smtpd: PostfixServer, mechanism: str) -> None:
    with _starttls_client(postfix_smtpd) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            _auth(client, mechanism, postfix_smtpd.username, "not-the-password")
        assert err.value.smtp_code == 535


def test_unauthenticated_mail_is_refused(postfix_smtpd: PostfixServer) -> None:
    with _starttls_client(postfix_smtpd) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            client.send_message(_message("no auth", ["rcpt@example.com"]))
        ((code, _),) = err.value.recipients.values()
        assert code == 554


def test_message_sent_after_auth_is_received(postfix_smtpd: PostfixServer) -> None:
    postfix_smtpd.clear()
    recipients = ["first@example.com", "second@example.net"]
    sent = _message("starttls delivery", recipients)
    with _starttls_client(postfix_smtpd) as client:
        client.login(postfix_smtpd.username, postfix_smtpd.password)
        assert client.send_message(sent) == {}

    raw = postfix_smtpd.wait_for_count(2)
    assert postfix_smtpd.count() == 2
    parsed = [email.message_from_bytes(m, policy=email.policy.default) for m in raw]
    assert sorted(str(m["Delivered-To"]) for m in parsed) == recipients
    for m in parsed:
        assert m["Message-ID"] == sent["Message-ID"]
        assert m["Return-Path"] == "<campaign@sender.example>"
        assert m.get_content() == "Body of starttls delivery\n"
        received = str(m["Received"])
        assert f"Authenticated sender: {postfix_smtpd.username}" in received
        assert "with ESMTPSA" in received  # S = TLS, A = authenticated


def test_implicit_tls_port(postfix_smtpd: PostfixServer) -> None:
    assert postfix_smtpd.smtps_port is not None
    postfix_smtpd.clear()
    with smtplib.SMTP_SSL(
        postfix_smtpd.host,
        postfix_smtpd.smtps_port,
        context=postfix_smtpd.ssl_context(),
        timeout=10,
    ) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        client.login(postfix_smtpd.username, postfix_smtpd.password)
        msg = _message("smtps delivery", ["rcpt@example.org"])
        del msg["Message-ID"]
        client.send_message(msg)
    (raw,) = postfix_smtpd.wait_for_count(1)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "smtps delivery"
    assert "Message-ID" not in parsed  # delivered as sent: Postfix added no headers of its own


async def test_trio_test_can_await_delivery(postfix_smtpd: PostfixServer) -> None:
    """Trio tests (trio_mode) send in a thread and await delivery without blocking the loop."""
    postfix_smtpd.clear()

    def send() -> None:
        with _starttls_client(postfix_smtpd) as client:
            client.login(postfix_smtpd.username, postfix_smtpd.password)
            for i in range(3):
                client.send_message(_message(f"trio {i}", [f"r{i}@example.com"]))

    await trio.to_thread.run_sync(send)
    received = await postfix_smtpd.wait_for_count_async(3)
    assert len(received) == 3


def test_instance_is_private_and_logged(postfix_smtpd: PostfixServer) -> None:
    assert postfix_smtpd.host == "127.0.0.1"
    assert 25 not in (postfix_smtpd.port, postfix_smtpd.smtps_port)
    assert postfix_smtpd.port >= 1024
    assert postfix_smtpd.startup_seconds < 30
    log = postfix_smtpd.maillog()
    assert f"configuration {postfix_smtpd.root}/conf" in log
    assert "/etc/postfix" not in log


def test_second_instance_runs_in_parallel_and_stops_cleanly(
    postfix_smtpd: PostfixServer, tmp_path: Path
) -> None:
    with running_postfix(tmp_path, smtps=False, require_auth=False) as other:
        assert other.smtps_port is None
        assert other.port != postfix_smtpd.port
        assert other.root != postfix_smtpd.root
        master_pid = int((other.root / "queue" / "pid" / "master.pid").read_text())
        pids = instance_processes(other.root)
        assert master_pid in pids
        with smtplib.SMTP(other.host, other.port, timeout=10) as client:
            client.send_message(_message("no auth needed", ["rcpt@example.com"]))
        other.wait_for_count(1)
    # Finalizer: all its processes are gone, its files deleted, its port closed.
    assert not [pid for pid in pids if is_running(pid)]
    assert not other.root.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((other.host, other.port), timeout=5).close()
    # ... and the maillog was kept for post-mortems.
    assert "daemon started" in (tmp_path / "postfix-maillog").read_text()
    # The shared instance is unaffected.
    with _starttls_client(postfix_smtpd) as client:
        assert client.noop()[0] == 250


@pytest.mark.slow  # a failed bind costs Postfix's master ~3s before it reports
def test_port_taken_between_pick_and_bind_is_retried(
    postfix_smtpd: PostfixServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel runs may grab a picked port before master binds it: start-up must retry."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        real_free_ports = postfix_smtpd_module._free_ports
        picks: list[list[int]] = []

        def first_pick_collides(n: int) -> list[int]:
            ports = real_free_ports(n)
            picks.append([taken, *ports[1:]] if not picks else ports)
            return picks[-1]

        monkeypatch.setattr(postfix_smtpd_module, "_free_ports", first_pick_collides)
        with running_postfix(smtps=False) as other:
            assert len(picks) == 2
            assert other.port != taken
            assert "Address already in use" in other.maillog()
            with _starttls_client(other) as client:
                assert client.noop()[0] == 250


@pytest.mark.usefixtures("postfix_available")
def test_start_failure_is_reported_with_the_maillog_and_cleaned_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broken instance must fail fast with Postfix's own diagnosis and leave nothing behind."""
    real_main_cf = postfix_smtpd_module._main_cf
    roots: list[Path] = []

    def broken_main_cf(root: Path, **kwargs: bool) -> str:
        roots.append(root)
        return real_main_cf(root, **kwargs) + "smtpd_tls_chain_files = /nonexistent/server.pem\n"

    monkeypatch.setattr(postfix_smtpd_module, "_main_cf", broken_main_cf)
    started = time.monotonic()
    with pytest.raises(PostfixStartError) as err, running_postfix(start_timeout=20):
        pytest.fail("must not start")  # pragma: no cover
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "failed its first SMTP conversation" in message  # at once, not after the timeout
    assert "/nonexistent/server.pem" in message  # Postfix's own diagnosis, from the maillog
    (root,) = roots
    assert not root.exists()
    assert instance_processes(root) == []
