"""Fixtures shared by every test directory: real SMTP servers on loopback."""

from __future__ import annotations

from .servers.postfix_smtpd import postfix_available, postfix_smtpd

__all__ = ["postfix_available", "postfix_smtpd"]
