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

import pytest

from mailpacer.engine.render_pool import render_workers

from .test_crash_kill import count_files, delivered, ledger_rows, sink_process, write_list
from .test_run_agent import TEMPLATE, mailpacer


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


def test_sigkilled_sender_leaves_no_render_process(tmp_path: Path) -> None:
    """A crash must not strand workers (they would hold the stderr pipe and CPU forever)."""
    write_list(tmp_path / "list.csv")
    store = tmp_path / "received"
    with sink_process(store) as relay:
        command = [
            sys.executable, "-m", "mailpacer", "send", "--recipients",
            str(tmp_path / "list.csv"), "--template", str(TEMPLATE), "--from",
            "News <news@example.com>", "--relay", relay, "--db",
            f"sqlite:///{tmp_path / 'ledger.db'}", "--render-workers", "2",
            "--rate", "200/s", "--no-progress",
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while count_files(store) == 0 and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.02)
        children = descendants(process.pid)
        assert len(children) >= 3  # the forkserver and two workers
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)  # returns once nobody holds the stderr pipe
        deadline = time.monotonic() + 5
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [p for p in children if alive(p)] == []


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
