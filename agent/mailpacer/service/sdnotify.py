"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

With ``Type=notify`` systemd considers the agent started only after ``READY=1``; with
``WatchdogSec=`` it restarts an agent that stops sending ``WATCHDOG=1``. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import trio

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if watchdog else None

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), self.address)
            except OSError:
                return False
        return True

    async def watchdog(self, alive: Callable[[], bool] | None = None) -> None:
        """Send ``WATCHDOG=1`` every half period while ``alive()`` (default: always)."""
        if self.watchdog_interval is None:
            return
        while True:
            if alive is None or alive():
                self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)
