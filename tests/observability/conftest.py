"""Real processes for the observability tests: a private MariaDB server, the sink, a sender,
Prometheus and promtool.

The private ``mariadbd`` gets its own datadir, socket and loopback port inside the test's
temporary directory, so a test may SIGSTOP it without touching the machine's shared MariaDB.
Prometheus tools come from Debian's ``prometheus`` package (tests/setup/install-prometheus.sh).
Missing tools skip the tests with the reason, unless MAILPACER_REQUIRE_PROMETHEUS=1 /
MAILPACER_REQUIRE_MARIADB=1 (then they fail).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import pytest

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(tool: str, env: str, install: str) -> str:
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None
    )
    if path is None:
        reason = f"{tool} is not installed ({install})"
        if os.environ.get(env) == "1":
            pytest.fail(f"{reason}; {env}=1 requires it")
        pytest.skip(reason)
    return path


def need_promtool() -> str:
    return _need(
        "promtool", "MAILPACER_REQUIRE_PROMETHEUS", "bash tests/setup/install-prometheus.sh"
    )


def need_prometheus() -> str:
    return _need(
        "prometheus", "MAILPACER_REQUIRE_PROMETHEUS", "bash tests/setup/install-prometheus.sh"
    )


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout}s (last error: {last})")


def stop(process: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# --------------------------------------------------------------------------- MariaDB


@dataclass
class PrivateMariaDB:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    command: list[str] | None = None

    def kill(self) -> None:
        """SIGKILL the server: clients see connections refused until ``start``."""
        self.process.kill()
        self.process.wait(10)

    def start(self) -> None:
        """Start the server again on the same datadir and port (InnoDB recovers)."""
        assert self.command is not None
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        port = self.port

        def up() -> bool:
            import pymysql

            pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=1).close()
            return True

        wait_until(up, 60, "restarted mariadbd")

    @property
    def server_url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def create_database(self, name: str) -> str:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return f"{self.server_url}/{name}"

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    """A mariadbd of our own: ``mariadb-install-db`` into a temporary datadir (~4 s), then
    ``mariadbd --no-defaults`` on a free 127.0.0.1 port (root without password)."""
    install = _need(
        "mariadb-install-db", "MAILPACER_REQUIRE_MARIADB", "apt-get install mariadb-server"
    )
    server = _need("mariadbd", "MAILPACER_REQUIRE_MARIADB", "apt-get install mariadb-server")
    root = tmp_path_factory.mktemp("mariadb")
    datadir = root / "data"
    user = ["--user=root"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [install, "--no-defaults", "--auth-root-authentication-method=normal",
         f"--datadir={datadir}", "--skip-test-db", "--skip-name-resolve", *user],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"mariadb-install-db failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    port = free_port()
    log = root / "error.log"
    command = [
        server, "--no-defaults", f"--datadir={datadir}", f"--socket={root / 'sock'}",
        f"--port={port}", "--bind-address=127.0.0.1", f"--pid-file={root / 'pid'}",
        f"--log-error={log}", "--skip-name-resolve", "--skip-log-bin",
        "--innodb-buffer-pool-size=64M", *user,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle = PrivateMariaDB(process, port, root, command)
    try:

        def up() -> bool:
            import pymysql

            if process.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:] if log.exists() else "exited")
            pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=1).close()
            return True

        wait_until(up, 60, "private mariadbd")
        yield handle
    finally:
        stop(handle.process, timeout=30)


# --------------------------------------------------------------------------- sink + sender


@dataclass
class Running:
    process: subprocess.Popen[str]
    address: str  # host:port
    log: TextIO | None = None

    def close(self) -> None:
        stop(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.log is not None:
            self.log.close()

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Running]:
    process = subprocess.Popen(
        [PYTHON, "-m", "mailpacer", "sink", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, line
        running = Running(process, line.rsplit(" ", 1)[1].strip())
        yield running
    finally:
        stop(process)
        assert process.stdout is not None
        process.stdout.close()


def write_campaign(directory: Path, recipients: int) -> tuple[Path, Path]:
    template = directory / "template"
    template.mkdir()
    (template / "subject.j2").write_text("Hello {{ first_name }}\n")
    (template / "body.txt.j2").write_text("Dear {{ first_name }},\nthis is a test.\n")
    csv = directory / "list.csv"
    lines = ["email,first_name"] + [f"r{i}@example.com,Name{i}" for i in range(recipients)]
    csv.write_text("\n".join(lines) + "\n")
    return csv, template


def start_sender(
    tmp_path: Path, relay: str, db: str, *, recipients: int, rate: str, extra: tuple[str, ...] = ()
) -> Running:
    """``mailpacer send --http`` in a process of its own; returns once /healthz answers."""
    csv, template = write_campaign(tmp_path, recipients)
    port = free_port()
    log = open(tmp_path / "sender.log", "w")  # noqa: SIM115 - closed by Running.close
    process = subprocess.Popen(
        [PYTHON, "-m", "mailpacer", "send", "--recipients", str(csv), "--template",
         str(template), "--from", "News <news@example.com>", "--relay", relay, "--db", db,
         "--rate", rate, "--http", f"127.0.0.1:{port}", "--no-progress", *extra],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    running = Running(process, f"127.0.0.1:{port}", log)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError((tmp_path / "sender.log").read_text())
        return httpx.get(f"{running.url}/healthz", timeout=1).status_code in (200, 503)

    try:
        wait_until(up, 30, "the sender's /healthz")
    except BaseException:
        running.close()
        raise
    return running


@pytest.fixture
def sender_log(tmp_path: Path) -> Path:
    return tmp_path / "sender.log"
