"""`mailpacer demo`: the whole path on one machine, in about half a minute.

Starts the built-in sink (its own process, so it gets the second core), writes a sample
list, sends a personalized campaign through the sink with live progress while serving
/healthz and /metrics, then checks what the sink received and says where the ledger is.
"""

from __future__ import annotations

import csv
import email
import email.policy
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mailpacer.commands.send import SendOptions, UsageError, run_send

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
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailpacer",
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--store",
            str(store),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise UsageError(f"the demo sink did not start (it said {line.strip()!r})")
    return process, int(line.rsplit(":", 1)[1])


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
    started = time.monotonic()
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
            )
        )
    finally:
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sink.kill()
    files = sorted(received.glob("*.eml"))
    print(
        f"demo: the sink received {len(files):,} messages in "
        f"{time.monotonic() - started:.1f}s; they are in {received}"
    )
    if files:
        sample = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        text = sample.get_body(("plain",))
        first_line = text.get_content().splitlines()[0] if text is not None else ""
        print(f"demo: first message: To: {sample['To']} | Subject: {sample['Subject']}")
        print(f"demo:   {first_line}")
    print(f"demo: ledger: {ledger} (try: .venv/bin/mailpacer status --db sqlite:///{ledger})")
    return code
