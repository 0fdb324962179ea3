"""Signed unsubscribe tokens, the List-Unsubscribe headers they go into (also from the
render pool's worker processes), and the [unsubscribe] configuration."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import re
from pathlib import Path

import pytest

from mailpacer.agentconfig import load_agent_config
from mailpacer.bounces.verp import Verp
from mailpacer.campaign_spec import CampaignSpec, build_factory
from mailpacer.config import ConfigError
from mailpacer.engine.render_pool import RenderPool
from mailpacer.unsubscribe import (
    Unsubscribe,
    UnsubscribeSettings,
    check_base_url,
    mailto_token,
    make_token,
    read_token,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "welcome"
SECRET = b"an-unsubscribe-secret-0123456789"
SETTINGS = UnsubscribeSettings("https://mail.example.com", SECRET, "bounces.example.com")
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
VARIABLES = {"first_name": "Ana", "last_name": "T", "city": "Porto", "member_id": "M-1"}


def test_a_token_names_its_campaign_and_address_and_nothing_else_passes() -> None:
    token = make_token(SECRET, 300, "Jane.Doe@Example.org")
    assert TOKEN_CHARS.fullmatch(token)
    assert len(token) <= 48  # 2-byte campaign id + 20-byte address + 8-byte tag, base64
    assert read_token(SECRET, token) == Unsubscribe(300, "Jane.Doe@Example.org")
    assert read_token(b"another-secret-of-32-bytes-xxxxx", token) is None
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for n in range(len(raw)):  # any changed byte: campaign, address or tag
        tampered = bytearray(raw)
        tampered[n] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        assert read_token(SECRET, forged) is None, n
    # another recipient's address with this token's tag
    other = base64.urlsafe_b64encode(bytes(raw).replace(b"Jane", b"John")).rstrip(b"=")
    assert read_token(SECRET, other.decode()) is None
    assert read_token(SECRET, token[:-1]) is None  # truncated
    assert read_token(SECRET, token + "=") is None  # padding is not part of the alphabet
    assert read_token(SECRET, token.swapcase()) is None  # mail systems that fold case
    assert read_token(SECRET, "") is None
    assert read_token(SECRET, "A" * 5000) is None
    assert read_token(SECRET, token[:10] + "\r\n" + token[10:]) is None


def test_a_non_canonical_spelling_of_a_valid_token_is_refused() -> None:
    """base64's last character can carry stray bits; one token has one spelling only."""
    for address in ("a@b.example", "ab@b.example", "abc@b.example"):
        token = make_token(SECRET, 7, address)
        if len(token) % 4 == 0:
            continue  # no spare bits
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        index = alphabet.index(token[-1])
        variant = token[:-1] + alphabet[index ^ 1]
        assert read_token(SECRET, variant) is None


def test_verp_and_unsubscribe_signatures_do_not_stand_in_for_each_other() -> None:
    """The shared signing helper keeps VERP's return paths exactly as before (return paths
    already out there must still bounce) and separates the two uses."""
    verp = Verp("bounces.example.com", SECRET)
    address = verp.address(123456)
    legacy = hmac.new(SECRET, b"2n9c", hashlib.sha256).hexdigest()[:16]
    assert address == f"bounce+2n9c-{legacy}@bounces.example.com"
    assert verp.recipient_id(address) == 123456
    token = make_token(SECRET, 1, "a@b.example")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    payload, tag = raw[:-8], raw[-8:]
    assert hmac.new(SECRET, payload, hashlib.sha256).digest()[:8] != tag  # has a purpose


def test_headers_carry_https_and_mailto_uris_and_cannot_be_injected() -> None:
    uris = SETTINGS.uris(12, "jane@example.org")
    assert uris[0].startswith("https://mail.example.com/unsubscribe/")
    token = uris[0].rsplit("/", 1)[1]
    assert uris[1] == f"mailto:unsubscribe+{token}@bounces.example.com"
    # An address with a line break in it still gives a token of base64url characters.
    evil = SETTINGS.uris(12, "x\r\nBcc: victim@example.net@example.org")
    for uri in evil:
        assert not set(uri) & set("\r\n<>, ")
    assert read_token(SECRET, evil[0].rsplit("/", 1)[1]) == Unsubscribe(
        12, "x\r\nBcc: victim@example.net@example.org"
    )
    # RFC 5321: a local part has at most 64 octets; longer ones get the HTTPS URI only
    long_address = "a.rather.long.name.of.somebody@subdomain.example.org"
    (only,) = SETTINGS.uris(12, long_address)
    assert only.startswith("https://")
    assert (
        UnsubscribeSettings("http://127.0.0.1:8025", SECRET)
        .uris(1, "a@b.example")[0]
        .startswith("http://127.0.0.1:8025/unsubscribe/")
    )


def test_mailto_addresses() -> None:
    token = make_token(SECRET, 3, "a@b.example")
    domain = "bounces.example.com"
    assert mailto_token(f"unsubscribe+{token}@{domain}", domain) == token
    assert mailto_token(f"<UNSUBSCRIBE+{token}@Bounces.Example.COM>", domain) == token
    assert mailto_token(f"unsubscribe+{token}@other.example", domain) is None
    assert mailto_token(f"bounce+{token}@{domain}", domain) is None
    assert mailto_token(f"unsubscribe@{domain}", domain) is None
    assert mailto_token(f"unsubscribe+a=b@{domain}", domain) is None


def message_from(
    factory_spec: CampaignSpec, settings: UnsubscribeSettings
) -> email.message.Message:
    factory = build_factory(
        factory_spec, list_unsubscribe=lambda address: settings.uris(42, address)
    )
    built = factory.build(1, "jane@example.org", VARIABLES)
    payload = built.payload.replace(b"\r\n..", b"\r\n.")
    return email.message_from_bytes(payload, policy=email.policy.default)


def test_each_message_gets_its_recipients_links_unless_the_campaign_has_its_own() -> None:
    spec = CampaignSpec(name="spring", sender="News <news@example.com>", template=TEMPLATE)
    message = message_from(spec, SETTINGS)
    header = " ".join(str(message["List-Unsubscribe"]).split())
    https, mailto = re.fullmatch(r"<(https://[^>]+)>, <(mailto:[^>]+)>", header).groups()  # type: ignore[union-attr]
    token = https.rsplit("/", 1)[1]
    assert read_token(SECRET, token) == Unsubscribe(42, "jane@example.org")
    assert mailto == f"mailto:unsubscribe+{token}@bounces.example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    own = CampaignSpec(
        name="spring",
        sender="News <news@example.com>",
        template=TEMPLATE,
        unsubscribe_url="https://crm.example.com/u?e={{ email | urlencode }}",
    )
    theirs = message_from(own, SETTINGS)
    assert theirs["List-Unsubscribe"] == "<https://crm.example.com/u?e=jane%40example.org>"


async def test_the_render_pool_workers_sign_the_same_links() -> None:
    """The workers rebuild the factory from the spec; the settings travel pickled (the
    secret out of every repr)."""
    assert "an-unsubscribe-secret" not in repr(SETTINGS)
    spec = CampaignSpec(name="spring", sender="News <news@example.com>", template=TEMPLATE)
    row = (5, "jane@example.org", '{"first_name": "Ana", "last_name": "T", "city": "P", '
           '"member_id": "M"}', 1)  # fmt: skip
    with RenderPool(spec, 1, unsubscribe=(SETTINGS, 42)) as pool:
        [rendered] = await pool.render([row])
    assert rendered.error is None
    message = email.message_from_bytes(rendered.payload, policy=email.policy.default)
    header = str(message["List-Unsubscribe"])
    token = header.split("/unsubscribe/", 1)[1].split(">", 1)[0]
    assert read_token(SECRET, token) == Unsubscribe(42, "jane@example.org")


def write(tmp_path: Path, text: str, secret: str = "s" * 32) -> Path:
    (tmp_path / "u-secret").write_text(secret)
    (tmp_path / "b-secret").write_text("b" * 32)
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ndb = "sqlite:////tmp/x.db"\n[[relay]]\nurl = "smtp://127.0.0.1:25"\n' + text
    )
    return path


BOUNCES = '[bounces]\nlisten = "127.0.0.1:2526"\ndomain = "Bounces.Example.com"\n'


def test_configuration(tmp_path: Path) -> None:
    secret = tmp_path / "u-secret"
    config = load_agent_config(
        write(tmp_path, BOUNCES + f'secret_file = "{tmp_path / "b-secret"}"\n'
              f'[unsubscribe]\nbase_url = "https://mail.example.com/"\nsecret_file = "{secret}"\n')
    )  # fmt: skip
    assert config.unsubscribe == UnsubscribeSettings(
        "https://mail.example.com", b"s" * 32, "bounces.example.com"
    )
    assert "s" * 32 in config.secrets()
    table = f'[unsubscribe]\nbase_url = "http://10.0.0.1:8025"\nsecret_file = "{secret}"\n'
    alone = load_agent_config(write(tmp_path, table))
    assert alone.unsubscribe is not None
    assert alone.unsubscribe.mailto_domain is None  # no [bounces]: no listener for mail


@pytest.mark.parametrize(
    ("table", "secret", "error"),
    [
        ('base_url = "mail.example.com"\nsecret_file = "{s}"\n', "s" * 32,
         r"\[unsubscribe\]\.base_url = 'mail.example.com': expected an https:// \(or http://\)"),
        ('base_url = "ftp://mail.example.com"\nsecret_file = "{s}"\n', "s" * 32, "https://"),
        ('base_url = "https://"\nsecret_file = "{s}"\n', "s" * 32, "has no host"),
        ('base_url = "https://x.example/a b"\nsecret_file = "{s}"\n', "s" * 32, "without spaces"),
        ('base_url = "https://x.example/?a=1"\nsecret_file = "{s}"\n', "s" * 32, "no query"),
        ('secret_file = "{s}"\n', "s" * 32, r"base_url is required"),
        ('base_url = "https://x.example"\n', "s" * 32, "secret_file is required"),
        ('base_url = "https://x.example"\nsecret_file = "{s}.missing"\n', "s" * 32,
         r"secret_file: cannot read '.*missing': No such file or directory"),
        ('base_url = "https://x.example"\nsecret_file = "{s}"\n', "short", "at least 16 bytes"),
        ('base_url = "https://x.example"\nsecret_file = "{s}"\nmailto_domain = "m.example"\n',
         "s" * 32, r"mailto_domain needs \[bounces\]"),
        ('base_url = "https://x.example"\nsecret_file = "{s}"\nlink = 1\n', "s" * 32,
         "unknown key"),
    ],
)  # fmt: skip
def test_configuration_errors_are_one_line(
    tmp_path: Path, table: str, secret: str, error: str
) -> None:
    path = write(tmp_path, "[unsubscribe]\n" + table.format(s=tmp_path / "u-secret"), secret)
    with pytest.raises(ConfigError, match=error) as caught:
        load_agent_config(path)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_unreadable_secret_and_no_http_server(tmp_path: Path) -> None:
    """(A directory stands for an unreadable file: the tests may run as root.)"""
    folder = tmp_path / "secrets"
    folder.mkdir()
    table = f'[unsubscribe]\nbase_url = "https://x.example"\nsecret_file = "{folder}"\n'
    path = write(tmp_path, table)
    with pytest.raises(ConfigError, match=r"\.secret_file: cannot read .*: Is a directory"):
        load_agent_config(path)
    (tmp_path / "u-secret").write_bytes(b"\xff" * 20)
    path.write_text(path.read_text().replace(str(folder), str(tmp_path / "u-secret")))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_agent_config(path)
    (tmp_path / "u-secret").write_text("s" * 32)
    path.write_text(path.read_text().replace("[agent]\n", '[agent]\nhttp = ""\n'))
    with pytest.raises(ConfigError, match=r"\[unsubscribe\] needs \[agent\]\.http"):
        load_agent_config(path)


def test_check_base_url() -> None:
    assert check_base_url("https://mail.example.com/mp/") == "https://mail.example.com/mp"
    with pytest.raises(ValueError, match="port"):
        check_base_url("https://mail.example.com:99999")
    with pytest.raises(ValueError, match="without spaces, quotes"):
        check_base_url("https://mail.example.com/<x>")


def test_exported_members() -> None:
    import mailpacer.unsubscribe as unsubscribe

    assert sorted(unsubscribe.__all__) == sorted(set(unsubscribe.__all__))
    for name in unsubscribe.__all__:
        member = getattr(unsubscribe, name)
        module = getattr(member, "__module__", "mailpacer.unsubscribe")
        assert module.startswith("mailpacer.unsubscribe"), (name, module)


def test_doctor_says_what_the_links_look_like() -> None:
    from mailpacer.commands.doctor import unsubscribe_check

    https = unsubscribe_check(SETTINGS)
    assert https.status == "ok"
    assert https.detail == (
        "https://mail.example.com/unsubscribe/TOKEN, mailto:unsubscribe+TOKEN@bounces.example.com"
    )
    plain = unsubscribe_check(UnsubscribeSettings("http://10.0.0.1:8025", SECRET))
    assert plain.status == "warn"
    assert "RFC 8058" in plain.detail
