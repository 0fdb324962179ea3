"""Turning a template and a recipient into safe message bytes."""

from mailpacer.message.address import Address, InvalidAddress, parse_address
from mailpacer.message.headers import HeaderInjectionError, format_mailbox
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import Rendered, RenderError, TemplateError, TemplateSet

__all__ = [
    "Address",
    "HeaderInjectionError",
    "InvalidAddress",
    "MessageComposer",
    "RenderError",
    "Rendered",
    "TemplateError",
    "TemplateSet",
    "format_mailbox",
    "parse_address",
]
