"""What a queued campaign is made of, stored in the ledger so any agent can send it.

`mailpacer campaign create` (and the control API) check a spec completely (sender, templates,
DKIM key, rate) before anything is written; `mailpacer run` rebuilds the message factory
from the stored spec. Paths are stored absolute: the agent reads them on its own host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from mailpacer.config import ConfigError, Rate, parse_rate
from mailpacer.message.address import InvalidAddress, parse_address
from mailpacer.message.dkim import DkimError, DkimSigner, load_signer
from mailpacer.message.factory import MessageFactory, PersonalizedFactory, StaticFactory
from mailpacer.message.headers import HeaderInjectionError, format_mailbox
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import TemplateSet
from mailpacer.pacing.spec import LimitSpec, parse_limit

UTC = ZoneInfo("UTC")

__all__ = [
    "AGENT_MODE",
    "CampaignSpec",
    "CampaignSpecError",
    "build_factory",
    "load_dkim",
    "parse_sender",
]

AGENT_MODE = "agent"  # settings["mode"] of campaigns that `mailpacer run` sends


class CampaignSpecError(ValueError):
    """The campaign cannot be built; the message names the bad option."""


def parse_sender(text: str) -> tuple[str, str]:
    """``'News <news@example.com>'`` -> (envelope address, safe From header)."""
    name, address = parseaddr(text)
    if not address:
        raise CampaignSpecError(
            f"--from {text!r}: expected an address, e.g. 'News <news@example.com>'"
        )
    try:
        parsed = parse_address(address)
    except InvalidAddress as exc:
        raise CampaignSpecError(f"--from {text!r}: {exc}") from None
    try:
        header = format_mailbox(name or None, parsed.address)
    except HeaderInjectionError as exc:
        raise CampaignSpecError(f"--from: {exc}") from None
    return parsed.address, header


def load_dkim(
    *,
    key: Path | None,
    selector: str | None,
    domain: str | None,
    envelope_sender: str,
    dns_record: Path | None = None,
) -> DkimSigner | None:
    if key is None and selector is None:
        if domain is not None or dns_record is not None:
            raise CampaignSpecError("DKIM needs --dkim-key FILE and --dkim-selector NAME")
        return None
    if key is None or selector is None:
        raise CampaignSpecError("DKIM needs both --dkim-key FILE and --dkim-selector NAME")
    record = None
    if dns_record is not None:
        try:
            record = dns_record.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise CampaignSpecError(
                f"cannot read --dkim-dns-record {str(dns_record)!r}: {exc}"
            ) from None
    try:
        return load_signer(
            domain=domain or envelope_sender.rpartition("@")[2],
            selector=selector,
            key_file=key,
            dns_record=record,
        )
    except DkimError as exc:
        raise CampaignSpecError(str(exc)) from None


@dataclass(frozen=True)
class CampaignSpec:
    """Everything needed to send a campaign, except relays (the agent's) and recipients."""

    name: str
    sender: str  # as given, e.g. 'News <news@example.com>'
    template: Path | None = None
    message: Path | None = None
    rate: str | None = None
    burst: int = 1
    unsubscribe_url: str | None = None
    dkim_key: Path | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    guard_bounce_rate: float = 0.05
    guard_deferral_rate: float = 0.30
    # The campaign's own level of the pacing hierarchy (docs/pacing.md): per_hour, per_day,
    # windows, ramp, timezone...; rate and burst above apply unless it sets its own.
    pacing: Mapping[str, Any] | None = None

    def limit_spec(self, timezone: ZoneInfo = UTC) -> LimitSpec:
        """This campaign's level for the pacer (CampaignSpecError if the table is bad)."""
        table: dict[str, Any] = dict(self.pacing or {})
        if self.rate and "rate" not in table:
            table["rate"] = self.rate
        if "burst" not in table:
            table["burst"] = self.burst
        try:
            return parse_limit(table, f"campaign {self.name!r} pacing", timezone=timezone)
        except ConfigError as exc:
            raise CampaignSpecError(str(exc)) from None

    def check(self) -> None:
        """Raise CampaignSpecError unless the campaign could be built right now."""
        if not self.name or len(self.name) > 200 or any(c in self.name for c in "\r\n\0"):
            raise CampaignSpecError("--name: 1 to 200 characters, on one line")
        if (self.template is None) == (self.message is None):
            raise CampaignSpecError("give exactly one of --template DIR or --message FILE.eml")
        if self.burst < 1:
            raise CampaignSpecError(f"--burst {self.burst}: must be at least 1")
        for option, share in (
            ("--guard-bounce-rate", self.guard_bounce_rate),
            ("--guard-deferral-rate", self.guard_deferral_rate),
        ):
            if not 0 <= share <= 1:
                raise CampaignSpecError(f"{option} {share!r}: a share from 0 to 1")
        self.parsed_rate()
        self.limit_spec()
        build_factory(self)

    def parsed_rate(self) -> Rate | None:
        try:
            return parse_rate(self.rate) if self.rate else None
        except ConfigError as exc:
            raise CampaignSpecError(f"--rate: {exc}") from None

    @property
    def template_ref(self) -> str:
        """What the ledger's ``template_dir`` column holds: the absolute path used."""
        path = self.template or self.message
        assert path is not None
        return str(path.resolve())

    def settings(self) -> dict[str, Any]:
        return {
            "mode": AGENT_MODE,
            "kind": "template" if self.template is not None else "message",
            "rate": self.rate,
            "burst": self.burst,
            "unsubscribe_url": self.unsubscribe_url,
            "dkim": (
                {
                    "key": str(self.dkim_key.resolve()),
                    "selector": self.dkim_selector,
                    "domain": self.dkim_domain,
                }
                if self.dkim_key is not None
                else None
            ),
            "guard": {
                "bounce_rate": self.guard_bounce_rate,
                "deferral_rate": self.guard_deferral_rate,
            },
            "pacing": dict(self.pacing) if self.pacing else None,
        }

    @classmethod
    def stored(
        cls, name: str, sender: str, template_ref: str, settings: dict[str, Any]
    ) -> CampaignSpec:
        """The spec of a campaign row (see ``settings``)."""
        path = Path(template_ref)
        dkim = settings.get("dkim") or {}
        guard = settings.get("guard") or {}
        kind = settings.get("kind", "template")
        return cls(
            name=name,
            sender=sender,
            template=path if kind == "template" else None,
            message=path if kind == "message" else None,
            rate=settings.get("rate"),
            burst=int(settings.get("burst") or 1),
            unsubscribe_url=settings.get("unsubscribe_url"),
            dkim_key=Path(dkim["key"]) if dkim.get("key") else None,
            dkim_selector=dkim.get("selector"),
            dkim_domain=dkim.get("domain"),
            guard_bounce_rate=float(guard.get("bounce_rate", 0.05)),
            guard_deferral_rate=float(guard.get("deferral_rate", 0.30)),
            pacing=settings.get("pacing") or None,
        )


def build_factory(
    spec: CampaignSpec,
    *,
    return_path: Callable[[int], str] | None = None,
    list_unsubscribe: Callable[[str], Sequence[str]] | None = None,
) -> MessageFactory:
    """The message factory for ``spec``; CampaignSpecError when a part is unusable.
    ``return_path``: per-recipient envelope senders (VERP) for the bounce listener;
    ``list_unsubscribe``: the agent's signed unsubscribe URIs of an address (templates only:
    a prepared ``.eml`` is sent as it is, and the campaign's ``unsubscribe_url`` wins)."""
    envelope_sender, from_header = parse_sender(spec.sender)
    signer = load_dkim(
        key=spec.dkim_key,
        selector=spec.dkim_selector,
        domain=spec.dkim_domain,
        envelope_sender=envelope_sender,
    )
    if spec.template is not None:
        extra = {"unsubscribe_url": spec.unsubscribe_url} if spec.unsubscribe_url else {}
        try:
            templates = TemplateSet(spec.template, extra=extra)
        except Exception as exc:  # any template problem is the operator's to fix
            raise CampaignSpecError(str(exc)) from None
        composer = MessageComposer(
            from_header=from_header, message_id_domain=envelope_sender.rpartition("@")[2]
        )
        return PersonalizedFactory(
            templates,
            composer,
            envelope_sender=envelope_sender,
            campaign=spec.name,
            signer=signer,
            return_path=return_path,
            list_unsubscribe=list_unsubscribe,
        )
    assert spec.message is not None
    try:
        return StaticFactory(
            spec.message, envelope_sender=envelope_sender, signer=signer, return_path=return_path
        )
    except Exception as exc:
        raise CampaignSpecError(str(exc)) from None
