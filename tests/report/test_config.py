"""ReportConfig: the issue's defaults, errors that name the key, a secret never shown."""

from __future__ import annotations

import pytest

from mailpacer.report import ReportConfig, ReportConfigError

from .fakes import SECRET


def test_defaults_and_speed_tiers() -> None:
    cfg = ReportConfig(url="https://crm.example/v1/progress", secret=SECRET)
    assert (cfg.min_interval, cfg.max_in_flight, cfg.batch_size, cfg.detail) == (
        15.0, 2, 100, "failures"
    )  # fmt: skip
    assert [cfg.interval_for(r) for r in (1, 20, 21, 60, 61, 120, 121, 5000)] == [
        120, 120, 90, 90, 45, 45, 30, 30
    ]  # fmt: skip
    assert SECRET.decode() not in repr(cfg)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"url": "ftp://x", "secret": SECRET}, "report.url = 'ftp://x'"),
        ({"url": "http://x", "secret": "short"}, "report.secret = ***: must be at least 16"),
        ({"url": "http://x", "secret": SECRET, "detail": "some"}, "report.detail = 'some'"),
        ({"url": "http://x", "secret": SECRET, "max_in_flight": 0}, "report.max_in_flight"),
        ({"url": "http://x", "secret": SECRET, "min_interval": 0}, "report.min_interval"),
        ({"url": "http://x", "secret": SECRET, "speed_tiers": "fast"}, "report.speed_tiers"),
        ({"url": "http://x", "secret": SECRET, "colour": "red"}, "report.colour: unknown"),
        ({"url": "http://x"}, "report.secret: required"),
    ],
)
def test_bad_settings_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ReportConfigError) as caught:
        ReportConfig.from_mapping(values)
    assert message in str(caught.value)
    assert SECRET.decode() not in str(caught.value)
