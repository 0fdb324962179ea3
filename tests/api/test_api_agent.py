"""The control API of a real `mailpacer run` process: a campaign created through the API
is sent to a real SMTP sink exactly once, paused and resumed through the API meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from ..e2e.test_crash_kill import delivered, ledger_rows, sink_process
from ..e2e.test_run_agent import agent, settle, wait_for, write_config
from .conftest import READ, TEMPLATE, WRITE, auth, csv_bytes, spec, upload


def test_campaign_created_paused_and_resumed_through_the_api(tmp_path: Path) -> None:
    store = tmp_path / "received"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "api-token").write_text(WRITE + "\n")
    (tmp_path / "api-read-token").write_text(READ + "\n")
    count = 300
    with sink_process(store) as relay:
        config = write_config(tmp_path / "agent.toml", db, relay, data_dir=str(tmp_path))
        with config.open("a") as f:
            f.write(
                f'\n[api]\ntoken_file = "{tmp_path / "api-token"}"\n'
                f'read_token_file = "{tmp_path / "api-read-token"}"\n'
                f'file_roots = ["{TEMPLATE.parent}"]\n'
            )
        with agent(config, tmp_path) as running:
            assert "control API on" in running.log.read_text()
            api = f"{running.url}/api/v1"
            with httpx.Client(base_url=api, headers=auth(WRITE), timeout=30) as client:
                assert client.get("/campaigns", headers={"Authorization": ""}).status_code == 401
                started = time.monotonic()
                created = client.post(
                    "/campaigns", files=upload(spec("api-drip", rate="40/s"), csv_bytes(count))
                )
                assert created.status_code == 201, created.text
                assert created.json()["recipients"] == count
                wait_for(lambda: sum(delivered(store).values()) >= 60, 40, "first messages")
                picked_up = time.monotonic() - started

                paused = client.post("/campaigns/api-drip/pause")
                assert paused.status_code == 200, paused.text
                held = settle(store)
                assert held < count, "the pause did not stop the campaign"
                time.sleep(1.0)
                assert sum(delivered(store).values()) == held  # nothing more while paused

                def status() -> str:
                    shown = client.get("/campaigns/api-drip", headers=auth(READ))
                    assert shown.status_code == 200, shown.text
                    return str(shown.json()["status"])

                wait_for(lambda: status() == "paused", 10, "paused status")
                refused = client.post("/campaigns/api-drip/resume", headers=auth(READ))
                assert refused.status_code == 403
                resumed_at = time.monotonic()
                resumed = client.post("/campaigns/api-drip/resume")
                assert resumed.status_code == 200, resumed.text
                wait_for(lambda: sum(delivered(store).values()) > held, 30, "sending again")
                restarted = time.monotonic() - resumed_at
                wait_for(lambda: sum(delivered(store).values()) >= count, 60, "the rest")
                wait_for(lambda: status() == "finished", 20, "finished")
                assert client.get(f"{running.url}/healthz").status_code == 200
            assert running.stop() == 0
            log = running.log.read_text()
    print(
        f"API create -> sending in {picked_up:.1f} s; resume -> sending in {restarted:.1f} s; "
        f"{held} sent before the pause"
    )
    assert WRITE not in log
    assert READ not in log
    received = delivered(store)
    assert len(received) == count
    assert set(received.values()) == {1}  # each exactly once
    assert set(ledger_rows(db).values()) == {"sent"}
    assert not list(tmp_path.glob("mailpacer-upload-*"))  # the upload's temp file is gone
