"""`send --render-workers N`: personalization in worker processes gives the same messages, and
the workers die with a SIGKILLed sender."""

from __future__ import annotations

import csv
import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailpacer.engine.render_pool import render_workers

from .test_crash_kill import count_files, delivered, ledger_rows, sink_process, write_list
from .test_run_agent import TEMPLATE, agent, campaign, mailpacer, wait_for, write_config
from .test_run_agent import write_list as write_agent_list


def test_rendered_in_worker_processes_each_once_and_personalized(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "last_name", "city", "member_id"])
        for i in range(300):
            writer.writerow([f"p{i:04d}@example.net", f"Ana{i}", "T", "Porto", f"M-{i}"])
        writer.writerow(["evil@example.net", "Eve\r\nBcc: x@y.z", "T", "Porto", "M-x"])
    store = tmp_path / "received"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    with sink_process(store) as relay:
        done = mailpacer(
            "send", "--recipients", str(path), "--template", str(TEMPLATE), "--from",
            "News <news@example.com>", "--relay", relay, "--db", db, "--render-workers", "2",
            "--concurrency", "4",
        )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    received = delivered(store)
    assert len(received) == 300
    assert set(received.values()) == {1}
    assert "evil@example.net" not in received  # the header injection is refused, not sent
    rows = ledger_rows(db)
    assert rows["evil@example.net"] == "failed"
    sample = next(p for p in store.glob("*.eml") if b"p0123@" in p.read_bytes()[:300])
    message = email.message_from_bytes(sample.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",))
    assert text is not None
    assert "Ana123" in text.get_content()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc: each thread's children)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except FileNotFoundError:
                continue
            for child in map(int, text.split()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def paced_send(tmp_path: Path, relay: str, workers: int, **popen: Any) -> subprocess.Popen[str]:
    """`mailpacer send` of the test list at 200/s with ``workers`` render processes."""
    command = [
        sys.executable, "-m", "mailpacer", "send", "--recipients",
        str(tmp_path / "list.csv"), "--template", str(TEMPLATE), "--from",
        "News <news@example.com>", "--relay", relay, "--db",
        f"sqlite:///{tmp_path / 'ledger.db'}", "--render-workers", str(workers),
        "--rate", "200/s", "--no-progress",
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen
    )


def wait_for_arrivals(store: Path, process: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 30
    while count_files(store) < count and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.02)


def wait_until_gone(children: list[int]) -> list[int]:
    """The processes of ``children`` still alive after up to 5 s."""
    deadline = time.monotonic() + 5
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in children if alive(p)]


def test_sigkilled_sender_leaves_no_render_process(tmp_path: Path) -> None:
    """A crash must not strand workers (they would hold the stderr pipe and CPU forever)."""
    write_list(tmp_path / "list.csv")
    store = tmp_path / "received"
    with sink_process(store) as relay:
        process = paced_send(tmp_path, relay, 2)
        wait_for_arrivals(store, process, 1)
        children = descendants(process.pid)
        assert len(children) >= 3  # the forkserver and two workers
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)  # returns once nobody holds the stderr pipe
        assert wait_until_gone(children) == []


def test_ctrl_c_in_a_terminal_stops_the_sender_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group: the workers ignore it, the sender
    stops as without a pool (exit 130, no traceback) and closes them."""
    write_list(tmp_path / "list.csv")
    store = tmp_path / "received"
    with sink_process(store) as relay:
        process = paced_send(tmp_path, relay, 1, start_new_session=True)
        wait_for_arrivals(store, process, 20)
        children = descendants(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=10)
        assert wait_until_gone(children) == []
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "sending" not in set(ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}").values())


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("3", 3), (2, 2), ("64", 64)])
def test_explicit_worker_count_wins(value: object, expected: int) -> None:
    assert render_workers(value) == expected


def test_auto_leaves_a_cpu_to_the_sender_and_takes_at_most_four() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert render_workers("auto") == min(cpus - 1, 4)


@pytest.mark.parametrize("value", ["-1", -1, "65", 65, "lots", "", True, 1.5])
def test_bad_worker_counts_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="expected auto or a number of processes from 0 to 64"):
        render_workers(value)


def test_send_refuses_a_bad_worker_count_before_sending(tmp_path: Path) -> None:
    done = mailpacer(
        "send", "--recipients", str(write_list_small(tmp_path)), "--template", str(TEMPLATE),
        "--from", "News <news@example.com>", "--relay", "smtp://127.0.0.1:9", "--db",
        f"sqlite:///{tmp_path / 'ledger.db'}", "--render-workers", "lots",
    )  # fmt: skip
    assert done.returncode == 2
    assert "--render-workers 'lots': expected auto or a number" in done.stderr
    assert not (tmp_path / "ledger.db").exists()


def write_list_small(tmp_path: Path) -> Path:
    path = tmp_path / "one.csv"
    path.write_text("email,first_name,last_name,city,member_id\na@example.net,A,B,C,M-1\n")
    return path


def render_workers_of(pid: int) -> set[int]:
    """The pool's workers: children of the agent's forkserver (its grandchildren)."""
    below = descendants(pid)
    children = {p for p in below if Path(f"/proc/{p}/stat").exists() and ppid(p) == pid}
    return {p for p in below if alive(p) and ppid(p) in children}


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (FileNotFoundError, IndexError):
        return 0


def test_agent_renders_a_template_campaign_in_its_pool(tmp_path: Path) -> None:
    """`[agent] render_workers = 1`: one worker renders, each recipient gets one message, and
    the worker is gone once the campaign has finished."""
    store = tmp_path / "received"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    emails = write_agent_list(tmp_path / "list.csv", 300)
    with sink_process(store) as relay:
        config = write_config(tmp_path / "agent.toml", db, relay)
        config.write_text(config.read_text().replace("[agent]\n", "[agent]\nrender_workers = 1\n"))
        with agent(config, tmp_path) as running:
            created = mailpacer(
                "campaign", "create", "pooled", "--db", db, "--template", str(TEMPLATE),
                "--from", "News <news@example.com>", "--recipients", str(tmp_path / "list.csv"),
                "--rate", "100/s",
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            seen: set[int] = set()

            def sending() -> bool:
                seen.update(render_workers_of(running.process.pid))
                return sum(delivered(store).values()) >= 50

            wait_for(sending, 40, "first messages")
            assert len(seen) == 1
            wait_for(lambda: campaign(db, "pooled")["status"] == "finished", 30, "finished")
            wait_for(lambda: not render_workers_of(running.process.pid), 10, "the pool closed")
            assert running.stop() == 0
        log = running.log.read_text()
    assert "campaign pooled: rendering in 1 worker process" in log
    received = delivered(store)
    assert sorted(received) == sorted(emails)
    assert set(received.values()) == {1}
    assert set(ledger_rows(db).values()) == {"sent"}
