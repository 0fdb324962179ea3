"""DKIM signing (RFC 6376) with dkimpy, one signer per sending domain.

Everything that can be wrong with a key is found when the signer is loaded, before anything
is sent: an unreadable or unparsable key file, and, when the published DNS record is given,
a key that does not match the selector's public key (a probe message is signed and verified
against the record).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim

__all__ = ["DEFAULT_SIGNED_HEADERS", "DkimError", "DkimSigner", "load_signer"]

# What receivers expect signed (RFC 6376 §5.4.1), incl. the RFC 8058 pair when present.
DEFAULT_SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class DkimError(ValueError):
    """A DKIM key or setting that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class DkimSigner:
    domain: str
    selector: str
    private_key: bytes
    algorithm: bytes = b"rsa-sha256"  # RSA keys in PEM; ed25519 is not wired yet
    headers: tuple[bytes, ...] = DEFAULT_SIGNED_HEADERS

    def sign(self, message: bytes) -> bytes:
        """The message with its DKIM-Signature header prepended (CRLF line ends in and out)."""
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line[:1] not in (b" ", b"\t") and b":" in line
        }
        headers = [h for h in self.headers if h in present]
        try:
            signature = dkim.sign(
                message,
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=self.algorithm,
                include_headers=headers,
            )
        except dkim.DKIMException as exc:
            raise DkimError(f"DKIM signing for {self.domain} failed: {exc}") from None
        return bytes(signature) + message


def _check_name(what: str, value: str) -> str:
    labels = value.rstrip(".").split(".")
    if not value or not all(_LABEL.match(label) for label in labels):
        raise DkimError(f"DKIM {what} {value!r} is not a valid DNS name")
    return value.rstrip(".").lower()


def load_signer(
    *,
    domain: str,
    selector: str,
    key_file: Path,
    dns_record: str | None = None,
    headers: Sequence[bytes] = DEFAULT_SIGNED_HEADERS,
) -> DkimSigner:
    """Load and check a signer; ``dns_record`` is the TXT record published for the selector."""
    domain = _check_name("domain", domain)
    selector = _check_name("selector", selector)
    try:
        key = key_file.read_bytes()
    except OSError as exc:
        raise DkimError(f"cannot read DKIM key {str(key_file)!r}: {exc.strerror or exc}") from None
    signer = DkimSigner(domain, selector, key, headers=tuple(h.lower() for h in headers))
    probe = (
        f"From: probe@{domain}\r\nTo: probe@{domain}\r\nSubject: DKIM key check\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <probe@mailpacer>\r\n\r\n"
        "probe\r\n"
    ).encode()
    try:
        signed = signer.sign(probe)
    except DkimError as exc:
        raise DkimError(f"DKIM key {str(key_file)!r} is not usable: {exc}") from None
    except Exception as exc:  # dkimpy raises assorted errors for a malformed key
        raise DkimError(
            f"DKIM key {str(key_file)!r} is not a usable private key ({type(exc).__name__})"
        ) from None
    if dns_record is not None:
        record = dns_record.strip().encode()
        expected = f"{selector}._domainkey.{domain}."

        def lookup(name: bytes, timeout: int = 5) -> bytes | None:
            return record if name.decode().rstrip(".") + "." == expected else None

        if not dkim.verify(signed, dnsfunc=lookup):
            raise DkimError(
                f"DKIM key {str(key_file)!r} does not match the public key published for "
                f"selector {selector!r} of {domain} (the record given)"
            )
    return signer
