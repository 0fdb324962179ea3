"""A live progress line for long runs: a rewritten line on a terminal, periodic lines otherwise."""

from __future__ import annotations

from typing import TextIO

import trio

from mailpacer.engine.stats import CampaignStats

__all__ = ["ProgressDisplay", "format_duration"]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """Renders :class:`CampaignStats` to a stream until cancelled."""

    def __init__(self, stats: CampaignStats, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stats = stats
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 0.5 if self.tty else 10.0
        self._width = 0

    def line(self) -> str:
        s = self.stats
        c = s.counts
        total = max(1, s.total)
        done = total - s.remaining
        return (
            f"sent {c.get('sent', 0):,}  deferred {c.get('deferred', 0):,}  "
            f"failed {c.get('failed', 0) + c.get('bounced', 0):,}  "
            f"uncertain {c.get('uncertain', 0):,}  |  {s.rate:,.0f} msg/s  |  "
            f"{100.0 * done / total:5.1f}%  ETA {format_duration(s.eta)}"
        )

    def show(self) -> None:
        text = self.line()
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self.show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.show()
