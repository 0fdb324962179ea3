"""From a valid unsubscribe token to the ledger: the one code path of the HTTP one-click
endpoint and of the ``unsubscribe+TOKEN@domain`` mailbox."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.unsubscribe.tokens import Unsubscribe

__all__ = ["UnsubscribeRecorder"]

log = logging.getLogger("mailpacer.unsubscribe")


class UnsubscribeRecorder:
    """``await recorder.record(request)``: suppress the address (``Ledger.unsubscribe``).

    ``report``: also write a ``recipient.unsubscribed`` event to the outbox (only when a
    reporter reads it) and call ``on_events`` so it goes out soon."""

    def __init__(
        self,
        ledger: AsyncLedger,
        *,
        report: bool = False,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.report = report
        self.on_events = on_events
        self.recorded = 0  # addresses put on the suppression list

    async def record(self, request: Unsubscribe, *, within: float | None = None) -> bool:
        """True when the address was added, False when it was listed already.

        ``within`` seconds (an HTTP request): ``trio.TooSlowError`` or the database's error
        when it cannot be done by then; None (mail, which has nobody waiting): wait out a
        database outage (``AsyncLedger.patiently``)."""
        call = functools.partial(
            self.ledger.sync.unsubscribe,
            request.campaign_id,
            request.address,
            via=request.via,
            now=time.time(),
            report=self.report,
        )
        if within is None:
            added = await self.ledger.patiently(call)
        else:
            added = await self.ledger.run_within(within, call)
        log.info(
            "%s unsubscribed (%s, campaign %d)%s",
            request.address,
            request.via,
            request.campaign_id,
            "" if added else "; already on the suppression list",
            extra={
                "event": "recipient.unsubscribed",
                "email": request.address,
                "campaign_id": request.campaign_id,
            },
        )
        if added:
            self.recorded += 1
            if self.report and self.on_events is not None:
                self.on_events()
        return added
