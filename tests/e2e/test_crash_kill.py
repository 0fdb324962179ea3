"""Crash safety, proven: SIGKILL a running `mailpacer send` at random moments, restart it.

For each backend (SQLite file, MariaDB database) a 5,000-recipient campaign is sent by
`python -m mailpacer send` against mailpacer's own SMTP sink (a separate process that
stores every message it accepts, with a ``Delivered-To:`` header, *before* answering 250).
The sender is SIGKILLed ``TRIALS`` times and restarted (three kills in four land within
0.25 s after messages start arriving, at 300 msg/s; every fourth lands anywhere from
start-up to full speed, unpaced); then one unpaced run goes uninterrupted.
What the sink actually received is compared with the ledger:

* no recipient is delivered twice (uncertain ones are never resent silently, so they too
  are delivered at most once);
* none is lost: every recipient the ledger calls *sent* arrived exactly once, and every
  recipient that did not arrive is *uncertain* (the operator decides) -- nothing else;
* every recipient ends in a terminal state (sent / uncertain; the sink fails nobody);
* uncertain recipients come only from kills: they are exactly the rows the ledger had in
  *sending* at the moments of the kills (read from the database while the sender is dead),
  and each kill leaves at most ``IN_FLIGHT_BOUND`` of them.

The bound: a row is *sending* from the dispatcher's write-ahead mark, made per slice (at
most concurrency x pipeline depth rows) just before the slice is handed, batch by batch
and unbuffered, to the connections, until its outcome is flushed. That is what the
workers hold plus the slice being handed out (2 x concurrency x pipeline depth = 2 x 4 x
32 = 256), plus outcomes answered but not yet flushed (the writer flushes every 200 ms or
500 outcomes: <= 500). So 756; the test prints the figures seen.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailpacer.sink import start_sink_process

from ..ledger.backends import mariadb_database

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "welcome"
RECIPIENTS = 5000
TRIALS = 20
CONCURRENCY = 4
IN_FLIGHT_BOUND = 2 * CONCURRENCY * 32 + 500


@contextmanager
def sink_process(store: Path) -> Iterator[str]:
    process, port = start_sink_process(store)
    try:
        yield f"smtp://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def write_list(path: Path) -> list[str]:
    emails = [f"reader{i:05d}@example.net" for i in range(RECIPIENTS)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "last_name", "city", "member_id"])
        for i, address in enumerate(emails):
            writer.writerow([address, "Ana", f"Test{i}", "Porto", f"M-{i:08d}"])
    return emails


def delivered(store: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    if not store.is_dir():
        return found
    for entry in os.scandir(store):
        if not entry.name.endswith(".eml") or entry.name.startswith("."):
            continue  # dot-files are still being written (the sink renames them when done)
        try:
            with open(entry.path, "rb") as f:
                head = f.read(512).decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        for line in head.split("\r\n"):
            if line.startswith("Delivered-To: "):
                found[line[len("Delivered-To: ") :]] += 1
                break
    return found


def count_files(store: Path) -> int:
    try:
        return sum(1 for e in os.scandir(store) if e.name.endswith(".eml"))
    except FileNotFoundError:
        return 0


def ledger_rows(url: str) -> dict[str, str]:
    import sqlalchemy as sa

    from mailpacer.ledger import Ledger
    from mailpacer.ledger.schema import recipients

    db = Ledger(url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(sa.select(recipients.c.email, recipients.c.status)).all()
    except sa.exc.SQLAlchemyError:
        return {}  # killed before the schema existed
    finally:
        db.dispose()
    return {str(e): str(s) for e, s in rows}


def crash_trials(tmp_path: Path, url: str) -> None:
    seed = int(os.environ.get("MAILPACER_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    emails = write_list(tmp_path / "list.csv")
    store = tmp_path / "received"
    started = time.monotonic()
    with sink_process(store) as relay:
        command = [
            sys.executable, "-m", "mailpacer", "send",
            "--recipients", str(tmp_path / "list.csv"), "--template", str(TEMPLATE),
            "--from", "News <news@example.com>", "--relay", relay, "--db", url,
            "--campaign", "crash", "--concurrency", str(CONCURRENCY), "--no-progress", "--json",
        ]  # fmt: skip
        in_flight_at_kills: list[int] = []
        sending_at_kills: set[str] = set()  # (a kill before recovery sees a row again)
        kills_mid_send = 0
        for trial in range(TRIALS):
            before = count_files(store)
            anywhere = trial % 4 == 3
            # Paced runs keep each trial's share of the list small (so 20 kills fit in 5,000
            # recipients even when the sink is slow); unpaced ones fill every queue.
            paced = [] if anywhere else ["--rate", "300/s"]
            process = subprocess.Popen(
                [*command, *paced], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            if anywhere:  # start-up, import, recovery or sending, unpaced
                time.sleep(rng.uniform(0.05, 1.4))
            else:  # once messages flow, somewhere in the next 0.25 s
                deadline = time.monotonic() + 20
                while count_files(store) == before and time.monotonic() < deadline:
                    if process.poll() is not None:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.25))
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"trial {trial}: the sender ended before the kill: {err[-2000:]}")
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=10)
            at_kill = {e for e, s in ledger_rows(url).items() if s == "sending"}
            in_flight_at_kills.append(len(at_kill))
            sending_at_kills |= at_kill
            if count_files(store) > before:
                kills_mid_send += 1
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
        time.sleep(0.2)
        received = delivered(store)
    elapsed = time.monotonic() - started

    summary = json.loads(final.stdout)
    rows = ledger_rows(url)
    states = Counter(rows.values())
    uncertain = {e for e, s in rows.items() if s == "uncertain"}
    print(
        f"\nseed {seed}: {TRIALS} kills ({kills_mid_send} while messages were arriving) in "
        f"{elapsed:.1f}s; rows in 'sending' at each kill: {in_flight_at_kills} "
        f"(max {max(in_flight_at_kills)}, bound {IN_FLIGHT_BOUND}); final ledger: "
        f"{dict(states)}; received {sum(received.values())} messages for "
        f"{len(received)} recipients; uncertain delivered "
        f"{sum(1 for e in uncertain if received[e])}/{len(uncertain)}"
    )
    assert final.returncode == (1 if uncertain else 0), final.stderr
    assert kills_mid_send >= TRIALS // 2  # the kills really landed while sending
    assert len(rows) == RECIPIENTS
    # no recipient delivered twice (uncertain ones included: never resent silently)
    assert [e for e, n in received.items() if n > 1] == []
    assert set(received) <= set(emails)
    # every recipient in a terminal state; only sent and uncertain are possible here
    assert set(states) <= {"sent", "uncertain"}, states
    # none lost: what the ledger calls sent arrived; what did not arrive is uncertain
    assert [e for e, s in rows.items() if s == "sent" and not received[e]] == []
    assert [e for e in emails if not received[e] and rows[e] != "uncertain"] == []
    # uncertain only from kills, never more than was in flight at each kill
    assert uncertain == sending_at_kills
    assert max(in_flight_at_kills) <= IN_FLIGHT_BOUND
    assert summary["counts"]["uncertain"] == len(uncertain)


@pytest.mark.slow  # ~45-60 s
def test_sigkill_trials_on_sqlite(tmp_path: Path) -> None:
    crash_trials(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.mark.slow  # ~60-70 s
def test_sigkill_trials_on_mariadb(tmp_path: Path) -> None:
    with mariadb_database() as url:
        crash_trials(tmp_path, url)
