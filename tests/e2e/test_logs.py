"""Operator logs of `mailpacer send`: JSON lines with campaign and recipient ids, no secrets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from ..servers.aiosmtpd_server import RecordingHandler, serving_aiosmtpd
from ..servers.postfix_smtpd import PostfixServer
from .test_send_cli import people, send_args, write_list


def read_json_lines(path: Path) -> list[dict[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


async def test_json_logs_name_campaign_and_recipient(tmp_path: Path) -> None:
    rows = people(30)
    unknown = {rows[3]["email"], rows[17]["email"]}
    handler = RecordingHandler(
        reject_rcpt=lambda a: "550 5.1.1 no such user" if a in unknown else None
    )
    csv_path = write_list(tmp_path / "list.csv", rows)
    log_file = tmp_path / "send.jsonl"
    async with serving_aiosmtpd(handler) as server:
        done = await trio.run_process(
            [sys.executable, "-m", "mailpacer",
             *send_args(csv_path, tmp_path / "l.db", server.url(), "--campaign", "logs-test"),
             "--log-format", "json", "--log-level", "info", "--log-file", str(log_file)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    records = read_json_lines(log_file)
    for record in records:
        assert {"ts", "time", "level", "logger", "message"} <= record.keys()
    bounced = [r for r in records if r.get("event") == "recipient.bounced"]
    assert {r["email"] for r in bounced} == unknown
    for r in bounced:
        assert r["campaign"] == "logs-test"
        assert isinstance(r["recipient_id"], int)
        assert r["code"] == 550
        assert "no such user" in str(r["reply"])
        assert r["level"] == "info"
    events = [r.get("event") for r in records]
    assert "campaign.running" in events
    assert events[-1] == "campaign.finished"
    assert not any(r.get("event") == "recipient.sent" for r in records)  # those only at debug


async def test_no_password_in_logs_or_output(tmp_path: Path, postfix_smtpd: PostfixServer) -> None:
    secret = "Wr0ng-S3cret-pw"
    relay = (
        f"smtp+starttls://{postfix_smtpd.username}:{secret}@{postfix_smtpd.host}:"
        f"{postfix_smtpd.port}?cafile={postfix_smtpd.ca_pem_path}"
    )
    csv_path = write_list(tmp_path / "list.csv", people(5))
    outputs = []
    for fmt in ("json", "text"):
        log_file = tmp_path / f"send-{fmt}.log"
        done = await trio.run_process(
            [sys.executable, "-m", "mailpacer",
             *send_args(csv_path, tmp_path / f"l-{fmt}.db", relay),
             "--log-format", fmt, "--log-level", "debug", "--log-file", str(log_file)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
        assert done.returncode == 3  # credentials refused: aborted, nothing sent
        text = log_file.read_text(encoding="utf-8")
        outputs += [text, done.stdout.decode(), done.stderr.decode()]
        assert "535" in text  # the refusal is logged...
        assert f"{postfix_smtpd.username}:***@" in text  # ...naming the relay, masked
    for output in outputs:
        assert secret not in output
