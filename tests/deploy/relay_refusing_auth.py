"""An SMTP relay that offers AUTH without TLS and refuses every login (tests/deploy).

    python relay_refusing_auth.py HOST PORT

The deploy's health gate must fail on it with the doctor's explanation (AUTH refused).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "554 5.7.1 this relay accepts nothing"


def refuse(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=False, handled=False)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    controller = Controller(
        Handler(), hostname=host, port=port, authenticator=refuse, auth_require_tls=False
    )
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"relay refusing AUTH listening on {host}:{port}", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
