"""The pacing config: a full example parses; every bad value is one clear ConfigError."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import pytest

from mailpacer.config import ConfigError
from mailpacer.pacing import AimdSpec, parse_limit, parse_pacing

EXAMPLE = {
    "timezone": "Europe/Berlin",
    "global": {"rate": "3000/min", "burst": 50},
    "campaign": {
        "rate": "300/min",
        "burst": 5,
        "per_hour": 10_000,
        "per_day": 50_000,
        "windows": [
            {"days": "mon-fri", "hours": ["09:00-12:00", "13:00-17:30"]},
            {"days": ["sat"], "hours": "10:00-14:00"},
        ],
        "ramp": {"start": 500, "growth": "50%", "max": 50_000, "since": "2024-05-06"},
    },
    "relays": {
        "ses": {
            "rate": "14/s",
            "burst": 14,
            "max_connections": 10,
            "max_messages_per_connection": 100,
            "aimd": {"decrease": 0.5, "increase": "1%", "floor": 0.1, "holdoff": "10s"},
        },
        "*": {"rate": "50/s", "aimd": True},
    },
    "groups": {
        "gmail": {"rate": "20/s", "max_in_flight": 50, "aimd": {}},
        "*": {"rate": "100/s"},
    },
    "domain_groups": {"acme": {"domains": ["acme.example"], "mx": ["mx.acme-mail.net"]}},
}


def test_full_example() -> None:
    config = parse_pacing(EXAMPLE)
    berlin = ZoneInfo("Europe/Berlin")
    assert config.timezone == berlin
    assert config.global_limit is not None
    assert config.global_limit.burst == 50
    campaign = config.campaign
    assert campaign is not None
    assert campaign.rate is not None
    assert campaign.rate.per_second == 5
    assert campaign.timezone == berlin  # inherited
    assert len(campaign.windows) == 3
    assert campaign.ramp is not None
    assert campaign.ramp.growth == 0.5
    assert campaign.ramp.since == date(2024, 5, 6)
    ses = config.relay_spec("ses")
    assert ses is not None
    assert ses.aimd == AimdSpec(decrease=0.5, increase=0.01, floor=0.1, holdoff=10.0)
    assert config.relay_spec("anything") == config.relays["*"]
    gmail = config.group_spec("gmail")
    assert gmail is not None
    assert gmail.aimd == AimdSpec()
    assert config.domain_groups.group_for("acme.example") == "acme"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"campaign": {"rate": "0/min"}}, r"pacing\.campaign\.rate: invalid rate '0/min'"),
        ({"campaign": {"rate": "-5/s"}}, r"pacing\.campaign\.rate: invalid rate '-5/s'"),
        ({"campaign": {"rate": "10/fortnight"}}, r"unknown unit 'fortnight'"),
        ({"campaign": {"rate": 300}}, r"pacing\.campaign\.rate: expected a rate"),
        ({"timezone": "Mars/Olympus"}, r"pacing\.timezone: unknown time zone 'Mars/Olympus'"),
        (
            {"relays": {"ses": {"timezone": "Europe/Berln"}}},
            r"pacing\.relays\.ses\.timezone: unknown time zone",
        ),
        (
            {
                "campaign": {
                    "windows": [
                        {"days": "mon-fri", "hours": "09:00-17:00"},
                        {"days": "fri", "hours": "16:00-18:00"},
                    ]
                }
            },
            r"pacing\.campaign\.windows: windows 'mon-fri 09:00-17:00' and "
            r"'fri 16:00-18:00' overlap",
        ),
        (
            {
                "campaign": {
                    "windows": [
                        {"days": "sun", "hours": "22:00-02:00"},
                        {"days": "mon", "hours": "01:00-03:00"},
                    ]
                }
            },
            r"overlap",  # across midnight and the week's end
        ),
        ({"campaign": {"window": {"days": "mon-fry", "hours": "9-17"}}}, r"unknown day 'fry'"),
        ({"campaign": {"window": {"hours": "09:00-25:00"}}}, r"invalid time '25:00'"),
        ({"campaign": {"window": {"hours": "09:00-09:00"}}}, r"empty window"),
        ({"campaign": {"window": {"days": "mon"}}}, r"window\.hours: missing"),
        ({"campaign": {"rat": "300/min"}}, r"pacing\.campaign\.rat: unknown setting"),
        ({"campaign": {"rate": "1/s", "burst": True}}, r"burst: expected a positive whole"),
        ({"campaign": {"rate": "1/s", "burst": 0}}, r"burst: must be at least 1"),
        ({"campaign": {"burst": 5}}, r"a burst needs a rate"),
        ({"campaign": {"per_day": -1}}, r"per_day: must be at least 1"),
        ({"campaign": {"ramp": {"start": 500, "max": 100}}}, r"ramp\.max: 100 is below"),
        ({"campaign": {"ramp": {"growth": "50%"}}}, r"ramp\.start: missing"),
        ({"campaign": {"ramp": {"start": 5, "since": "May 6"}}}, r"ramp\.since: invalid date"),
        ({"campaign": {"ramp": {"start": 5, "growth": "-5%"}}}, r"ramp\.growth: expected"),
        ({"relays": {"ses": {"aimd": {}}}}, r"aimd: AIMD adjusts a rate"),
        ({"relays": {"ses": {"rate": "1/s", "aimd": {"decrease": 1}}}}, r"must be below 1"),
        ({"relays": {"ses": {"rate": "1/s", "aimd": {"holdoff": "soon"}}}}, r"invalid duration"),
        ({"domain_groups": {"x": {"domains": ["bad domain"]}}}, r"invalid domain or host"),
        ({"domain_groups": {"x": {}}}, r"give domains, mx or both"),
        ({"relays": ["ses"]}, r"pacing\.relays: expected a table"),
        ({"builtin_domain_groups": "yes"}, r"expected true or false"),
    ],
)
def test_bad_input_is_one_clear_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pacing(data)


def test_a_campaign_spec_from_settings_json() -> None:
    spec = parse_limit(
        {"rate": "120/h", "window": {"days": "weekdays", "hours": "22:00-06:00"}},
        "campaign 'news'",
        timezone=ZoneInfo("America/New_York"),
    )
    assert spec.rate is not None
    assert spec.rate.interval == 30.0
    rule = spec.windows[0]
    assert rule.days == frozenset(range(5))
    assert rule.length == 8 * 60
    assert spec.timezone == ZoneInfo("America/New_York")
    with pytest.raises(ConfigError, match=r"^campaign 'news'\.rate: "):
        parse_limit({"rate": "fast"}, "campaign 'news'")


def test_the_example_in_the_docs_parses() -> None:
    import re
    import tomllib
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "pacing.md").read_text()
    match = re.search(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert match is not None
    config = parse_pacing(tomllib.loads(match.group(1))["pacing"])
    assert config.campaign is not None
    assert len(config.campaign.windows) == 3
    assert config.domain_groups.group_for("eu.acme.example") == "acme"
