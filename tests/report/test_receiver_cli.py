"""`mailpacer report-receiver` as an operator runs it: bad input is one line and exit 2;
a real run prints where it listens and one progress line per accepted report."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mailpacer.report import ReportClient, ReportConfig

from .fakes import SECRET
from .test_http import document

MAILPACER = [sys.executable, "-m", "mailpacer"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILPACER, "report-receiver", *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, secret_file: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = [
        (["--secret-file", str(tmp_path / "nope"), "--db", db], "No such file or directory"),
        (["--secret-file", str(short), "--db", db], "at least 16 bytes (it has 3)"),
        (["--secret-file", str(secret_file), "--db", "postgres://x"], "expected sqlite:///"),
        (["--secret-file", str(secret_file), "--db", "sqlite:////no/such/dir/r.db"],
         "directory '/no/such/dir' does not exist"),
        (["--secret-file", str(secret_file), "--db", db, "--listen", "localhost"],
         "expected HOST:PORT"),
        (["--secret-file", str(secret_file), "--db", db, "--listen", f"127.0.0.1:{port}"],
         f"cannot listen on 127.0.0.1:{port}"),
        (["--secret-file", str(secret_file), "--db", db, "--tls-cert", str(secret_file)],
         "--tls-cert and --tls-key go together"),
    ]  # fmt: skip
    try:
        for args, message in cases:
            result = run(*args)
            assert result.returncode == 2, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith("error: ")
            assert message in lines[0]
            assert "Traceback" not in result.stderr
            assert SECRET.decode() not in result.stderr + result.stdout
    finally:
        busy.close()
    not_sqlite = tmp_path / "garbage.db"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    result = run("--secret-file", str(secret_file), "--db", f"sqlite:///{not_sqlite}",
                 "--listen", "127.0.0.1:0")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: --db ")
    assert "file is not a database" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_real_run_prints_progress_and_stops_on_sigterm(
    tmp_path: Path, secret_file: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    args = [*MAILPACER, "report-receiver", "--listen", "127.0.0.1:0",
            "--secret-file", str(secret_file), "--db", db]  # fmt: skip
    process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stderr is not None
    buffer = b""

    async def line() -> str:
        nonlocal buffer
        assert process.stdout is not None
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "the receiver exited"
            buffer += chunk
        first, _, buffer = buffer.partition(b"\n")
        return first.decode()

    try:
        with trio.fail_after(20):
            listening = await line()
            assert listening.startswith("report-receiver: listening on http://127.0.0.1:")
            url = listening.split()[3].rstrip(",")
            async with ReportClient(ReportConfig(url=url, secret=SECRET, source="cli")) as c:
                assert (await c.post(document(source="cli", count=5))).ok
            progress = await line()
            assert progress.startswith("report-receiver: cli seq 1-5: 5 new events, 0 duplicates")
            assert "| spring running failed 5 sent 10" in progress
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            errors = await process.stderr.receive_some(4096)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
        await process.stderr.aclose()
    assert errors.decode().strip() == "report-receiver: stopped (1 requests accepted, 0 rejected)"
