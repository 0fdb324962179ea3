"""The SMTP client against a scripted server over memory streams (no sockets).

These pin down the behaviour real servers cannot be made to show on demand: drops after
the final dot, 421 in the middle of a pipeline, stalls, rejections at each stage.
"""

from __future__ import annotations

import contextlib
import email
import email.policy

import pytest
import trio
import trio.testing

from mailpacer.smtp import (
    Batch,
    OutboundMessage,
    ResultKind,
    SMTPAuthError,
    SMTPConnectError,
    SMTPConnection,
    SMTPConnectionLost,
    Stage,
    Timeouts,
    dot_stuff,
)

from .fakesmtp import CLOSE, STALL, FakeSMTP


def message(n: int, body: bytes = b"", **kw: object) -> OutboundMessage:
    data = f"From: a@example.com\r\nTo: r{n}@example.net\r\nSubject: {n}\r\n\r\n".encode() + (
        body or f"body {n}\r\n.starts with a dot\r\n".encode()
    )
    return OutboundMessage(
        "a@example.com", f"r{n}@example.net", dot_stuff(data), len(data), tag=n, **kw
    )  # type: ignore[arg-type]


async def connect(server: FakeSMTP, nursery: trio.Nursery, **kw: object) -> SMTPConnection:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve, server_stream)
    connection = SMTPConnection(client_stream, local_hostname="client.test", **kw)  # type: ignore[arg-type]
    await connection.greet()
    await connection.ehlo()
    return connection


async def send(connection: SMTPConnection, messages: list[OutboundMessage]) -> list:
    batch = Batch(messages)
    with contextlib.suppress(SMTPConnectionLost):
        await connection.send(batch)
    return batch.finish("lost")


@pytest.mark.parametrize("pipelining", [True, False])
async def test_many_messages_per_connection(nursery: trio.Nursery, pipelining: bool) -> None:
    server = FakeSMTP(pipelining=pipelining)
    connection = await connect(server, nursery)
    assert connection.extensions.pipelining is pipelining
    msgs = [message(i) for i in range(5)]
    results = await send(connection, msgs)
    assert [r.kind for r in results] == [ResultKind.SENT] * 5
    assert [r.stage for r in results] == [Stage.DOT] * 5
    assert connection.messages_sent == 5
    # Dot-stuffing round-trips: the server saw each message exactly as built.
    for n, received in enumerate(server.messages):
        parsed = email.message_from_bytes(received, policy=email.policy.default)
        assert parsed["Subject"] == str(n)
        assert b"\r\n.starts with a dot\r\n" in received
    mails = [c for c in server.commands if c.startswith("MAIL")]
    assert mails[0] == f"MAIL FROM:<a@example.com> SIZE={msgs[0].size}"
    await connection.quit()
    assert server.commands[-1] == "QUIT"


async def test_pipelining_costs_one_read_per_message(nursery: trio.Nursery) -> None:
    server = FakeSMTP(pipelining=True)
    connection = await connect(server, nursery)
    reads_before = server.reads
    await send(connection, [message(i) for i in range(10)])
    # One group per message: body + next MAIL/RCPT/DATA travel together.
    assert server.reads - reads_before <= 11
    lockstep = FakeSMTP(pipelining=False)
    connection2 = await connect(lockstep, nursery)
    before = lockstep.reads
    await send(connection2, [message(i) for i in range(10)])
    assert lockstep.reads - before >= 40


@pytest.mark.parametrize("pipelining", [True, False])
async def test_rejected_recipient_then_rset_then_next(
    nursery: trio.Nursery, pipelining: bool
) -> None:
    def script(command: str) -> str | None:
        if command.startswith("RCPT TO:<r1@"):
            return "550 5.1.1 no such user"
        if command == "DATA" and rejected_last[0]:
            return "554 5.5.1 no valid recipients"
        return None

    rejected_last = [False]

    def track(command: str) -> str | None:
        reply = script(command)
        if command.startswith("RCPT"):
            rejected_last[0] = reply is not None
        return reply

    server = FakeSMTP(pipelining=pipelining, script=track)
    connection = await connect(server, nursery)
    results = await send(connection, [message(0), message(1), message(2)])
    assert [r.kind for r in results] == [ResultKind.SENT, ResultKind.PERMANENT, ResultKind.SENT]
    assert results[1].stage is Stage.RCPT
    assert results[1].reply is not None
    assert results[1].reply.code == 550
    assert "RSET" in server.commands
    assert len(server.messages) == 2


async def test_transient_replies_at_each_stage(nursery: trio.Nursery) -> None:
    def script(command: str) -> str | None:
        if command.startswith("MAIL") and "SIZE=" in command:
            calls.append(1)
            if len(calls) == 1:
                return "451 4.3.0 try later"
        return None

    calls: list[int] = []
    server = FakeSMTP(
        script=script,
        on_data_end=lambda m: "452 4.3.1 insufficient storage" if b"Subject: 2" in m else "250 ok",
    )
    connection = await connect(server, nursery)
    results = await send(connection, [message(0), message(1), message(2)])
    assert results[0].kind is ResultKind.TRANSIENT
    assert results[0].stage is Stage.MAIL
    assert results[1].kind is ResultKind.SENT
    assert results[2].kind is ResultKind.TRANSIENT
    assert results[2].stage is Stage.DOT
    assert str(results[2].reply) == "452 4.3.1 insufficient storage"


@pytest.mark.parametrize("pipelining", [True, False])
async def test_drop_after_dot_is_uncertain_never_sent(
    nursery: trio.Nursery, pipelining: bool
) -> None:
    server = FakeSMTP(
        pipelining=pipelining,
        on_data_end=lambda m: CLOSE if b"Subject: 1" in m else "250 ok",
    )
    connection = await connect(server, nursery)
    batch = Batch([message(0), message(1), message(2)])
    with pytest.raises(SMTPConnectionLost):
        await connection.send(batch)
    results = batch.finish("lost")
    assert [r.kind for r in results] == [
        ResultKind.SENT,
        ResultKind.UNCERTAIN,
        ResultKind.NOT_SENT,
    ]
    assert connection.broken


async def test_drop_before_data_is_not_sent(nursery: trio.Nursery) -> None:
    server = FakeSMTP(script=lambda c: CLOSE if c.startswith("RCPT TO:<r1@") else None)
    connection = await connect(server, nursery)
    results = await send(connection, [message(0), message(1), message(2)])
    assert [r.kind for r in results] == [
        ResultKind.SENT,
        ResultKind.NOT_SENT,
        ResultKind.NOT_SENT,
    ]


async def test_421_mid_pipeline_defers_and_closes(nursery: trio.Nursery) -> None:
    server = FakeSMTP(
        script=lambda c: "421 4.7.0 slow down" if c.startswith("MAIL") and "r1" in c else None
    )

    def script(command: str) -> str | None:
        if command.startswith("RCPT TO:<r1@"):
            return "421 4.7.0 too many connections, slow down"
        return None

    server = FakeSMTP(script=script)
    connection = await connect(server, nursery)
    results = await send(connection, [message(0), message(1), message(2)])
    assert results[0].kind is ResultKind.SENT
    assert results[1].kind is ResultKind.TRANSIENT
    assert "slow down" in str(results[1].reply)
    assert results[2].kind is ResultKind.NOT_SENT
    assert connection.broken


async def test_stall_after_dot_times_out_as_uncertain(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = FakeSMTP(on_data_end=lambda m: STALL)
    connection = await connect(server, nursery, timeouts=Timeouts.uniform(30))
    start = trio.current_time()
    batch = Batch([message(0)])
    with pytest.raises(SMTPConnectionLost, match="timed out"):
        await connection.send(batch)
    waited = trio.current_time() - start
    assert 30 <= waited <= 45
    assert batch.finish("timeout")[0].kind is ResultKind.UNCERTAIN


async def test_helo_fallback(nursery: trio.Nursery) -> None:
    server = FakeSMTP(esmtp=False)
    connection = await connect(server, nursery)
    assert not connection.esmtp
    assert server.commands[:2] == ["EHLO client.test", "HELO client.test"]
    results = await send(connection, [message(0)])
    assert results[0].kind is ResultKind.SENT
    assert server.commands[2] == "MAIL FROM:<a@example.com>"  # no ESMTP parameters


async def test_size_and_smtputf8_refused_locally(nursery: trio.Nursery) -> None:
    server = FakeSMTP(extensions=["SIZE 200"])
    connection = await connect(server, nursery)
    big = message(0, body=b"x" * 500 + b"\r\n")
    utf8 = OutboundMessage("a@example.com", "jörg@example.net", b"x\r\n.\r\n", 3, smtputf8=True)
    results = await send(connection, [big, utf8, message(2)])
    assert results[0].kind is ResultKind.PERMANENT
    assert results[0].stage is Stage.LOCAL
    assert "SIZE" in results[0].detail
    assert results[1].kind is ResultKind.PERMANENT
    assert "SMTPUTF8" in results[1].detail
    assert results[2].kind is ResultKind.SENT
    assert len(server.messages) == 1


async def test_eight_bit_and_smtputf8_parameters(nursery: trio.Nursery) -> None:
    server = FakeSMTP(extensions=["8BITMIME", "SMTPUTF8"])
    connection = await connect(server, nursery)
    utf8 = OutboundMessage(
        "a@example.com", "jörg@example.net", b"\xc3\xa4\r\n.\r\n", 3, eight_bit=True, smtputf8=True
    )
    results = await send(connection, [utf8])
    assert results[0].kind is ResultKind.SENT
    assert "MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8" in server.commands


async def test_auth_needs_tls_unless_allowed(nursery: trio.Nursery) -> None:
    server = FakeSMTP(extensions=["AUTH PLAIN LOGIN"])
    connection = await connect(server, nursery)
    with pytest.raises(SMTPAuthError, match="without TLS"):
        await connection.login("u", "p")
    assert not any(c.startswith("AUTH") for c in server.commands)


@pytest.mark.parametrize(
    ("offered", "expected"), [("AUTH PLAIN LOGIN", "AUTH PLAIN"), ("AUTH LOGIN", "AUTH LOGIN")]
)
async def test_auth_mechanisms(nursery: trio.Nursery, offered: str, expected: str) -> None:
    def script(command: str) -> str | None:
        if command.startswith("AUTH PLAIN "):
            return "235 2.7.0 ok"
        if command == "AUTH LOGIN":
            return "334 VXNlcm5hbWU6"
        if command == "dQ==":  # "u"
            return "334 UGFzc3dvcmQ6"
        if command == "cA==":  # "p"
            return "235 2.7.0 ok"
        return None

    server = FakeSMTP(extensions=[offered], script=script)
    connection = await connect(server, nursery)
    await connection.login("u", "p", allow_plaintext=True)
    assert connection.authenticated
    assert any(c.startswith(expected) for c in server.commands)


async def test_wrong_password(nursery: trio.Nursery) -> None:
    server = FakeSMTP(
        extensions=["AUTH PLAIN"],
        script=lambda c: "535 5.7.8 authentication failed" if c.startswith("AUTH") else None,
    )
    connection = await connect(server, nursery)
    with pytest.raises(SMTPAuthError, match="535"):
        await connection.login("u", "wrong", allow_plaintext=True)


async def test_refused_session(nursery: trio.Nursery) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(FakeSMTP(greeting="554 5.7.1 go away").serve, server_stream)
    connection = SMTPConnection(client_stream)
    with pytest.raises(SMTPConnectError, match="554") as info:
        await connection.greet()
    assert info.value.transient is False


async def test_starttls_response_injection_is_refused(nursery: trio.Nursery) -> None:
    server = FakeSMTP(
        extensions=["STARTTLS"],
        script=lambda c: "220 2.0.0 ready\r\n250 injected" if c == "STARTTLS" else None,
    )
    connection = await connect(server, nursery)
    import ssl

    with pytest.raises(SMTPConnectError, match="after its STARTTLS reply"):
        await connection.starttls(ssl.create_default_context(), "fake.test")


async def test_cancelled_mid_batch_leaves_outcomes_classifiable(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = FakeSMTP(on_data_end=lambda m: STALL if b"Subject: 1" in m else "250 ok")
    connection = await connect(server, nursery)
    batch = Batch([message(0), message(1), message(2)])
    with trio.move_on_after(5):
        await connection.send(batch)
    results = batch.finish("stopped")
    assert [r.kind for r in results] == [
        ResultKind.SENT,
        ResultKind.UNCERTAIN,
        ResultKind.NOT_SENT,
    ]
