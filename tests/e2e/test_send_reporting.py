"""`mailpacer send --report-url` against the real reference receiver (`report-receiver`)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .test_send_cli import Sink, people, send_args, sink, write_list

__all__ = ["sink"]

SECRET = "0123456789abcdef-test-secret"


@dataclass
class Receiver:
    url: str
    db: Path
    process: subprocess.Popen[str]

    def events(self) -> list[tuple[int, str, int | None, str]]:
        with sqlite3.connect(self.db) as conn:
            return list(
                conn.execute("SELECT seq, type, recipient_id, data FROM events ORDER BY seq")
            )


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    db = tmp_path / "receiver.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailpacer",
            "report-receiver",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            str(secret),
            "--db",
            f"sqlite:///{db}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening on" in line, line
    url = line.split("listening on ", 1)[1].split(",", 1)[0].strip()
    try:
        yield Receiver(url, db, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_every_outcome_reaches_the_main_server_once(
    tmp_path: Path, sink: Sink, receiver: Receiver
) -> None:
    rows = people(60)
    csv_path = write_list(tmp_path / "list.csv", rows)
    (tmp_path / "secret").write_text(SECRET)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailpacer",
            *send_args(csv_path, tmp_path / "l.db", sink.relay, "--json"),
            "--report-url",
            receiver.url,
            "--report-secret-file",
            str(tmp_path / "secret"),
            "--report-detail",
            "all",
            "--report-wait",
            "60s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["sent"] == 60
    events = receiver.events()
    kinds = Counter(kind for _, kind, _, _ in events)
    assert kinds == {"campaign.started": 1, "recipient.sent": 60, "campaign.finished": 1}
    seqs = [seq for seq, _, _, _ in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert events[0][1] == "campaign.started"
    assert events[-1][1] == "campaign.finished"
    emails = {json.loads(data)["email"] for _, kind, _, data in events if kind == "recipient.sent"}
    assert emails == {r["email"] for r in rows}
    assert json.loads(events[-1][3])["counts"]["sent"] == 60
    # The last report waited for the 15-s floor after the first one, not longer.
    assert 14 <= elapsed < 60

    # Nothing is left in the sender's outbox.
    with sqlite3.connect(tmp_path / "l.db") as conn:
        query = "SELECT COUNT(*) FROM events WHERE delivered_at IS NULL"
        (undelivered,) = conn.execute(query).fetchone()
        assert undelivered == 0


def test_bad_report_options_are_refused_before_sending(tmp_path: Path, sink: Sink) -> None:
    csv_path = write_list(tmp_path / "list.csv", people(3))
    (tmp_path / "short").write_text("too-short")
    for extra, needle in (
        (["--report-url", "http://127.0.0.1:9/x"], "--report-secret-file"),
        (["--report-url", "ftp://x", "--report-secret-file", str(tmp_path / "short")], "url"),
        (["--report-url", "http://x/", "--report-secret-file", str(tmp_path / "short")], "16"),
        (["--report-url", "http://x/", "--report-secret-file", str(tmp_path / "none")], "cannot"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mailpacer",
                *send_args(csv_path, tmp_path / "l.db", sink.relay),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (extra, done.stderr)
        assert done.stderr.startswith("error: "), done.stderr
        assert needle in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert "too-short" not in done.stderr  # the secret is never printed
    assert not sink.files()


def test_reporter_state_is_on_readyz_and_metrics(tmp_path: Path, sink: Sink) -> None:
    """While the main server is down: the backlog and the breaker show, sending goes on."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    (tmp_path / "secret").write_text(SECRET)
    csv_path = write_list(tmp_path / "list.csv", people(400))
    process = subprocess.Popen(
        [sys.executable, "-m", "mailpacer",
         *send_args(csv_path, tmp_path / "l.db", sink.relay, "--rate", "40/s"),
         "--http", f"127.0.0.1:{http_port}", "--report-detail", "all", "--report-wait", "0s",
         "--report-url", f"http://127.0.0.1:{dead}/progress",
         "--report-secret-file", str(tmp_path / "secret")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as client:
            while True:
                try:
                    reporter = client.get("/readyz").json()["components"]["reporter"]
                    metrics = client.get("/metrics").text
                    if reporter["backlog"] > 0 and reporter["last_error"]:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "no reporter state on /readyz"
                time.sleep(0.3)
        assert reporter["breaker"] in ("closed", "open", "half-open")
        assert "mailpacer_reporter_backlog_events" in metrics
        assert 'mailpacer_reporter_breaker_state{state="closed"}' in metrics
        assert SECRET not in metrics
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    assert process.returncode in (0, 130), err
    assert "Traceback" not in err
    with sqlite3.connect(tmp_path / "l.db") as conn:
        (kept,) = conn.execute("SELECT COUNT(*) FROM events WHERE delivered_at IS NULL").fetchone()
    assert kept > 0  # nothing delivered, nothing lost: it waits in the outbox
