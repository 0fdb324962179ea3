"""Postfix's ``smtp-sink`` as a test server: fast, pipelining, dumps each message to a file.

smtp-sink is Postfix's own load-test server (no daemon, no configuration): it announces
PIPELINING, 8BITMIME, AUTH PLAIN LOGIN (accepting any credentials, without TLS), and with
``-d`` writes one file per mail transaction. A dump file holds smtp-sink's own headers
(``X-Client-Addr``, ``X-Helo-Args``, ``X-Mail-Args``, ``X-Rcpt-Args``, a three-line
``Received``), then the message as received (dot-stuffing undone, LF line ends), then one
empty line. It does not announce SIZE. As root it needs ``-u USER``.

Its stdout/stderr are never inherited (it can log a line per command): they go to a file.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin:/usr/local/sbin") or ""
_START_ATTEMPTS = 5
_VERBS = frozenset(
    ("helo", "ehlo", "mail", "rcpt", "data", ".", "rset", "noop", "quit", "auth", "starttls")
)


@dataclass(frozen=True)
class DumpedMessage:
    """One mail transaction as smtp-sink dumped it."""

    path: Path
    helo: str | None
    mail_args: str  # e.g. "<a@example.com> BODY=8BITMIME"
    rcpt_args: list[str]  # e.g. ["<r@example.net>"]
    content: bytes  # the message as the client sent it, unstuffed, LF line ends

    @property
    def sender(self) -> str:
        return self.mail_args.split(">", 1)[0].lstrip("<")

    @property
    def recipients(self) -> list[str]:
        return [arg.split(">", 1)[0].lstrip("<") for arg in self.rcpt_args]


def parse_dump(path: Path) -> DumpedMessage:
    """Split a dump file into smtp-sink's headers and the message the client sent."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    helo: str | None = None
    mail_args = ""
    rcpt_args: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        name, _, value = line.partition(b": ")
        text = value.decode("utf-8", "replace")
        if name == b"X-Helo-Args":
            helo = text
        elif name == b"X-Mail-Args":
            mail_args = text
        elif name == b"X-Rcpt-Args":
            rcpt_args.append(text)
        elif name == b"Received":
            i += 3  # "Received: from ...", "\tby ... id ...;", "\t<date>"
            break
        elif not name.startswith(b"X-"):
            raise ValueError(f"{path}: unexpected smtp-sink header line {line[:80]!r}")
        i += 1
    else:
        raise ValueError(f"{path}: no Received header: incomplete dump")
    body = b"\n".join(lines[i:])
    # smtp-sink ends every dump with one empty line after the message's last line.
    if not body.endswith(b"\n\n"):
        raise ValueError(f"{path}: dump does not end with the empty line: incomplete")
    return DumpedMessage(path, helo, mail_args, rcpt_args, body[:-1])


@dataclass
class SmtpSink:
    """A running smtp-sink: where it listens and what it dumped."""

    host: str
    port: int
    dump_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def files(self) -> list[Path]:
        return sorted(
            (p for p in self.dump_dir.rglob("*") if p.is_file()),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )

    def count(self) -> int:
        return len(self.files())

    def messages(self) -> list[DumpedMessage]:
        """Every dumped transaction, roughly oldest first (order by content when it matters)."""
        return [parse_dump(p) for p in self.files()]

    def clear(self) -> None:
        for path in self.files():
            path.unlink(missing_ok=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def commands(self) -> list[str]:
        """The SMTP commands smtp-sink logged (``-v``) as the client sent them, in order."""
        prefix = "smtp-sink: "
        out: list[str] = []
        for line in self.log().splitlines():
            _, sep, rest = line.partition(prefix)
            verb = rest.split(" ", 1)[0].lower()
            if sep and verb in _VERBS:
                out.append(rest)
        return out

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[DumpedMessage]:
        """Block until n transactions are dumped; the dump is complete before smtp-sink
        answers the final dot, so after a 250 this returns at once."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {n} dumps in {self.dump_dir}, got {self.count()}")
            time.sleep(0.01)
        return self.messages()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.settimeout(2)
            return sock.recv(64).startswith(b"220 ")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def running_smtp_sink(workdir: Path, *extra: str, timeout: float = 10.0) -> Iterator[SmtpSink]:
    """Start smtp-sink on a free 127.0.0.1 port, dumping into ``workdir/dump``; always stop it.

    ``extra`` are further smtp-sink options (e.g. ``-p`` for no PIPELINING). ``-v`` is always
    on: the conversation goes to the log file, read with :meth:`SmtpSink.commands`.
    """
    if not SMTP_SINK:
        raise FileNotFoundError("smtp-sink not found (Debian package postfix)")
    dump_dir = workdir / "dump"
    dump_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "smtp-sink.log"
    for _attempt in range(_START_ATTEMPTS):
        port = _free_port()
        argv = [SMTP_SINK, "-u", "root", "-4", "-v", *extra]
        argv += ["-d", f"{dump_dir}/%M.", f"{HOST}:{port}", "256"]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None and not _accepts(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"smtp-sink on port {port} did not accept within {timeout}s:\n"
                        + log_path.read_text(errors="replace")
                    )
                time.sleep(0.02)
            if process.poll() is not None:
                continue  # the port was taken in between (or a bad option): try another one
            yield SmtpSink(HOST, port, dump_dir, log_path, process)
            if process.poll() is not None:
                raise RuntimeError(
                    f"smtp-sink died during the test (rc={process.returncode}):\n"
                    + log_path.read_text(errors="replace")
                )
            return
        finally:
            _stop(process)
    raise RuntimeError(
        f"smtp-sink did not start in {_START_ATTEMPTS} attempts:\n"
        + log_path.read_text(errors="replace")
    )


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    """A private smtp-sink per test (start-up takes a few milliseconds)."""
    if not SMTP_SINK:
        pytest.skip("smtp-sink not found (Debian package postfix)")
    with running_smtp_sink(tmp_path / "smtp-sink") as sink:
        yield sink
