"""Operator decisions on campaigns, shared by the CLI (`mailpacer campaign ...`) and the
control API (``/api/v1/campaigns``).

Blocking, like the ledger: the CLI calls these directly, the API from a worker thread.
Expected failures raise :class:`CampaignError` subclasses whose message is meant for the
operator; the CLI turns them into one ``error:`` line (exit 2), the API into a JSON error
(:class:`CampaignNotFound` 404, :class:`CampaignConflict` 409, :class:`CampaignInvalid` 400).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailpacer.campaign_spec import CampaignSpec, build_factory
from mailpacer.ledger.states import CampaignState, RecipientState
from mailpacer.ledger.store import Campaign, Ledger
from mailpacer.sources.importer import ImportReport, import_rows
from mailpacer.sources.rows import RecipientSource, RecipientSourceError, SourceRow

__all__ = [
    "ACTIVE",
    "IMPORTING",
    "RETRYABLE",
    "CampaignConflict",
    "CampaignError",
    "CampaignInvalid",
    "CampaignNotFound",
    "Created",
    "Requeued",
    "campaign_document",
    "change_status",
    "create_campaign",
    "find_campaign",
    "render_sample",
    "requeue",
]

C = CampaignState
R = RecipientState

ACTIVE = ("pending", "claimed", "sending", "deferred")  # states with work left
RETRYABLE = ("failed", "deferred", "uncertain")  # what `retry` may put back to pending
IMPORTING = "importing"  # a campaign's note while its recipients are imported


class CampaignError(Exception):
    """An operator's request on a campaign that cannot be done; nothing was changed."""


class CampaignNotFound(CampaignError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class CampaignConflict(CampaignError):
    """The request does not fit the campaign's state (a name taken, resume a cancelled one)."""


class CampaignInvalid(CampaignError):
    """The request itself is wrong (a template the list does not fit, no state to retry)."""


def campaign_document(ledger: Ledger, campaign: Campaign) -> dict[str, Any]:
    """The campaign as `campaign show --json` prints it (and the API returns it)."""
    counts = ledger.state_counts(campaign.id)
    return {
        "campaign": campaign.name,
        "status": campaign.status,
        "total": sum(counts.values()),
        "counts": counts,
        "remaining": sum(counts[s] for s in ACTIVE),
        "sender": campaign.sender,
        "template": campaign.template_dir,
        "source": campaign.source,
        "settings": campaign.settings,
        "created_at": campaign.created_at,
        "finished_at": campaign.finished_at,
        "next_retry_at": ledger.next_due(campaign.id),
    }


def find_campaign(ledger: Ledger, name: str) -> Campaign:
    campaign = ledger.campaign_by_name(name)
    if campaign is None:
        known = ", ".join(c.name for c in ledger.list_campaigns()[:10]) or "none"
        raise CampaignNotFound(
            name, f"no campaign named {name!r} in {ledger.url_text} (campaigns: {known})"
        )
    return campaign


# action: (target, allowed from, past participle, the operator's standing order)
_TRANSITIONS: dict[str, tuple[CampaignState, tuple[CampaignState, ...], str, str | None]] = {
    "pause": (C.PAUSED, (C.READY, C.RUNNING, C.PAUSED), "paused", "pause"),
    "resume": (C.READY, (C.PAUSED, C.READY), "resumed", None),
    "cancel": (C.CANCELLED, tuple(C), "cancelled", None),
}


def change_status(ledger: Ledger, campaign: Campaign, action: str) -> Campaign:
    """``pause``, ``resume`` or ``cancel``; the campaign as it is afterwards.

    Pause and cancel take effect at a running sender's next claim; resume makes the
    campaign due again (the agents' next poll starts it)."""
    target, allowed, done, control = _TRANSITIONS[action]
    if not ledger.set_campaign_status(campaign.id, target, allowed_from=allowed, control=control):
        current = ledger.campaign_by_id(campaign.id)
        status = current.status if current is not None else "gone"
        raise CampaignConflict(f"campaign {campaign.name!r} is {status}; it cannot be {done}")
    changed = ledger.campaign_by_id(campaign.id)
    assert changed is not None
    return changed


@dataclass(frozen=True)
class Requeued:
    campaign: Campaign
    changed: dict[str, int]  # source state -> recipients moved


def requeue(
    ledger: Ledger,
    campaign: Campaign,
    *,
    states: Sequence[str] = (),
    resolution: str | None = None,
    emails: Sequence[str] | None = None,
) -> Requeued:
    """``retry`` (``states``: failed / deferred / uncertain back to pending) or
    ``resolve-uncertain`` (``resolution``: resend / mark-sent), optionally for some
    addresses only."""
    current = ledger.campaign_by_id(campaign.id)
    if current is None or current.status == C.CANCELLED:
        raise CampaignConflict(
            f"campaign {campaign.name!r} was cancelled; nothing in it can be retried"
        )
    moves: list[tuple[RecipientState, RecipientState, str]] = []
    if resolution is None:
        if not states:
            raise CampaignInvalid("say what to retry: --failed, --deferred and/or --uncertain")
        for state in states:
            if state not in RETRYABLE:
                raise CampaignInvalid(
                    f"cannot retry {state!r} recipients (retry: {', '.join(RETRYABLE)})"
                )
            moves.append((R(state), R.PENDING, "retry requested by the operator"))
    elif resolution == "resend":
        moves.append((R.UNCERTAIN, R.PENDING, "operator chose to resend"))
    elif resolution == "mark-sent":
        moves.append((R.UNCERTAIN, R.SENT, "operator marked it sent"))
    else:
        raise CampaignInvalid("say how to resolve: --resend or --mark-sent")
    now = time.time()
    changed = {
        src.value: ledger.requeue(campaign.id, src, dst, note=note, emails=emails, now=now)
        for src, dst, note in moves
    }
    after = ledger.campaign_by_id(campaign.id)
    assert after is not None
    return Requeued(after, changed)


def render_sample(spec: CampaignSpec, source: RecipientSource, size: int = 20) -> None:
    """Render the list's first rows: a template that fails for all of them (a variable the
    list does not have) is refused now, not discovered recipient by recipient later."""
    from mailpacer.message.headers import HeaderInjectionError
    from mailpacer.message.render import RenderError

    factory = build_factory(spec)
    tried = 0
    first_error = ""
    try:
        iterator = iter(source)
        for row in itertools.islice(iterator, size * 5):
            if not isinstance(row, SourceRow):
                continue
            tried += 1
            try:
                factory.build(row.line, row.address.address, row.variables)
            except (RenderError, HeaderInjectionError, ValueError) as exc:
                first_error = first_error or f"{source.unit} {row.line}: {exc}"
                if tried >= size:
                    break
                continue
            return  # one renders: the template fits the list
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    except RecipientSourceError as exc:
        raise CampaignInvalid(str(exc)) from None
    if first_error:
        raise CampaignInvalid(
            f"the template fails for the first {tried} recipient(s) of the list; nothing was "
            f"created. First error: {first_error}"
        )


@dataclass(frozen=True)
class Created:
    campaign: Campaign
    total: int  # recipients in the ledger
    report: ImportReport
    paused: bool


def create_campaign(
    ledger: Ledger,
    spec: CampaignSpec,
    source: RecipientSource,
    *,
    source_text: str,
    paused: bool = False,
    progress: Callable[[ImportReport], None] | None = None,
    sampled: bool = False,
) -> Created:
    """Queue a campaign: checked ``spec`` (``spec.check()`` done by the caller), a sample of
    the list rendered, then the campaign created *held* while the recipients are imported (no
    agent starts on half a list), then released (READY) unless ``paused``.

    Creating an existing name is a conflict, except finishing an interrupted create of the
    same campaign (same sender and template, still importing): rows already there are
    skipped. Recipients on the suppression list become *suppressed* at once.
    ``sampled``: the caller has run :func:`render_sample` already.
    """
    if not sampled:
        render_sample(spec, source)
    existing = ledger.campaign_by_name(spec.name)
    if existing is not None and not (
        existing.note == IMPORTING
        and existing.sender == spec.sender
        and existing.template_dir == spec.template_ref
    ):
        raise CampaignConflict(
            f"a campaign named {spec.name!r} already exists in {ledger.url_text} "
            f"({existing.status}); choose another name"
        )
    campaign = ledger.create_campaign(
        spec.name,
        sender=spec.sender,
        template_dir=spec.template_ref,
        settings=spec.settings(),
        source=source_text,
    )
    ledger.set_campaign_status(campaign.id, C.PAUSED, allowed_from=tuple(C), control="pause")
    ledger.update_campaign(campaign.id, note=IMPORTING)
    try:
        report = import_rows(ledger, campaign.id, source, progress=progress)
    except RecipientSourceError as exc:
        raise CampaignInvalid(
            f"{exc} (the campaign stays held; run the same command again to finish)"
        ) from None
    total = ledger.count_recipients(campaign.id)
    if total == 0:
        raise CampaignInvalid(
            f"no valid recipient in {source.description} ({report.rejected:,} rows "
            "rejected); the campaign stays held: fix the list and run the command again"
        )
    ledger.apply_suppressions(campaign.id, now=time.time())
    if not paused:
        ledger.set_campaign_status(campaign.id, C.READY, allowed_from=(C.PAUSED,))
    ledger.update_campaign(campaign.id, note=None)
    done = ledger.campaign_by_id(campaign.id)
    assert done is not None
    return Created(done, total, report, paused)
