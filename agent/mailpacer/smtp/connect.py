"""Open a ready-to-send SMTP session to a relay: TCP, TLS, greeting, EHLO, STARTTLS, AUTH."""

from __future__ import annotations

import socket
import ssl

import trio

from mailpacer.config import RelayConfig
from mailpacer.smtp.client import (
    SMTPAuthError,
    SMTPConnectError,
    SMTPConnection,
    SMTPError,
    Timeouts,
)

__all__ = ["make_ssl_context", "open_relay"]


def make_ssl_context(relay: RelayConfig) -> ssl.SSLContext:
    """Certificate verification is on unless the relay URL says ``verify=false``."""
    context = ssl.create_default_context(cafile=relay.cafile)
    if not relay.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def default_hostname() -> str:
    name = socket.getfqdn()
    return name if name and "." in name else "localhost.localdomain"


async def open_relay(
    relay: RelayConfig,
    *,
    timeouts: Timeouts | None = None,
    local_hostname: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> SMTPConnection:
    """Return an authenticated session ready for MAIL FROM, or raise SMTPConnectError/AuthError."""
    timeouts = timeouts or Timeouts()
    hostname = relay.helo or local_hostname or default_hostname()
    context = ssl_context
    if relay.tls != "plain" and context is None:
        try:
            context = make_ssl_context(relay)
        except (OSError, ssl.SSLError) as exc:
            raise SMTPConnectError(
                f"{relay.name}: cannot load CA file {relay.cafile!r}: {exc}", transient=False
            ) from exc
    try:
        with trio.fail_after(timeouts.connect):
            stream: trio.abc.Stream = await trio.open_tcp_stream(relay.host, relay.port)
    except trio.TooSlowError:
        raise SMTPConnectError(
            f"{relay.name}: no TCP connection within {timeouts.connect:g}s"
        ) from None
    except OSError as exc:
        raise SMTPConnectError(f"{relay.name}: cannot connect: {_connect_failure(exc)}") from exc
    if relay.tls == "implicit":
        assert context is not None
        tls_stream = trio.SSLStream(stream, context, server_hostname=relay.host)
        try:
            with trio.fail_after(timeouts.starttls):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            await trio.aclose_forcefully(stream)
            raise SMTPConnectError(f"{relay.name}: TLS handshake timed out") from None
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__ or exc
            raise SMTPConnectError(
                f"{relay.name}: TLS handshake failed: {cause}", transient=False
            ) from exc
        stream = tls_stream
    connection = SMTPConnection(stream, local_hostname=hostname, timeouts=timeouts)
    connection.relay_name = relay.name
    connection.max_messages = relay.max_messages_per_connection
    try:
        await connection.greet()
        await connection.ehlo()
        if relay.tls == "starttls":
            assert context is not None
            await connection.starttls(context, relay.host)
        if relay.username is not None:
            await connection.login(
                relay.username, relay.password or "", allow_plaintext=relay.allow_plain_auth
            )
    except SMTPAuthError as exc:
        await connection.quit()
        raise SMTPAuthError(f"{relay.name}: {exc}", exc.reply) from None
    except SMTPConnectError as exc:
        await connection.aclose()
        raise SMTPConnectError(f"{relay.name}: {exc}", exc.reply, transient=exc.transient) from None
    except SMTPError:
        await connection.aclose()
        raise
    except BaseException:
        await trio.aclose_forcefully(connection.stream)
        raise
    return connection


def _connect_failure(exc: OSError) -> str:
    """The operating system's reasons ("Connection refused"), not trio's wrapper text.

    ``trio.open_tcp_stream`` tries every address and raises "all attempts ... failed" with
    the individual errors as its cause; an operator needs those.
    """
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = []
        for error in cause.exceptions:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            if reason not in reasons:
                reasons.append(reason)
        if reasons:
            return "; ".join(reasons)
    return exc.strerror or str(exc)
