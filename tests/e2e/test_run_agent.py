"""`mailpacer run`, the long-running agent, as real processes: sink, agent, operator CLI.

The agent sends what `mailpacer campaign create` queues, obeys pause and resume given while
it runs, refuses a second agent on its SQLite ledger, stops cleanly on SIGTERM, and waits
out a database that freezes or dies mid-campaign (MariaDB: a private server the test
SIGSTOPs, then SIGKILLs and restarts), sending every recipient exactly once in the end.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ..observability.conftest import PrivateMariaDB, private_mariadb  # noqa: F401 (fixture)
from .test_crash_kill import delivered, ledger_rows, sink_process

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "welcome"
PYTHON = sys.executable


def write_list(path: Path, count: int, prefix: str = "r") -> list[str]:
    emails = [f"{prefix}{i:05d}@example.net" for i in range(count)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "last_name", "city", "member_id"])
        for i, address in enumerate(emails):
            writer.writerow([address, "Ana", f"Test{i}", "Porto", f"M-{i:08d}"])
    return emails


def mailpacer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "mailpacer", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


class RunningAgent:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log
        self.url = ""

    def wait_started(self) -> None:
        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the agent exited:\n{self.log.read_text()}")
            text = self.log.read_text()
            found = re.search(r"/metrics on http://(127\.0\.0\.1:\d+)", text)
            if found:
                self.url = f"http://{found.group(1)}"
            return bool(found) and "mailpacer agent" in text

        wait_for(started, 60, "agent start")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def agent(config: Path, tmp_path: Path) -> Iterator[RunningAgent]:
    log = tmp_path / f"agent-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "mailpacer", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = RunningAgent(process, log)
    try:
        running.wait_started()
        yield running
    finally:
        running.stop()


def write_config(path: Path, db: str, relay: str, **agent: str) -> Path:
    extra = "".join(f'{k} = "{v}"\n' for k, v in agent.items())
    path.write_text(
        f'[agent]\ndb = "{db}"\nhttp = "127.0.0.1:0"\nlog_level = "info"\n{extra}\n'
        f'[[relay]]\nurl = "{relay}"\n'
    )
    return path


def campaign(db: str, name: str) -> dict[str, object]:
    shown = mailpacer("campaign", "show", name, "--db", db, "--json")
    assert shown.returncode == 0, shown.stderr
    document: dict[str, object] = json.loads(shown.stdout)
    return document


def settle(store: Path, quiet: float = 2.0, timeout: float = 30) -> int:
    """Wait until the sink has received nothing new for ``quiet`` seconds."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now_count = sum(delivered(store).values())
        if now_count != last:
            last, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now_count
        time.sleep(0.2)
    raise AssertionError("the sink never went quiet")


def test_agent_sends_queued_campaigns_and_obeys_pause_and_resume(tmp_path: Path) -> None:
    store = tmp_path / "received"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    emails = write_list(tmp_path / "list.csv", 400)
    with sink_process(store) as relay:
        config = write_config(tmp_path / "agent.toml", db, relay)
        with agent(config, tmp_path) as running:
            started = time.monotonic()
            created = mailpacer(
                "campaign", "create", "drip", "--db", db, "--template", str(TEMPLATE),
                "--from", "News <news@example.com>", "--recipients", str(tmp_path / "list.csv"),
                "--rate", "40/s",
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            assert "400 recipients" in created.stdout
            wait_for(lambda: sum(delivered(store).values()) >= 60, 40, "first messages")
            picked_up = time.monotonic() - started
            paused = mailpacer("campaign", "pause", "drip", "--db", db)
            assert paused.returncode == 0, paused.stderr
            at_pause = sum(delivered(store).values())
            held = settle(store)
            after_pause = held - at_pause  # in flight, or dispatched before the next check
            assert held < 400, "the pause did not stop the campaign"
            time.sleep(1.0)
            assert sum(delivered(store).values()) == held  # nothing more while paused
            wait_for(lambda: campaign(db, "drip")["status"] == "paused", 10, "paused status")
            resumed = mailpacer("campaign", "resume", "drip", "--db", db)
            assert resumed.returncode == 0, resumed.stderr
            wait_for(lambda: sum(delivered(store).values()) >= 400, 60, "the rest")
            wait_for(lambda: campaign(db, "drip")["status"] == "finished", 20, "finished")

            second = mailpacer("run", "--config", str(config), timeout=30)
            assert second.returncode == 2
            assert "in use" in second.stderr
            assert "Traceback" not in second.stderr

            health = httpx.get(f"{running.url}/healthz", timeout=5)
            assert health.status_code == 200, health.text
            metrics = httpx.get(f"{running.url}/metrics", timeout=5).text
            assert 'mailpacer_messages_total{campaign="drip",result="sent"} 400.0' in metrics
            assert re.search(
                r'mailpacer_smtp_replies_total\{campaign="drip",relay="smtp://127\.0\.0\.1:\d+",'
                r'reply_class="2xx"\} 400\.0',
                metrics,
            )
            assert 'mailpacer_db_pool_connections{state="size"}' in metrics
            assert re.search(r"mailpacer_db_calls_total [1-9]", metrics)
            assert "mailpacer_db_outage 0.0" in metrics
            stopped_at = time.monotonic()
            assert running.stop() == 0
            assert time.monotonic() - stopped_at < 10
    print(
        f"picked up and sending {picked_up:.1f} s after create; {held} sent before the pause, "
        f"{after_pause} of them after `campaign pause` returned (at 40/s)"
    )
    assert after_pause <= 40  # within about a second of the pause: one claim slice at most
    received = delivered(store)
    assert sorted(received) == sorted(emails)
    assert set(received.values()) == {1}  # each exactly once
    assert set(ledger_rows(db).values()) == {"sent"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[agent]\nhttp = "127.0.0.1:0"\n[[relay]]\nurl = "smtp://127.0.0.1:25"\n',
         "[agent].db is required"),
        ('[agent]\ndb = "sqlite:///x.db"\n', "at least one [[relay]]"),
        ('[agent]\ndb = "sqlite:///x.db"\n[[relay]]\nurl = "smtp://u:secret@h:25"\n',
         "password_file"),
        ('[agent]\ndb = "sqlite:///x.db"\npoll_interval = "5s"\n[[relay]]\nurl = "smtp://h"\n',
         "at least 15s"),
        ('[agent]\ndb = "sqlite:///x.db"\ncolour = 1\n[[relay]]\nurl = "smtp://h"\n',
         "unknown key(s) colour"),
        ('[agent]\ndb = "mysql+pymysql://u@h/d"\ndb_password_file = "/nonexistent"\n'
         '[[relay]]\nurl = "smtp://h"\n', "cannot read '/nonexistent'"),
        ('[agent]\ndb = "sqlite:///x.db"\nrender_workers = 65\n[[relay]]\nurl = "smtp://h"\n',
         "[agent].render_workers = 65: expected auto or a number of processes from 0 to 64"),
        ('[agent]\ndb = "sqlite:///x.db"\nrender_workers = "lots"\n[[relay]]\nurl = "smtp://h"\n',
         "[agent].render_workers = 'lots': expected auto"),
        ("[agent\n", "not valid TOML"),
        ('[agent]\ndb = "mysql+pymysql://root@127.0.0.1:1/x"\n[[relay]]\nurl = "smtp://h"\n',
         "cannot open the ledger"),
    ],
)  # fmt: skip
def test_bad_configuration_is_one_clear_line(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(content)
    done = subprocess.run(
        [PYTHON, "-m", "mailpacer", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert expected in done.stderr, done.stderr
    assert "secret" not in done.stderr


def test_agent_waits_out_a_frozen_then_dead_database(
    tmp_path: Path,
    private_mariadb: PrivateMariaDB,  # noqa: F811
) -> None:
    """Mid-campaign the ledger's MariaDB is frozen (SIGSTOP) for 8 s, later killed for 5 s:
    sending pauses, /healthz keeps answering, and it resumes by itself each time."""
    db = private_mariadb.create_database(f"outage_{os.getpid()}")
    store = tmp_path / "received"
    emails = write_list(tmp_path / "list.csv", 900, prefix="o")
    with sink_process(store) as relay:
        config = write_config(tmp_path / "agent.toml", db, relay)
        with agent(config, tmp_path) as running:
            created = mailpacer(
                "campaign", "create", "outage", "--db", db, "--template", str(TEMPLATE),
                "--from", "News <news@example.com>", "--recipients", str(tmp_path / "list.csv"),
                "--rate", "30/s",
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            wait_for(lambda: sum(delivered(store).values()) >= 100, 40, "sending")

            private_mariadb.freeze()
            try:
                frozen_at = sum(delivered(store).values())
                slowest = 0.0
                for _ in range(16):
                    began = time.monotonic()
                    answer = httpx.get(f"{running.url}/healthz", timeout=5)
                    slowest = max(slowest, time.monotonic() - began)
                    assert answer.status_code == 200, answer.text
                    time.sleep(0.5)
                during_freeze = sum(delivered(store).values()) - frozen_at
                ready = httpx.get(f"{running.url}/readyz", timeout=5)
            finally:
                private_mariadb.thaw()
            assert ready.status_code == 503  # the database is not ready, and it says so
            wait_for(lambda: sum(delivered(store).values()) >= frozen_at + 60, 60, "resume 1")

            private_mariadb.kill()
            killed_at = sum(delivered(store).values())
            time.sleep(5)
            assert httpx.get(f"{running.url}/healthz", timeout=5).status_code == 200
            during_kill = sum(delivered(store).values()) - killed_at
            private_mariadb.start()
            wait_for(lambda: sum(delivered(store).values()) >= 900, 120, "all recipients")
            wait_for(lambda: campaign(db, "outage")["status"] == "finished", 60, "finished")
            assert running.stop() == 0
    log = running.log.read_text()
    print(
        f"frozen 8 s: {during_freeze} messages went out after the freeze (in flight), "
        f"/healthz slowest {slowest * 1000:.0f} ms; killed 5 s: {during_kill} after the kill"
    )
    assert "ledger database unavailable" in log
    assert "is back after" in log
    assert during_freeze <= 64
    assert during_kill <= 64
    received = delivered(store)
    assert sorted(received) == sorted(emails)
    assert set(received.values()) == {1}
    rows = ledger_rows(db)
    assert set(rows.values()) == {"sent"}, {s for s in rows.values()}


def test_doctor_checks_what_an_agent_configuration_uses(tmp_path: Path) -> None:
    """`doctor --config` (the deploy's health gate) finds the agent's database and relays."""
    store = tmp_path / "received"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert mailpacer("db", "upgrade", "--db", db).returncode == 0  # the agent's ledger exists
    with sink_process(store) as relay:
        good = write_config(tmp_path / "good.toml", db, relay, data_dir=str(tmp_path))
        done = mailpacer("doctor", "--config", str(good), "--json", "--timeout", "5")
        checks = {c["group"]: c for c in json.loads(done.stdout)["checks"]}
        assert checks["database"]["status"] == "ok"
        assert checks["relay"]["status"] == "ok", checks["relay"]
    closed = write_config(tmp_path / "closed.toml", db, relay)  # the sink has gone
    done = mailpacer("doctor", "--config", str(closed), "--timeout", "5")
    assert done.returncode == 1
    assert "Connection refused" in done.stdout
    assert not list(store.glob("*.eml"))  # checking a relay sends nothing
