"""`mailpacer demo`: the whole path on one machine, in about half a minute.

Starts the built-in sink (its own process, so it gets the second core), writes a sample
list, sends a personalized campaign through the sink with live progress while serving
/healthz and /metrics, then checks what the sink received and says where the ledger is.
"""

from __future__ import annotations

import contextlib
import csv
import email
import email.policy
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mailpacer.commands import UsageError
from mailpacer.commands.send import SendOptions, run_send
from mailpacer.sink import start_sink_process

__all__ = ["DemoOptions", "find_template", "run_demo", "write_sample_list"]

FIRST = ["Anna", "Jürgen", "Zoë", "Mateo", "Aiko", "Olivier", "Siobhán", "Lars", "Amara", "Chen"]
LAST = ["Müller", "García", "O'Neill", "Dubois", "Nakamura", "Kowalski", "Rossi", "Øster", "Smith"]
CITIES = ["München", "Zürich", "Lyon", "Kraków", "Sevilla", "Göteborg", "Porto", "Brno", "Leeds"]


@dataclass
class DemoOptions:
    recipients: int = 10_000
    rate: str | None = None
    workdir: Path = Path("demo-run")
    template: Path | None = None
    http: str = "127.0.0.1:9108"
    concurrency: int = 4


def find_template(given: Path | None) -> Path:
    """The demo template: as given, else ./templates/welcome, else the source tree's copy."""
    if given is not None:
        return given
    candidates = [
        Path("templates/welcome"),
        Path(__file__).resolve().parents[3] / "templates" / "welcome",
    ]
    for candidate in candidates:
        if (candidate / "subject.j2").is_file():
            return candidate
    raise UsageError("cannot find templates/welcome; run from the repository or give --template")


def write_sample_list(path: Path, count: int, *, seed: int = 7) -> None:
    """A reproducible list with non-ASCII names and cities (``example.*`` domains only)."""
    rng = random.Random(seed)
    domains = ["example.com", "example.net", "example.org", "mail.example.com"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "last_name", "city", "member_id"])
        for i in range(count):
            writer.writerow(
                [
                    f"reader{i:07d}@{domains[i % len(domains)]}",
                    rng.choice(FIRST),
                    rng.choice(LAST),
                    rng.choice(CITIES),
                    f"M-{rng.randrange(10**8):08d}",
                ]
            )


def _free_bind(wanted: str) -> str:
    host, _, port = wanted.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return f"{host}:0"
    return wanted


def _start_sink(store: Path) -> tuple[subprocess.Popen[str], int]:
    try:
        return start_sink_process(store)
    except RuntimeError as exc:
        raise UsageError(f"the demo {exc}") from None


def run_demo(opts: DemoOptions) -> int:
    if opts.recipients < 1:
        raise UsageError("--recipients must be at least 1")
    template = find_template(opts.template)
    work = opts.workdir
    work.mkdir(parents=True, exist_ok=True)
    received = work / "received"
    ledger = work / "ledger.db"
    shutil.rmtree(received, ignore_errors=True)
    for stale in work.glob("ledger.db*"):
        stale.unlink()
    recipients = work / "recipients.csv"
    print(f"demo: writing {opts.recipients:,} sample recipients to {recipients}")
    write_sample_list(recipients, opts.recipients)
    sink, port = _start_sink(received)
    print(f"demo: built-in SMTP sink (aiosmtpd inside Trio) listening on 127.0.0.1:{port}")
    secret = work / "report.secret"
    secret.write_text(secrets.token_hex(24) + "\n")
    secret.chmod(0o600)
    receiver_db = work / "report-receiver.db"
    for stale in work.glob("report-receiver.db*"):
        stale.unlink()
    receiver, report_url = _start_receiver(secret, receiver_db)
    print(f"demo: a stand-in for your main server (mailpacer report-receiver) at {report_url}")
    try:
        code = run_send(
            SendOptions(
                recipients=recipients,
                sender="mailpacer demo <demo@example.com>",
                relays=[f"smtp://127.0.0.1:{port}"],
                template=template,
                rate=opts.rate,
                concurrency=opts.concurrency,
                db=f"sqlite:///{ledger.resolve()}",
                campaign="demo-welcome",
                unsubscribe_url="https://example.com/unsubscribe?e={{ email | urlencode }}",
                http=_free_bind(opts.http),
                progress=True,
                report_url=report_url,
                report_secret_file=secret,
            )
        )
    finally:
        for process in (sink, receiver):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    files = sorted(received.glob("*.eml"))
    print(f"demo: the sink received {len(files):,} messages; they are in {received}")
    if files:
        sample = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        text = sample.get_body(("plain",))
        first_line = text.get_content().splitlines()[0] if text is not None else ""
        print(f"demo: first message: To: {sample['To']} | Subject: {sample['Subject']}")
        print(f"demo:   {first_line}")
    print(f"demo: {_receiver_summary(receiver_db)}")
    print(f"demo: ledger: {ledger} (try: .venv/bin/mailpacer status --db sqlite:///{ledger})")
    return code


def _start_receiver(secret: Path, db: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``mailpacer report-receiver`` on a free port; its output goes to a log beside its db."""
    log = db.with_suffix(".log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailpacer", "report-receiver", "--listen", "127.0.0.1:0",
             "--secret-file", str(secret), "--db", f"sqlite:///{db}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text(errors="replace").splitlines():
            if "listening on " in line:
                return process, line.split("listening on ", 1)[1].split(",", 1)[0].strip()
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise UsageError(f"the demo's report receiver did not start (see {log})")


def _receiver_summary(db: Path) -> str:
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY type")
            counts = ", ".join(f"{kind} {n:,}" for kind, n in rows)
    except sqlite3.Error as exc:
        return f"the report receiver's store could not be read ({exc})"
    return f"the main server stand-in received: {counts or 'no events yet'} (in {db})"
