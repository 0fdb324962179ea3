"""`mailpacer send`, `status` and `demo` as an operator runs them: real processes, a real sink.

The sink is mailpacer's own (aiosmtpd) started as a separate process with ``--store``, so
every message that arrives is a file whose bytes we parse back; the relay-rejects-everything
case uses the private Postfix smtpd (it refuses to relay for an unauthenticated client).
"""

from __future__ import annotations

import csv
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailpacer.sink import start_sink_process

from ..servers.postfix_smtpd import PostfixServer

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "welcome"
SENDER = "Demo Team <news@example.com>"


def mailpacer(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "mailpacer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


@dataclass
class Sink:
    process: subprocess.Popen[str]
    port: int
    store: Path

    @property
    def relay(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return sorted(self.store.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in self.files()
        ]


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    store = tmp_path / "received"
    process, port = start_sink_process(store)
    try:
        yield Sink(process, port, store)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def write_list(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def people(n: int) -> list[dict[str, str]]:
    return [
        {
            "email": f"reader{i:05d}@example.net",
            "first_name": ["Zoë", "Jürgen", "Ana", "Mia"][i % 4],
            "last_name": f"Test{i}",
            "city": ["Zürich", "Lyon", "Porto"][i % 3],
            "member_id": f"M-{i:08d}",
        }
        for i in range(n)
    ]


def send_args(csv_path: Path, db: Path, relay: str, *extra: str) -> list[str]:
    return [
        "send",
        "--recipients",
        str(csv_path),
        "--template",
        str(TEMPLATE),
        "--from",
        SENDER,
        "--relay",
        relay,
        "--db",
        f"sqlite:///{db}",
        "--no-progress",
        *extra,
    ]


def status(db: Path) -> dict[str, int]:
    done = mailpacer("status", "--db", f"sqlite:///{db}", "--json")
    assert done.returncode == 0, done.stderr
    (campaign,) = json.loads(done.stdout)["campaigns"]
    return dict(campaign["counts"])


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.startswith("error: "), done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def delivered_to(messages: list[EmailMessage]) -> Counter[str]:
    return Counter(str(m["Delivered-To"]) for m in messages)


# -- the happy path ------------------------------------------------------------------


def test_every_recipient_gets_their_personalized_message_exactly_once(
    tmp_path: Path, sink: Sink
) -> None:
    rows = people(300)
    csv_path = write_list(tmp_path / "list.csv", rows)
    db = tmp_path / "ledger.db"
    done = mailpacer(*send_args(csv_path, db, sink.relay, "--json", "--concurrency", "4"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["counts"]["sent"] == 300
    assert summary["this_run"]["sent"] == 300
    assert summary["exit_code"] == 0

    messages = sink.messages()
    assert delivered_to(messages) == Counter(r["email"] for r in rows)
    by_address = {r["email"]: r for r in rows}
    for message in messages:
        row = by_address[str(message["Delivered-To"])]
        assert str(message["To"]) == row["email"]
        assert (
            str(message["Subject"])
            == f"{row['first_name']}, your {row['city']} winter guide is here"
        )
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None
        assert html is not None
        plain = text.get_content()
        assert f"Hello {row['first_name']} {row['last_name']}," in plain
        assert row["member_id"] in plain
        assert "\n.A line that starts with a dot" in plain  # dot-stuffing undone by the server
        assert f"<code>{row['member_id']}</code>" in html.get_content()
        assert message["Message-ID"]
        assert message["Date"]
        assert message["MIME-Version"] == "1.0"
    assert len({m["Message-ID"] for m in messages}) == 300

    assert status(db)["sent"] == 300
    again = mailpacer(*send_args(csv_path, db, sink.relay, "--json"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["this_run"].get("sent", 0) == 0
    assert len(sink.files()) == 300  # resuming a finished campaign sends nothing


def test_demo_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = mailpacer("demo", "--recipients", "400", "--workdir", str(work), "--http", "127.0.0.1:0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "received 400 messages" in done.stdout + done.stderr
    assert str(work) in done.stdout + done.stderr  # says where the ledger and messages are
    received = sorted((work / "received").glob("*.eml"))
    with (work / "recipients.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 400
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in received
    ]
    assert delivered_to(messages) == Counter(r["email"] for r in rows)  # type: ignore[arg-type]
    by_address = {r["email"]: r for r in rows}
    for message in messages:
        row = by_address[str(message["To"])]
        body = message.get_body(("plain",))
        assert body is not None
        assert f"Hello {row['first_name']} {row['last_name']}," in body.get_content()
        assert "One-Click" in str(message["List-Unsubscribe-Post"])
        assert str(message["List-Unsubscribe"]).startswith("<https://example.com/unsubscribe?e=")


# -- interruption and resume -----------------------------------------------------------


def test_ctrl_c_stops_fast_and_the_next_run_resumes_without_duplicates(
    tmp_path: Path, sink: Sink
) -> None:
    rows = people(1500)
    csv_path = write_list(tmp_path / "list.csv", rows)
    db = tmp_path / "ledger.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailpacer",
            *send_args(csv_path, db, sink.relay, "--rate", "100/s"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(sink.files()) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink.files()) >= 150
    interrupted_at = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    stop_seconds = time.monotonic() - interrupted_at
    assert process.returncode == 130, err
    assert stop_seconds < 2.0
    assert "Traceback" not in err
    assert "run the same command again to resume" in out

    counts = status(db)
    assert sum(counts.values()) == 1500
    assert counts["claimed"] == counts["sending"] == 0  # nothing left leased
    assert counts["uncertain"] == 0  # a sink on loopback answers every dot before we stop
    assert 150 <= counts["sent"] < 1500
    assert counts["sent"] == len(sink.files())  # the ledger knows exactly what arrived

    resumed = mailpacer(*send_args(csv_path, db, sink.relay, "--json"))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["this_run"]["sent"] == 1500 - counts["sent"]
    assert delivered_to(sink.messages()) == Counter(r["email"] for r in rows)


# -- bad input ---------------------------------------------------------------------------


def test_missing_csv(tmp_path: Path, sink: Sink) -> None:
    done = mailpacer(*send_args(tmp_path / "nope.csv", tmp_path / "l.db", sink.relay))
    assert done.returncode == 2
    assert_one_line_error(done, "nope.csv")
    assert not sink.files()


def test_csv_without_email_column(tmp_path: Path, sink: Sink) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("mail,first_name\na@example.com,A\n", encoding="utf-8")
    done = mailpacer(*send_args(csv_path, tmp_path / "l.db", sink.relay))
    assert done.returncode == 2
    assert_one_line_error(done, "email", "mail")
    assert not sink.files()


def test_invalid_and_duplicate_rows_are_reported_skipped_and_sent_once(
    tmp_path: Path, sink: Sink
) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "email,first_name,last_name,city,member_id\n"
        "good1@example.com,A,B,C,1\n"
        "not-an-address,A,B,C,2\n"  # line 3
        "GOOD1@example.com,A,B,C,3\n"  # duplicate of line 2 (domain and case)
        "good2@example.com,A,B\n"  # line 5: too few fields
        "two@@example.com,A,B,C,5\n"  # line 6
        "good3@example.com,A,B,C,6\n",
        encoding="utf-8",
    )
    done = mailpacer(*send_args(csv_path, tmp_path / "l.db", sink.relay, "--json"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    report = summary["import"]
    assert report["rows"] == 6
    assert report["imported"] == 2
    assert report["duplicates"] == 1
    assert report["rejected"] == 3
    assert {r["line"] for r in report["rejected_rows"]} == {3, 5, 6}
    assert summary["counts"]["sent"] == 2
    assert sorted(delivered_to(sink.messages())) == ["good1@example.com", "good3@example.com"]


def test_rejected_rows_are_named_in_the_text_output(tmp_path: Path, sink: Sink) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "email,first_name,last_name,city,member_id\nbroken,A,B,C,1\nok@example.com,A,B,C,2\n",
        encoding="utf-8",
    )
    done = mailpacer(*send_args(csv_path, tmp_path / "l.db", sink.relay))
    assert done.returncode == 0, done.stderr
    assert "line 2" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(sink.files()) == 1


def test_template_syntax_error(tmp_path: Path, sink: Sink) -> None:
    template = tmp_path / "tpl"
    template.mkdir()
    (template / "subject.j2").write_text("Hi {{ first_name }}\n", encoding="utf-8")
    (template / "body.txt.j2").write_text("line one\n{% if x %}never closed\n", encoding="utf-8")
    csv_path = write_list(tmp_path / "list.csv", people(3))
    args = send_args(csv_path, tmp_path / "l.db", sink.relay)
    args[args.index("--template") + 1] = str(template)
    done = mailpacer(*args)
    assert done.returncode == 2
    assert_one_line_error(done, "body.txt.j2", "line")
    assert not sink.files()


def test_dry_run_names_the_missing_variable_and_row_and_sends_nothing(
    tmp_path: Path, sink: Sink
) -> None:
    template = tmp_path / "tpl"
    template.mkdir()
    (template / "subject.j2").write_text("Hi {{ first_name }}\n", encoding="utf-8")
    (template / "body.txt.j2").write_text("Your code: {{ coupon_code }}\n", encoding="utf-8")
    csv_path = write_list(tmp_path / "list.csv", people(5))
    args = send_args(csv_path, tmp_path / "l.db", sink.relay, "--dry-run")
    args[args.index("--template") + 1] = str(template)
    done = mailpacer(*args)
    assert done.returncode == 1
    assert "coupon_code" in done.stdout + done.stderr
    assert "line 2" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not sink.files()
    assert not (tmp_path / "l.db").exists()  # a dry run writes no ledger


def test_unreachable_relay_marks_nothing_sent(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    csv_path = write_list(tmp_path / "list.csv", people(20))
    db = tmp_path / "l.db"
    started = time.monotonic()
    done = mailpacer(*send_args(csv_path, db, f"smtp://127.0.0.1:{port}"))
    assert time.monotonic() - started < 30
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert "refused" in done.stderr.lower()
    counts = status(db)
    assert counts["sent"] == 0
    assert counts["pending"] == 20  # nothing lost, nothing marked


def test_relay_that_rejects_everything_aborts_the_campaign(
    tmp_path: Path, postfix_smtpd: PostfixServer
) -> None:
    # Without AUTH, the private Postfix refuses to relay to example.net (554 at RCPT).
    csv_path = write_list(tmp_path / "list.csv", people(60))
    db = tmp_path / "l.db"
    relay = f"smtp://{postfix_smtpd.host}:{postfix_smtpd.port}"
    done = mailpacer(*send_args(csv_path, db, relay, "--max-consecutive-failures", "10"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "in a row" in done.stderr
    counts = status(db)
    assert counts["sent"] == 0
    assert 10 <= counts["failed"] + counts.get("bounced", 0) < 60
    assert counts["pending"] > 0  # the rest is kept for when the relay is fixed
    assert postfix_smtpd.count() == 0


def test_unreadable_csv(tmp_path: Path) -> None:
    """Root reads any file, so the check runs as `nobody` on a mode-000 file."""
    import shutil
    import tempfile

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop privileges for this test")
    shared = Path(tempfile.mkdtemp(prefix="mailpacer-unreadable-"))
    try:
        shared.chmod(0o777)
        csv_path = write_list(shared / "list.csv", people(3))
        csv_path.chmod(0)
        drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        args = send_args(csv_path, shared / "l.db", "smtp://127.0.0.1:1")
        done = subprocess.run(
            [*(drop if os.geteuid() == 0 else []), sys.executable, "-m", "mailpacer", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=shared,
        )
        assert done.returncode == 2, done.stderr
        assert_one_line_error(done, "cannot read", "list.csv")
    finally:
        shutil.rmtree(shared)
