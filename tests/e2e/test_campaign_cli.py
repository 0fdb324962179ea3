"""`mailpacer db upgrade` and `mailpacer campaign ...` as an operator runs them, both backends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..ledger.backends import BACKENDS, database_url
from .test_send_cli import TEMPLATE, Sink, sink

__all__ = ["sink"]  # the fixture


def delivered_to(sink: Sink) -> list[str]:
    return [str(m["Delivered-To"]) for m in sink.messages()]


def mailpacer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailpacer", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.startswith("error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as value:
        yield value


# -- db upgrade ------------------------------------------------------------------------


def test_db_upgrade_creates_then_reports_up_to_date(url: str) -> None:
    from mailpacer.ledger.migrations import SCHEMA_VERSION

    first = mailpacer("db", "upgrade", "--db", url)
    assert first.returncode == 0, first.stderr
    assert "applied migration 1" in first.stdout
    assert f"schema version {SCHEMA_VERSION}" in first.stdout
    again = mailpacer("db", "upgrade", "--db", url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["applied"] == []
    assert json.loads(again.stdout)["version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("db", "needle"),
    [
        ("mysql+pymysql://root:s3cr3t@127.0.0.1:1/x", "Connection refused"),
        ("postgresql://u:s3cr3t@h/x", "unsupported database"),
        ("nonsense", "invalid database URL"),
        ("sqlite:////nonexistent-dir/l.db", "does not exist"),
    ],
)
def test_db_upgrade_bad_urls_are_one_line(db: str, needle: str) -> None:
    done = mailpacer("db", "upgrade", "--db", db)
    assert_one_line_error(done, needle)
    assert "s3cr3t" not in done.stderr


# -- campaign commands -----------------------------------------------------------------

SENDER = "News <news@example.com>"


def set_states(url: str, changes: dict[str, str]) -> None:
    """Put recipients in states as a sender would have left them (relay said 5xx, ...)."""
    from mailpacer.ledger import Ledger
    from mailpacer.ledger.schema import recipients

    db = Ledger(url)
    try:
        with db.engine.begin() as conn:
            for email, state in changes.items():
                conn.execute(
                    recipients.update()
                    .where(recipients.c.email == email)
                    .values(status=state, last_reply=f"test: {state}", next_attempt_at=4e9)
                )
    finally:
        db.dispose()


def show(url: str, name: str = "news") -> dict[str, object]:
    done = mailpacer("campaign", "show", name, "--db", url, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def sent_campaign(url: str, tmp_path: Path, sink: Sink) -> tuple[str, list[str], Path]:
    emails = [f"r{i}@example.net" for i in range(12)]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "email,first_name,last_name,city,member_id\n"
        + "".join(f"{e},A,B,C,{i}\n" for i, e in enumerate(emails)),
        encoding="utf-8",
    )
    done = mailpacer(*send_command(csv_path, url, sink))
    assert done.returncode == 0, done.stderr
    return url, emails, csv_path


def send_command(csv_path: Path, url: str, sink: Sink, *extra: str) -> list[str]:
    return [
        "send", "--recipients", str(csv_path), "--template", str(TEMPLATE), "--from", SENDER,
        "--relay", sink.relay, "--db", url, "--campaign", "news", "--no-progress", *extra,
    ]  # fmt: skip


def test_list_and_show(sent_campaign: tuple[str, list[str], Path]) -> None:
    url, _, _ = sent_campaign
    listed = mailpacer("campaign", "list", "--db", url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("news [finished] 12 recipients: sent 12")
    document = json.loads(mailpacer("campaign", "list", "--db", url, "--json").stdout)
    (only,) = document["campaigns"]
    assert (only["campaign"], only["status"], only["counts"]["sent"]) == ("news", "finished", 12)
    shown = mailpacer("campaign", "show", "news", "--db", url)
    assert "sender: News <news@example.com>" in shown.stdout
    assert show(url)["remaining"] == 0


def test_retry_failed_and_deferred_sends_exactly_those_again(
    sent_campaign: tuple[str, list[str], Path], sink: Sink
) -> None:
    url, emails, csv_path = sent_campaign
    set_states(url, {emails[0]: "failed", emails[1]: "failed", emails[2]: "deferred"})
    set_states(url, {emails[3]: "uncertain", emails[4]: "bounced"})
    before = Counter(delivered_to(sink))
    retried = mailpacer("campaign", "retry", "news", "--failed", "--db", url)
    assert retried.returncode == 0, retried.stderr
    assert "2 failed back to pending" in retried.stdout
    assert show(url)["status"] == "ready"  # no longer 'finished'
    both = mailpacer("campaign", "retry", "news", "--deferred", "--failed", "--db", url, "--json")
    assert json.loads(both.stdout)["changed"] == {"deferred": 1, "failed": 0}
    again = mailpacer(*send_command(csv_path, url, sink, "--json"))
    assert again.returncode == 1, again.stderr  # one uncertain remains: needs attention
    assert json.loads(again.stdout)["this_run"]["sent"] == 3
    after = Counter(delivered_to(sink))
    assert after - before == Counter(emails[:3])  # exactly the retried ones, once each
    counts = show(url)["counts"]
    assert isinstance(counts, dict)
    assert (counts["sent"], counts["uncertain"], counts["bounced"]) == (10, 1, 1)


def test_resolve_uncertain(sent_campaign: tuple[str, list[str], Path], sink: Sink) -> None:
    url, emails, csv_path = sent_campaign
    set_states(url, {emails[0]: "uncertain", emails[1]: "uncertain", emails[2]: "uncertain"})
    marked = mailpacer(
        "campaign", "resolve-uncertain", "news", "--mark-sent", "--email", emails[0].upper(),
        "--db", url,
    )  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    assert "1 uncertain marked sent" in marked.stdout
    before = Counter(delivered_to(sink))
    resent = mailpacer("campaign", "resolve-uncertain", "news", "--resend", "--db", url, "--json")
    assert json.loads(resent.stdout)["changed"] == {"uncertain": 2}
    done = mailpacer(*send_command(csv_path, url, sink))
    assert done.returncode == 0, done.stderr
    assert Counter(delivered_to(sink)) - before == Counter(emails[1:3])
    assert show(url)["counts"] == {**show(url)["counts"], "sent": 12, "uncertain": 0}  # type: ignore[dict-item]
    neither = mailpacer("campaign", "resolve-uncertain", "news", "--db", url)
    assert neither.returncode == 2
    assert "--resend" in neither.stderr
    assert "Traceback" not in neither.stderr


def test_pause_then_send_resumes_and_cancel_is_refused(
    sent_campaign: tuple[str, list[str], Path], sink: Sink
) -> None:
    url, emails, csv_path = sent_campaign
    set_states(url, {emails[0]: "failed"})
    assert mailpacer("campaign", "retry", "news", "--failed", "--db", url).returncode == 0
    paused = mailpacer("campaign", "pause", "news", "--db", url)
    assert paused.returncode == 0, paused.stderr
    assert "paused" in paused.stdout
    assert show(url)["status"] == "paused"
    resumed = mailpacer("campaign", "resume", "news", "--db", url)
    assert resumed.returncode == 0
    assert show(url)["status"] == "ready"
    assert mailpacer("campaign", "pause", "news", "--db", url).returncode == 0
    done = mailpacer(*send_command(csv_path, url, sink, "--json"))  # send resumes a pause
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["this_run"]["sent"] == 1
    assert show(url)["status"] == "finished"

    cancelled = mailpacer("campaign", "cancel", "news", "--db", url)
    assert cancelled.returncode == 0, cancelled.stderr
    refused = mailpacer(*send_command(csv_path, url, sink))
    assert_one_line_error(refused, "cancelled")
    assert_one_line_error(mailpacer("campaign", "resume", "news", "--db", url), "cancelled")
    assert_one_line_error(
        mailpacer("campaign", "retry", "news", "--failed", "--db", url), "cancelled"
    )


def test_pause_stops_a_running_sender(url: str, tmp_path: Path, sink: Sink) -> None:
    """Pause takes effect before the sender hands its next batch to a connection."""
    emails = [f"r{i}@example.net" for i in range(1500)]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "email,first_name,last_name,city,member_id\n"
        + "".join(f"{e},A,B,C,{i}\n" for i, e in enumerate(emails)),
        encoding="utf-8",
    )
    sender = subprocess.Popen(
        [sys.executable, "-m", "mailpacer", *send_command(csv_path, url, sink, "--rate", "200/s")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(sink.files()) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    paused = mailpacer("campaign", "pause", "news", "--db", url)
    assert paused.returncode == 0, paused.stderr
    _, err = sender.communicate(timeout=30)
    assert sender.returncode == 1, err  # stopped with recipients left: needs attention
    document = show(url)
    assert document["status"] == "paused"
    counts = document["counts"]
    assert isinstance(counts, dict)
    assert counts["sent"] == len(sink.files()) < 1500
    assert counts["pending"] == 1500 - counts["sent"]
    assert counts["claimed"] == counts["sending"] == counts["uncertain"] == 0


@pytest.mark.parametrize(
    "args",
    [
        ("show", "nope"),
        ("pause", "nope"),
        ("retry", "nope", "--failed"),
    ],
)
def test_unknown_campaign_is_one_line(url: str, args: tuple[str, ...]) -> None:
    assert mailpacer("db", "upgrade", "--db", url).returncode == 0
    assert_one_line_error(mailpacer("campaign", *args, "--db", url), "no campaign named 'nope'")


def test_retry_without_a_state_and_missing_ledger(tmp_path: Path) -> None:
    missing = mailpacer("campaign", "list", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert_one_line_error(missing, "no ledger at")
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert mailpacer("db", "upgrade", "--db", url).returncode == 0
    assert mailpacer("campaign", "list", "--db", url).stdout.startswith("no campaigns")


# -- several agents on one MariaDB campaign ----------------------------------------------


def test_three_senders_share_a_mariadb_campaign_without_duplicates(
    tmp_path: Path, sink: Sink
) -> None:
    from ..ledger.backends import mariadb_database

    emails = [f"r{i}@example.net" for i in range(3000)]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "email,first_name,last_name,city,member_id\n"
        + "".join(f"{e},A,B,C,{i}\n" for i, e in enumerate(emails)),
        encoding="utf-8",
    )
    with mariadb_database() as url:
        senders = [
            subprocess.Popen(
                [sys.executable, "-m", "mailpacer", *send_command(csv_path, url, sink, "--json")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        results = [s.communicate(timeout=120) for s in senders]
        for sender, (_, err) in zip(senders, results, strict=True):
            # 1: it ran out of work while the others still had messages in flight
            assert sender.returncode in (0, 1), err
            assert "Traceback" not in err, err
        runs = [json.loads(out)["this_run"].get("sent", 0) for out, _ in results]
        counts = show(url)["counts"]
    assert isinstance(counts, dict)
    assert counts["sent"] == 3000
    assert sum(runs) == 3000
    assert sum(1 for n in runs if n > 0) >= 2  # the work really was shared
    assert Counter(delivered_to(sink)) == Counter(emails)  # each exactly once
