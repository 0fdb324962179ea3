"""The Trio-native SMTP client: pure protocol pieces, one session, and relay connection set-up."""

from mailpacer.smtp.client import (
    Batch,
    OutboundMessage,
    ResultKind,
    SendResult,
    SMTPAuthError,
    SMTPConnectError,
    SMTPConnection,
    SMTPConnectionLost,
    SMTPError,
    Stage,
    Timeouts,
)
from mailpacer.smtp.connect import make_ssl_context, open_relay
from mailpacer.smtp.protocol import Extensions, Reply, ReplyParser, SMTPProtocolError, dot_stuff

__all__ = [
    "Batch",
    "Extensions",
    "OutboundMessage",
    "Reply",
    "ReplyParser",
    "ResultKind",
    "SMTPAuthError",
    "SMTPConnectError",
    "SMTPConnection",
    "SMTPConnectionLost",
    "SMTPError",
    "SMTPProtocolError",
    "SendResult",
    "Stage",
    "Timeouts",
    "dot_stuff",
    "make_ssl_context",
    "open_relay",
]
