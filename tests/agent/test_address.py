"""Recipient address validation and normalization."""

from __future__ import annotations

import unicodedata

import pytest

from mailpacer.message.address import Address, InvalidAddress, parse_address


@pytest.mark.parametrize(
    ("text", "address", "key"),
    [
        ("ann@example.org", "ann@example.org", "ann@example.org"),
        ("  ann@example.org\t", "ann@example.org", "ann@example.org"),
        ("Ann.Lee@Example.ORG", "Ann.Lee@example.org", "ann.lee@example.org"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
        ("o'brien@example.org", "o'brien@example.org", "o'brien@example.org"),
        ("x!#$%&*/=?^_`{|}~-@example.org", "x!#$%&*/=?^_`{|}~-@example.org", None),
        ("a@example.org.", "a@example.org", "a@example.org"),  # root dot dropped
        ("a@my-host.example", "a@my-host.example", "a@my-host.example"),
    ],
)
def test_valid_ascii_addresses(text: str, address: str, key: str | None) -> None:
    parsed = parse_address(text)
    assert parsed.address == address
    assert parsed.key == (key or address.lower())
    assert parsed.smtputf8 is False
    assert parsed.domain == address.rpartition("@")[2]


def test_key_is_case_insensitive_but_address_keeps_local_case() -> None:
    a = parse_address("John.Doe@EXAMPLE.org")
    b = parse_address("john.doe@example.ORG")
    assert a.key == b.key
    assert a.address == "John.Doe@example.org"  # local part case is the mailbox owner's
    assert b.address == "john.doe@example.org"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("ann.example.org", "exactly one @"),
        ("ann@@example.org", "exactly one @"),
        ("a@b@example.org", "exactly one @"),
        ("@example.org", "empty local part"),
        ("ann@", "has no dot"),
        ("ann lee@example.org", "forbidden character in local part"),
        ("ann\t@example.org", "forbidden character in local part"),
        ("ann@exa mple.org", "forbidden character in domain"),
        ('"ann"@example.org', "forbidden character in local part"),
        ("ann,bob@example.org", "forbidden character in local part"),
        ("<ann@example.org>", "forbidden character"),
        ("ann\r\n@example.org", "forbidden character in local part"),
        ("ann@example.org\x00", "forbidden character in domain"),
        ("a..b@example.org", "dots"),
        (".ann@example.org", "dots"),
        ("ann.@example.org", "dots"),
        ("ann@example..org", "invalid domain"),
        ("ann@-example.org", "invalid domain"),
        ("ann@example-.org", "invalid domain"),
        ("ann@exa_mple.org", "invalid domain"),
        ("ann@localhost", "has no dot"),
        ("ann@192.168.0.1", "looks like an IP address"),
        ("ann@[192.168.0.1]", "forbidden character in domain"),
        ("ann@" + "b" * 64 + ".org", "invalid domain"),  # a label has at most 63 octets
        ("ann@☃.example", "invalid international domain"),
        ("ann@bu\u200dcher.example", "invalid international domain"),
    ],
)
def test_invalid_addresses_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=reason):
        parse_address(text)


def test_local_part_length_limit_is_64_octets() -> None:
    assert parse_address("a" * 64 + "@example.org").address.startswith("a" * 64)
    with pytest.raises(InvalidAddress, match="local part longer than 64 octets"):
        parse_address("a" * 65 + "@example.org")
    # octets, not characters: 32 two-byte characters are 64 octets, 33 are too many
    assert parse_address("é" * 32 + "@example.org").smtputf8
    with pytest.raises(InvalidAddress, match="longer than 64 octets"):
        parse_address("é" * 33 + "@example.org")


def test_total_length_limit_is_254_octets() -> None:
    local = "a" * 64
    # 64 + 1 + 189 = 254
    domain = ".".join(["b" * 63, "c" * 63, "d" * 61])
    assert len(domain) == 189
    assert len(parse_address(f"{local}@{domain}").address) == 254
    longer = ".".join(["b" * 63, "c" * 63, "d" * 62])
    with pytest.raises(InvalidAddress, match="longer than 254 octets"):
        parse_address(f"{local}@{longer}")


def test_domain_length_limit() -> None:
    domain = ".".join(["a" * 63] * 4)  # 255 characters
    with pytest.raises(InvalidAddress, match="domain longer than 253"):
        parse_address(f"x@{domain}")


def test_error_message_truncates_hostile_input() -> None:
    with pytest.raises(InvalidAddress) as info:
        parse_address("a" * 10_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("ann@bücher.example", "ann@xn--bcher-kva.example"),
        ("ann@BÜCHER.example", "ann@xn--bcher-kva.example"),  # UTS 46 case mapping
        ("ann@xn--bcher-kva.example", "ann@xn--bcher-kva.example"),
        ("ann@XN--BCHER-KVA.EXAMPLE", "ann@xn--bcher-kva.example"),
        ("ann@例え.テスト", "ann@xn--r8jz45g.xn--zckzah"),
    ],
)
def test_idna_domain_becomes_punycode(text: str, address: str) -> None:
    parsed = parse_address(text)
    assert parsed.address == address
    assert parsed.address.isascii()
    assert parsed.smtputf8 is False  # an A-label domain needs no SMTPUTF8


def test_idna_forms_of_one_domain_share_a_key() -> None:
    assert parse_address("a@bücher.example").key == parse_address("a@xn--bcher-kva.example").key


def test_utf8_local_part_is_flagged_smtputf8() -> None:
    parsed = parse_address("Jörg@Bücher.example")
    assert parsed == Address("Jörg@xn--bcher-kva.example", "jörg@xn--bcher-kva.example", True)
    assert parse_address("用户@example.org").smtputf8


def test_utf8_local_part_dots_are_checked() -> None:
    for text in ("jö..rg@example.org", ".jörg@example.org", "jörg.@example.org"):
        with pytest.raises(InvalidAddress, match="dots"):
            parse_address(text)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\u00a0", "\u200b", "\u202e"])
def test_utf8_local_part_refuses_invisible_and_line_breaking_characters(char: str) -> None:
    with pytest.raises(InvalidAddress, match="invisible or control character"):
        parse_address(f"jö{char}rg@example.org")


def test_utf8_key_is_normalization_insensitive() -> None:
    composed = unicodedata.normalize("NFC", "jörg@example.org")
    decomposed = unicodedata.normalize("NFD", "jörg@example.org")
    assert composed != decomposed
    assert parse_address(composed).key == parse_address(decomposed).key
    # the address itself is sent as the list has it
    assert parse_address(decomposed).address == decomposed
