"""Make the private-Postfix fixtures available to the tests in this directory."""

from .postfix_smtpd import postfix_available, postfix_smtpd

__all__ = ["postfix_available", "postfix_smtpd"]
