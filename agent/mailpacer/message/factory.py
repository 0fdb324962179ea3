"""From a claimed recipient to an :class:`OutboundMessage` ready for the wire."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from mailpacer.message.address import parse_address
from mailpacer.message.dkim import DkimSigner
from mailpacer.message.headers import format_mailbox
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import RenderError, TemplateSet
from mailpacer.smtp.client import OutboundMessage
from mailpacer.smtp.protocol import dot_stuff, normalize_line_endings

__all__ = ["MessageFactory", "PersonalizedFactory", "StaticFactory", "StaticMessageError"]

UNSUBSCRIBE = "unsubscribe_url"


class MessageFactory(Protocol):
    """Builds one recipient's message; raises (RenderError, ValueError...) when it cannot."""

    uses_variables: bool  # False: build() ignores the recipient's variables

    def build(
        self,
        recipient_id: int,
        email: str,
        variables: dict[str, Any],
        *,
        source_row: int | None = None,
    ) -> OutboundMessage: ...


class PersonalizedFactory:
    """Sandboxed Jinja2 templates + the precompiled MIME skeleton."""

    uses_variables = True

    def __init__(
        self,
        templates: TemplateSet,
        composer: MessageComposer,
        *,
        envelope_sender: str,
        campaign: str,
        name_column: str = "name",
        signer: DkimSigner | None = None,
        return_path: Callable[[int], str] | None = None,
        list_unsubscribe: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        """``return_path(recipient_id)``: a per-recipient envelope sender (VERP), so a
        bounce names whose message failed; default: ``envelope_sender`` for all.
        ``list_unsubscribe(email)``: the agent's signed List-Unsubscribe URIs (HTTPS first),
        used unless the campaign has its own ``unsubscribe_url`` template, which wins."""
        self.return_path = return_path
        self.list_unsubscribe = list_unsubscribe
        self.signer = signer
        self.templates = templates
        self.composer = composer
        self.envelope_sender = envelope_sender
        self.campaign = campaign
        self.name_column = name_column
        self.has_unsubscribe = UNSUBSCRIBE in templates.extra

    def build(
        self,
        recipient_id: int,
        email: str,
        variables: dict[str, Any],
        *,
        source_row: int | None = None,
    ) -> OutboundMessage:
        """Raises RenderError naming the template, the problem and the source row (if given)."""
        context = dict(variables)
        context["email"] = email
        context.setdefault("campaign", self.campaign)
        unsubscribe: str | Sequence[str] | None = None
        try:
            if self.has_unsubscribe:
                unsubscribe = self.templates.render_extra(UNSUBSCRIBE, context)
                context[UNSUBSCRIBE] = unsubscribe
            elif self.list_unsubscribe is not None:
                unsubscribe = self.list_unsubscribe(email)
                context[UNSUBSCRIBE] = unsubscribe[0]  # for a link in the body too
            rendered = self.templates.render(context)
        except RenderError as exc:
            if source_row is None:
                raise
            raise RenderError(f"row {source_row} ({email}): {exc}") from None
        smtputf8 = not email.isascii()
        name = variables.get(self.name_column) or None
        data = self.composer.compose(
            to_header=format_mailbox(name, email),
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=self.composer.new_message_id(f"mp{recipient_id}"),
            list_unsubscribe=unsubscribe,
        )
        if self.signer is not None:
            data = self.signer.sign(data)
        return OutboundMessage(
            sender=self.return_path(recipient_id) if self.return_path else self.envelope_sender,
            recipient=email,
            payload=dot_stuff(data),
            size=len(data),
            eight_bit=smtputf8,
            smtputf8=smtputf8,
            tag=recipient_id,
        )


class StaticMessageError(ValueError):
    """The static message file is unusable."""


class StaticFactory:
    """One prepared .eml sent as is to every recipient (transport only, no personalization)."""

    uses_variables = False

    def __init__(
        self,
        path: Path,
        *,
        envelope_sender: str,
        signer: DkimSigner | None = None,
        return_path: Callable[[int], str] | None = None,
    ) -> None:
        self.return_path = return_path
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise StaticMessageError(f"cannot read message {str(path)!r}: {exc.strerror}") from None
        if b"\n\n" not in raw.replace(b"\r\n", b"\n"):
            raise StaticMessageError(f"{path}: no blank line between headers and body")
        data = normalize_line_endings(raw)
        if signer is not None:  # the same bytes for everyone: signed once
            data = signer.sign(data)
        self.payload = dot_stuff(data)
        self.size = len(data)
        self.eight_bit = any(b > 127 for b in data)
        self.envelope_sender = envelope_sender

    def build(
        self,
        recipient_id: int,
        email: str,
        variables: dict[str, Any],
        *,
        source_row: int | None = None,
    ) -> OutboundMessage:
        return OutboundMessage(
            sender=self.return_path(recipient_id) if self.return_path else self.envelope_sender,
            recipient=email,
            payload=self.payload,
            size=self.size,
            eight_bit=self.eight_bit,
            smtputf8=not email.isascii(),
            tag=recipient_id,
        )


def decode_variables(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("recipient variables are not a JSON object")
    return value


def check_sender(sender: str) -> str:
    """Validate the envelope sender the same way as recipients."""
    return parse_address(sender).address
