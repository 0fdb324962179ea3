"""Pacing: how fast messages may go.

``RateLimiter`` is the single GCRA limiter of a one-shot send. The hierarchy (``Pacer``:
global → relay → domain group → campaign, with hour/day caps, send windows, warm-up ramps,
AIMD on throttling replies and fair sharing) is described in docs/pacing.md.
"""

from mailpacer.pacing.calendar import Ramp, SendWindows, TrioWallClock, WindowRule
from mailpacer.pacing.concurrency import Slots
from mailpacer.pacing.eta import estimate_finish
from mailpacer.pacing.feedback import (
    THROTTLE_CODES,
    Aimd,
    AimdSpec,
    ReplySignal,
    classify_reply,
    parse_retry_hint,
)
from mailpacer.pacing.groups import BUILTIN_GROUPS, DomainGroups, GroupRule
from mailpacer.pacing.hierarchy import (
    Limit,
    Pacer,
    acquire_together,
    available_together,
    ready_together,
    try_acquire_together,
)
from mailpacer.pacing.limits import Gcra, RateLimiter
from mailpacer.pacing.spec import (
    LimitSpec,
    PacingConfig,
    parse_limit,
    parse_pacing,
    parse_timezone,
    parse_windows,
)

__all__ = [
    "BUILTIN_GROUPS",
    "THROTTLE_CODES",
    "Aimd",
    "AimdSpec",
    "DomainGroups",
    "Gcra",
    "GroupRule",
    "Limit",
    "LimitSpec",
    "Pacer",
    "PacingConfig",
    "Ramp",
    "RateLimiter",
    "ReplySignal",
    "SendWindows",
    "Slots",
    "TrioWallClock",
    "WindowRule",
    "acquire_together",
    "available_together",
    "classify_reply",
    "estimate_finish",
    "parse_limit",
    "parse_pacing",
    "parse_retry_hint",
    "parse_timezone",
    "parse_windows",
    "ready_together",
    "try_acquire_together",
]
