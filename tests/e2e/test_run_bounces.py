"""The agent's bounce listener end to end: messages leave with VERP return paths; a DSN sent
back to one of them marks that recipient bounced and suppresses the address."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import sqlalchemy as sa

from ..bounces.test_bounces import dsn
from .test_crash_kill import delivered, ledger_rows, sink_process
from .test_run_agent import TEMPLATE, agent, mailpacer, wait_for, write_config, write_list


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dsn_to_a_verp_return_path_bounces_and_suppresses(tmp_path: Path) -> None:
    store = tmp_path / "received"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    write_list(tmp_path / "list.csv", 20)
    secret = tmp_path / "bounce-secret"
    secret.write_text("a-long-bounce-signing-secret\n")
    port = free_port()
    with sink_process(store) as relay:
        config = write_config(tmp_path / "agent.toml", db, relay)
        with config.open("a") as f:
            f.write(
                f'\n[bounces]\nlisten = "127.0.0.1:{port}"\ndomain = "bounces.example.com"\n'
                f'secret_file = "{secret}"\n'
            )
        with agent(config, tmp_path):
            created = mailpacer(
                "campaign", "create", "verp", "--db", db, "--template", str(TEMPLATE),
                "--from", "News <news@example.com>", "--recipients", str(tmp_path / "list.csv"),
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            wait_for(lambda: sum(delivered(store).values()) >= 20, 60, "delivery")
            message = next(p for p in store.glob("*.eml") if b"r00007@" in p.read_bytes()[:400])
            head = message.read_bytes().decode()
            return_path = head.split("Return-Path: <", 1)[1].split(">", 1)[0]
            assert return_path.startswith("bounce+")
            assert return_path.endswith("@bounces.example.com")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("", [return_path], dsn(return_path, "r00007@example.net"))
            wait_for(lambda: ledger_rows(db).get("r00007@example.net") == "bounced", 20, "bounce")
    rows = ledger_rows(db)
    assert list(rows.values()).count("bounced") == 1
    assert list(rows.values()).count("sent") == 19
    listed = mailpacer("campaign", "show", "verp", "--db", db, "--json")
    assert '"bounced": 1' in listed.stdout
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        values = conn.exec_driver_sql("SELECT value, source FROM suppressions").all()
    engine.dispose()
    assert [(v, s) for v, s in values] == [("r00007@example.net", "dsn")]
