"""A scripted SMTP server over any Trio stream, for faults real servers do not make on demand.

``FakeSMTP`` records every command it received (to assert pipelining and ordering) and
answers through ``script(command) -> reply``. A reply can also be ``CLOSE`` (drop the
connection without answering) or ``STALL`` (never answer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

CLOSE = "<close>"
STALL = "<stall>"

Script = Callable[[str], str | None]


@dataclass
class FakeSMTP:
    pipelining: bool = True
    esmtp: bool = True
    extensions: list[str] = field(default_factory=lambda: ["SIZE 10240000", "8BITMIME"])
    greeting: str = "220 fake.test ESMTP"
    script: Script | None = None
    on_data_end: Callable[[bytes], str] | None = None
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    reads: int = 0  # how many receive_some calls returned data (pipelining shows as few)

    def reply_to(self, command: str) -> str:
        if self.script is not None:
            scripted = self.script(command)
            if scripted is not None:
                return scripted
        verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "EHLO":
            if not self.esmtp:
                return "502 5.5.2 command not recognized"
            ext = list(self.extensions)
            if self.pipelining:
                ext.append("PIPELINING")
            lines = ["fake.test greets you", *ext]
            return "\r\n".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)
            )
        if verb == "HELO":
            return "250 fake.test"
        if verb in ("MAIL", "RCPT", "RSET"):
            return "250 2.0.0 OK"
        if verb == "DATA":
            return "354 go ahead"
        if verb == "QUIT":
            return "221 2.0.0 bye"
        return "500 5.5.1 unknown command"

    async def serve(self, stream: trio.abc.Stream) -> None:
        buffer = b""
        in_data = False
        try:
            await stream.send_all(self.greeting.encode() + b"\r\n")
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                self.reads += 1
                buffer += chunk
                out: list[bytes] = []
                while True:
                    if in_data:
                        if buffer.startswith(b".\r\n"):  # an empty body
                            body, buffer = b"", buffer[3:]
                        else:
                            end = buffer.find(b"\r\n.\r\n")
                            if end < 0:
                                break
                            body = buffer[: end + 2]
                            buffer = buffer[end + 5 :]
                        in_data = False
                        message = body.replace(b"\r\n..", b"\r\n.")
                        if message.startswith(b".."):
                            message = message[1:]
                        self.messages.append(message)
                        self.commands.append("<data>")
                        reply = (
                            self.on_data_end(message) if self.on_data_end else "250 2.0.0 queued"
                        )
                    else:
                        end = buffer.find(b"\r\n")
                        if end < 0:
                            break
                        line = buffer[:end].decode("utf-8", "replace")
                        buffer = buffer[end + 2 :]
                        self.commands.append(line)
                        reply = self.reply_to(line)
                        if line.upper() == "DATA" and reply.startswith("354"):
                            in_data = True
                    if reply == CLOSE:
                        if out:
                            await stream.send_all(b"".join(out))
                        await stream.aclose()
                        return
                    if reply == STALL:
                        if out:
                            await stream.send_all(b"".join(out))
                        await trio.sleep_forever()
                    out.append(reply.encode() + b"\r\n")
                    if line_is_quit(self.commands[-1]):
                        await stream.send_all(b"".join(out))
                        await stream.aclose()
                        return
                if out:
                    await stream.send_all(b"".join(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def line_is_quit(command: str) -> bool:
    return command.upper() == "QUIT"
