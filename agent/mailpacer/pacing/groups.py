"""Destination domain groups: which mailbox provider a recipient's domain belongs to.

Providers limit per sender across all their domains (gmail.com and googlemail.com are one
Gmail), and Google Workspace / Microsoft 365 host countless company domains whose MX hosts
give them away (``aspmx.l.google.com``, ``*.mail.protection.outlook.com``). A group is
matched by the domain first, then by the MX host's suffix. The MX host is an input: this
module does no DNS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["BUILTIN_GROUPS", "DomainGroups", "GroupRule"]


@dataclass(frozen=True, slots=True)
class GroupRule:
    """``domains``: exact names, ``*.example.com`` (any subdomain) or ``yahoo.*`` (the label
    under any public suffix: yahoo.com, yahoo.co.uk). ``mx``: host suffixes, matched on
    label boundaries (``google.com`` matches ``aspmx.l.google.com``)."""

    name: str
    domains: tuple[str, ...] = ()
    mx: tuple[str, ...] = ()


BUILTIN_GROUPS: tuple[GroupRule, ...] = (
    GroupRule("gmail", ("gmail.com", "googlemail.com"), ("google.com", "googlemail.com")),
    GroupRule(
        "outlook",
        ("outlook.*", "hotmail.*", "live.*", "msn.com", "windowslive.com", "passport.com"),
        ("protection.outlook.com", "outlook.com", "hotmail.com"),
    ),
    GroupRule(
        "yahoo",
        ("yahoo.*", "ymail.com", "rocketmail.com", "aol.*", "aim.com", "verizon.net"),
        ("yahoodns.net", "aol.com"),
    ),
    GroupRule("icloud", ("icloud.com", "me.com", "mac.com"), ("mail.icloud.com",)),
    GroupRule("gmx", ("gmx.*", "web.de"), ("gmx.net", "gmx.com", "web.de")),
)


def _clean(name: str) -> str:
    return name.strip().rstrip(".").lower()


class DomainGroups:
    """Domain → group name; unknown domains have no group (``None``)."""

    def __init__(self, rules: Iterable[GroupRule] = BUILTIN_GROUPS) -> None:
        self._exact: dict[str, str] = {}
        self._subdomains: list[tuple[str, str]] = []  # ("example.com", group) for *.example.com
        self._labels: dict[str, str] = {}  # "yahoo" for yahoo.*
        self._mx: list[tuple[str, str]] = []
        self.names: list[str] = []
        for rule in rules:
            self.add(rule)

    def add(self, rule: GroupRule) -> None:
        """Add domains and MX suffixes to a group (later rules win on the same domain)."""
        if rule.name not in self.names:
            self.names.append(rule.name)
        for pattern in map(_clean, rule.domains):
            if pattern.startswith("*."):
                self._subdomains.append((pattern[2:], rule.name))
            elif pattern.endswith(".*"):
                self._labels[pattern[:-2]] = rule.name
            else:
                self._exact[pattern] = rule.name
        for suffix in map(_clean, rule.mx):
            self._mx.append((suffix, rule.name))
        # longest suffix first: "mail.protection.outlook.com" before "outlook.com"
        self._subdomains.sort(key=lambda item: -len(item[0]))
        self._mx.sort(key=lambda item: -len(item[0]))

    def group_for(self, domain: str, mx: str | None = None) -> str | None:
        """The group of ``domain`` (or of an address: the part after the last ``@``), else
        of its MX host ``mx``, else None."""
        domain = _clean(domain.rpartition("@")[2])
        found = self._exact.get(domain)
        if found is not None:
            return found
        for suffix, name in self._subdomains:
            if domain.endswith("." + suffix):
                return name
        label, dot, rest = domain.partition(".")
        if dot and rest and label in self._labels:
            return self._labels[label]
        if mx:
            host = _clean(mx)
            for suffix, name in self._mx:
                if host == suffix or host.endswith("." + suffix):
                    return name
        return None

    @classmethod
    def from_mapping(cls, extra: Mapping[str, GroupRule], *, builtin: bool = True) -> DomainGroups:
        groups = cls(BUILTIN_GROUPS if builtin else ())
        for rule in extra.values():
            groups.add(rule)
        return groups
