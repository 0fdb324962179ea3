"""Operator input: relay URLs, durations, booleans."""

from __future__ import annotations

import pytest

from mailpacer.config import (
    ConfigError,
    RelayConfig,
    parse_bool,
    parse_duration,
    parse_relay_url,
    parse_share,
)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("smtp://127.0.0.1", "127.0.0.1", 25, "plain"),
        ("smtp://127.0.0.1:2525", "127.0.0.1", 2525, "plain"),
        ("smtps://mail.example.org", "mail.example.org", 465, "implicit"),
        ("smtps://mail.example.org:4650", "mail.example.org", 4650, "implicit"),
        ("smtp+starttls://mail.example.org", "mail.example.org", 587, "starttls"),
        ("submission://mail.example.org", "mail.example.org", 587, "starttls"),
        ("SMTP+STARTTLS://Mail.Example.ORG:25", "mail.example.org", 25, "starttls"),
        ("smtp://[::1]:25", "::1", 25, "plain"),
        ("  smtp://relay.example.org  ", "relay.example.org", 25, "plain"),
    ],
)
def test_schemes_hosts_and_default_ports(url: str, host: str, port: int, tls: str) -> None:
    relay = parse_relay_url(url)
    assert (relay.host, relay.port, relay.tls) == (host, port, tls)
    assert (relay.username, relay.password) == (None, None)
    assert relay.verify is True
    assert relay.allow_plain_auth is False
    assert (relay.cafile, relay.helo, relay.max_messages_per_connection) == (None, None, 0)


def test_credentials_are_percent_decoded() -> None:
    relay = parse_relay_url("smtps://user%40example.org:p%40ss%3Aw%2Fo%20rd%25@mail.example.org")
    assert relay.username == "user@example.org"
    assert relay.password == "p@ss:w/o rd%"


def test_empty_password_is_kept_distinct_from_none() -> None:
    relay = parse_relay_url("smtp+starttls://user:@mail.example.org")
    assert (relay.username, relay.password) == ("user", "")


def test_name_repr_and_str_never_show_the_password() -> None:
    relay = parse_relay_url("smtp+starttls://ann:s3cr3t@mail.example.org:2587?verify=false")
    assert relay.name == "smtp+starttls://ann:***@mail.example.org:2587"
    assert str(relay) == relay.name
    for text in (relay.name, str(relay), repr(relay), relay.url):
        assert "s3cr3t" not in text
    assert relay.password == "s3cr3t"
    assert parse_relay_url("smtp://[2001:db8::1]:25").name == "smtp://[2001:db8::1]:25"
    assert parse_relay_url("smtps://relay.example.org").name == "smtps://relay.example.org:465"


def test_options() -> None:
    relay = parse_relay_url(
        "smtps://relay.example.org?verify=no&cafile=/etc/ssl/ca.pem"
        "&allow_plain_auth=yes&helo=sender.example.org&max_per_connection=100"
    )
    assert relay == RelayConfig(
        url=relay.url,
        host="relay.example.org",
        port=465,
        tls="implicit",
        verify=False,
        cafile="/etc/ssl/ca.pem",
        allow_plain_auth=True,
        helo="sender.example.org",
        max_messages_per_connection=100,
    )
    assert parse_relay_url("smtp://h.example?helo=[192.0.2.1]").helo == "[192.0.2.1]"
    assert parse_relay_url("smtp://h.example?VERIFY=0").verify is False
    # the last value of a repeated option wins
    assert parse_relay_url("smtp://h.example?verify=0&verify=1").verify is True


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://relay.example.org", "scheme must be one of smtp://, smtps://, smtp+starttls://"),
        ("relay.example.org:25", "scheme must be one of"),
        ("", "scheme must be one of"),
        ("smtp://", "no host"),
        ("smtp://:25", "no host"),
        ("smtp://relay.example.org:99999", "Port out of range"),
        ("smtp://relay.example.org:smtp", "the port is not a number"),
        ("smtp://relay.example.org:0", "port 0 is not a usable port"),
        ("smtp://relay.example.org?tls=on", "unknown option(s) tls (known: allow_plain_auth,"),
        ("smtp://relay.example.org?verify=maybe", "invalid verify option 'maybe'"),
        ("smtp://relay.example.org?allow_plain_auth=2", "invalid allow_plain_auth option '2'"),
        ("smtp://relay.example.org?max_per_connection=-1", "max_per_connection must be an"),
        ("smtp://relay.example.org?max_per_connection=lots", "max_per_connection must be an"),
        ("smtp://:secret@relay.example.org", "a password needs a user name"),
        ("smtp://relay.example.org?helo=a%0D%0ARSET", "helo 'a\\r\\nRSET' must be a host name"),
        ("smtp://relay.example.org?helo=two%20words", "must be a host name"),
        ("smtp://relay.example.org?helo=-x", "must be a host name"),
    ],
)
def test_bad_relay_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_relay_url(url)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://ann:s3cr3t@relay.example.org",
        "smtp://ann:s3cr3t@relay.example.org:99999",
        "smtp://ann:s3cr3t@relay.example.org?bogus=1",
        "smtp://ann:s3cr3t@relay.example.org:0",
        "smtp://ann:s3/cr3t@relay.example.org",  # unescaped '/' ends the authority early
        "smtp://ann:s3cr3t@relay.example.org?max_per_connection=x",
    ],
)
def test_errors_mask_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_relay_url(url)
    message = str(info.value)
    assert "s3" not in message
    assert "cr3t" not in message
    assert "***" in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0", 0.0),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("5min", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h30min", 5400.0),
        ("1d12h", 129600.0),
        ("2d", 172800.0),
        (" 10 s ", 10.0),
        ("1H", 3600.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "  ", "s", "-5", "5x", "5 sec", "1h 30m", "h1", "1e3", "5mins"]
)
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)
    assert "expected e.g. 30s, 5m, 1h30m, 2d" in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        (" ON ", True),
        ("0", False),
        ("false", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text, "flag") is value


@pytest.mark.parametrize("text", ["", "2", "y", "enabled", "truee"])
def test_parse_bool_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid flag {text!r}: expected true or false"):
        parse_bool(text, "flag")


@pytest.mark.parametrize(("text", "value"), [("5%", 0.05), ("0.3", 0.3), ("0", 0.0), ("100%", 1.0)])
def test_shares(text: str, value: float) -> None:
    assert parse_share(text, "--guard-bounce-rate") == pytest.approx(value)


@pytest.mark.parametrize("text", ["150%", "-1", "five", "", "1.5"])
def test_bad_shares_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--guard-bounce-rate .*expected a share such as 5%"):
        parse_share(text, "--guard-bounce-rate")
