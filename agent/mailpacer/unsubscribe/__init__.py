"""Unsubscribes that feed back: signed List-Unsubscribe links (``tokens``), and the one
code path that puts their address on the suppression list (``recorder``). The HTTP side is
:mod:`mailpacer.http.unsubscribe`, the mail side :mod:`mailpacer.bounces.listener`."""

from mailpacer.unsubscribe.recorder import UnsubscribeRecorder
from mailpacer.unsubscribe.tokens import (
    MAILTO_PREFIX,
    Unsubscribe,
    UnsubscribeSettings,
    check_base_url,
    mailto_token,
    make_token,
    read_token,
)

__all__ = [
    "MAILTO_PREFIX",
    "Unsubscribe",
    "UnsubscribeRecorder",
    "UnsubscribeSettings",
    "check_base_url",
    "mailto_token",
    "make_token",
    "read_token",
]
