"""`send --render-workers N`: personalization in worker processes gives the same messages."""

from __future__ import annotations

import csv
import email
import email.policy
from pathlib import Path

from .test_crash_kill import delivered, ledger_rows, sink_process
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
