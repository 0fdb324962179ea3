"""The campaign pipeline against a real Postfix smtp-sink and an SQLite ledger on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailpacer.config import parse_relay_url
from mailpacer.engine.campaign import CampaignRunner, EngineSettings
from mailpacer.engine.stats import CampaignStats
from mailpacer.ledger.store import Ledger
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.message.address import parse_address
from mailpacer.message.factory import StaticFactory
from mailpacer.metrics import Metrics

from ..servers.smtp_sink import SmtpSink, smtp_sink

__all__ = ["smtp_sink"]


def make_campaign(tmp_path: Path, count: int) -> tuple[Ledger, int, StaticFactory]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    campaign = ledger.create_campaign(
        "engine-test", sender="news@example.com", template_dir="-", settings={}
    )
    rows = []
    for i in range(count):
        address = parse_address(f"user{i:05d}@example.net")
        rows.append(
            {
                "email": address.address,
                "email_key": address.key,
                "source_row": i + 2,
                "variables": "{}",
            }
        )
    assert ledger.insert_recipients(campaign.id, rows) == count
    eml = tmp_path / "static.eml"
    eml.write_bytes(b"From: news@example.com\r\nSubject: hi\r\n\r\nHello\r\n.dot line\r\n")
    return ledger, campaign.id, StaticFactory(eml, envelope_sender="news@example.com")


class CountingLedger(AsyncLedger):
    """The real threaded ledger, counting the transactions that record outcomes."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.record_calls: list[int] = []

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "record":
            self.record_calls.append(len(list(args[0])))
        return await super().run(fn, *args, **kwargs)


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_outcomes_are_recorded_in_batches_and_every_message_arrives_once(
    tmp_path: Path, smtp_sink: SmtpSink, concurrency: int
) -> None:
    count = 3000
    ledger, campaign_id, factory = make_campaign(tmp_path, count)
    counting = CountingLedger(ledger)
    settings = EngineSettings(relays=(parse_relay_url(smtp_sink.url),), concurrency=concurrency)
    runner = CampaignRunner(
        counting,
        campaign_id,
        factory,
        settings,
        owner="test:1",
        stats=CampaignStats("engine-test"),
        metrics=Metrics(),
        exclusive=True,
    )
    result = await runner.run()
    assert result.run.get("sent") == count
    assert ledger.state_counts(campaign_id)["sent"] == count
    delivered = [r for m in smtp_sink.wait_for_count(count) for r in m.recipients]
    assert sorted(delivered) == sorted(f"user{i:05d}@example.net" for i in range(count))
    # Outcomes go to the ledger in batches (200 ms or 500 outcomes), not one per message.
    assert sum(counting.record_calls) == count
    assert len(counting.record_calls) <= count // 50
    assert max(counting.record_calls) <= settings.flush_size + settings.pipeline_depth * concurrency
    ledger.dispose()
