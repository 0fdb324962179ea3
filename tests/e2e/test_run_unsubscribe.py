"""One-click unsubscribe end to end, all real: a sink, `mailpacer run` with [bounces] and
[unsubscribe], `mailpacer campaign create`. A recipient who uses the link of a delivered
message (an HTTP POST to the agent's hypercorn server) is suppressed, and the next campaign
to the same list does not mail them. SQLite and MariaDB ledgers."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from ..ledger.backends import BACKENDS, database_url
from .test_crash_kill import delivered, sink_process
from .test_run_agent import TEMPLATE, agent, mailpacer, settle, wait_for, write_config, write_list
from .test_run_bounces import free_port


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


def statuses(db: str, campaign: str) -> dict[str, str]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT r.email, r.status FROM recipients r JOIN campaigns c "
                    "ON c.id = r.campaign_id WHERE c.name = :name"
                ),
                {"name": campaign},
            ).all()
    finally:
        engine.dispose()
    return {str(e): str(s) for e, s in rows}


def create(db: str, name: str, recipients: Path) -> None:
    created = mailpacer(
        "campaign", "create", name, "--db", db, "--template", str(TEMPLATE),
        "--from", "News <news@example.com>", "--recipients", str(recipients),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr


def test_an_unsubscribed_recipient_is_not_mailed_by_the_next_campaign(
    tmp_path: Path, db: str
) -> None:
    store = tmp_path / "received"
    emails = write_list(tmp_path / "list.csv", 6)
    (tmp_path / "bounce-secret").write_text("a-long-bounce-signing-secret\n")
    (tmp_path / "unsub-secret").write_text("a-long-unsubscribe-signing-secret\n")
    with sink_process(store) as relay:
        config = write_config(tmp_path / "agent.toml", db, relay)
        with config.open("a") as f:
            f.write(
                f'\n[bounces]\nlisten = "127.0.0.1:{free_port()}"\n'
                f'domain = "bounces.example.com"\n'
                f'secret_file = "{tmp_path / "bounce-secret"}"\n'
                f'[unsubscribe]\nbase_url = "https://mail.example.com"\n'
                f'secret_file = "{tmp_path / "unsub-secret"}"\n'
            )
        with agent(config, tmp_path) as running:
            assert "one-click unsubscribe on" in running.log.read_text()
            create(db, "first", tmp_path / "list.csv")
            wait_for(lambda: sum(delivered(store).values()) >= 6, 60, "first campaign")
            sample = next(p for p in store.glob("*.eml") if b"r00002@" in p.read_bytes()[:600])
            message = email.message_from_bytes(sample.read_bytes(), policy=email.policy.default)
            header = " ".join(str(message["List-Unsubscribe"]).split())
            found = re.fullmatch(
                r"<https://mail\.example\.com(/unsubscribe/([A-Za-z0-9_-]+))>, "
                r"<mailto:unsubscribe\+([A-Za-z0-9_-]+)@bounces\.example\.com>",
                header,
            )
            assert found is not None, header
            path, token, mailto_token = found.groups()
            assert token == mailto_token
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            # the link in the template's body is the same one (unsubscribe_url)
            url = running.url + path
            # (the sink has the message a moment before the agent's batched outcome write)
            first_sent = lambda: list(statuses(db, "first").values()) == ["sent"] * 6  # noqa: E731
            wait_for(first_sent, 30, "first campaign recorded")
            assert httpx.get(url, timeout=10).status_code == 200  # a scanner: nothing happens
            assert statuses(db, "first")["r00002@example.net"] == "sent"
            assert "r00002" not in mailpacer("suppress", "list", "--db", db).stdout
            clicked = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
            assert clicked.status_code == 200, clicked.text
            assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10).is_success

            create(db, "second", tmp_path / "list.csv")
            wait_for(lambda: sum(delivered(store).values()) >= 11, 60, "second campaign")
            assert settle(store) == 11
    counts = delivered(store)
    assert counts["r00002@example.net"] == 1  # the first campaign only
    assert all(counts[e] == 2 for e in emails if e != "r00002@example.net")
    second = statuses(db, "second")
    assert second["r00002@example.net"] == "suppressed"
    assert list(second.values()).count("sent") == 5
    shown = mailpacer("suppress", "list", "--db", db)
    assert "r00002@example.net" in shown.stdout, shown.stdout + shown.stderr
