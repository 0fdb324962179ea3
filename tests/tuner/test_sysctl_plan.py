"""Per-key sysctl decisions (roles/mailpacer_sysctl/filter_plugins/mailpacer_sysctl_plan.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ._plugins import load

plan_mod = load("mailpacer_sysctl", "mailpacer_sysctl_plan")
PlanError = plan_mod.PlanError


def probe(
    value: str | None = None,
    *,
    exists: bool = True,
    writable: bool = True,
    error: str | None = None,
) -> dict[str, Any]:
    return {"exists": exists, "writable": writable, "value": value, "error": error}


def plan_one(
    spec: dict[str, Any], state: dict[str, Any], features: dict[str, Any] | None = None
) -> dict[str, Any]:
    (entry,) = plan_mod.mailpacer_sysctl_plan({"k.x": spec}, {"k.x": state}, features)
    return entry


def test_capacity_is_raise_only() -> None:
    raised = plan_one({"value": 4096, "kind": "capacity"}, probe("128"))
    kept = plan_one({"value": 4096, "kind": "capacity"}, probe("8192"))
    assert (raised["value"], raised["in_sync"]) == ("4096", False)
    assert (kept["value"], kept["in_sync"]) == ("8192", True)


def test_capacity_triples_are_raised_field_by_field() -> None:
    entry = plan_one(
        {"value": "4096 131072 16777216", "kind": "capacity"}, probe("4096\t87380\t33554432")
    )
    assert entry["value"] == "4096 131072 33554432"
    assert entry["current"] == "4096 87380 33554432"


def test_behaviour_is_exact_even_when_lower() -> None:
    entry = plan_one({"value": 0, "kind": "behaviour"}, probe("1"))
    assert (entry["value"], entry["status"], entry["in_sync"]) == ("0", "applied", False)
    assert entry["line"] == "k.x = 0"


def test_absent_key_is_unsupported_and_commented() -> None:
    entry = plan_one(
        {"value": 5000, "kind": "capacity"}, probe(exists=False, writable=False, error="ENOENT")
    )
    assert entry["status"] == "unsupported"
    assert entry["line"].startswith("# k.x = 5000  (unsupported: key absent")


def test_absent_optional_key_is_not_applicable() -> None:
    entry = plan_one({"value": 262144, "kind": "capacity", "optional": True}, probe(exists=False))
    assert entry["status"] == "not_applicable"


def test_read_only_key_is_skipped_with_the_reason() -> None:
    entry = plan_one(
        {"value": 10, "kind": "behaviour"},
        probe("60", writable=False, error="EROFS (Read-only file system)"),
    )
    assert entry["status"] == "skipped"
    assert "EROFS" in entry["reason"]
    assert (
        entry["line"] == "# k.x = 10  (skipped: not writable here: EROFS (Read-only file system))"
    )


def test_missing_feature_makes_a_key_unsupported() -> None:
    spec = {"value": "fq", "kind": "behaviour", "requires": "fq"}
    no_fq = {"fq": {"supported": False, "reason": "kernel has no fq qdisc"}}
    entry = plan_one(spec, probe("pfifo_fast"), no_fq)
    assert (entry["status"], entry["reason"]) == ("unsupported", "kernel has no fq qdisc")
    assert plan_one(spec, probe("pfifo_fast"), {"fq": {"supported": True}})["status"] == "applied"
    # no feature information at all: never assume
    assert plan_one(spec, probe("pfifo_fast"))["status"] == "unsupported"


def test_plan_is_sorted_and_complete() -> None:
    settings = {"b.y": {"value": 1, "kind": "behaviour"}, "a.x": {"value": 2, "kind": "behaviour"}}
    out = plan_mod.mailpacer_sysctl_plan(settings, {"a.x": probe("2"), "b.y": probe("0")})
    assert [e["key"] for e in out] == ["a.x", "b.y"]
    assert set(out[0]) == {
        "key",
        "kind",
        "wanted",
        "current",
        "value",
        "status",
        "reason",
        "in_sync",
        "line",
    }


@pytest.mark.parametrize("value", [True, False])
def test_yaml_booleans_are_rejected(value: bool) -> None:
    with pytest.raises(PlanError, match="YAML boolean"):
        plan_mod.mailpacer_sysctl_settings({}, {"net.ipv4.tcp_tw_reuse": value})
    with pytest.raises(PlanError, match=r"net\.ipv4\.tcp_tw_reuse"):
        plan_mod.mailpacer_sysctl_plan({"net.ipv4.tcp_tw_reuse": {"value": value}}, {})


@pytest.mark.parametrize("value", ["", "   ", 1.5, [1, 2], {"a": 1}])
def test_other_bad_values_are_rejected(value: Any) -> None:
    with pytest.raises(PlanError, match="integer or a non-empty string"):
        plan_mod.mailpacer_sysctl_settings({}, {"k.x": value})


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(PlanError, match="kind must be capacity or behaviour"):
        plan_one({"value": 1, "kind": "maybe"}, probe("0"))


def test_overrides_keep_the_kind_add_keys_and_drop_keys() -> None:
    base = {
        "net.core.somaxconn": {"value": 4096, "kind": "capacity"},
        "vm.swappiness": {"value": 10, "kind": "behaviour"},
    }
    merged = plan_mod.mailpacer_sysctl_settings(
        base, {"net.core.somaxconn": 16384, "vm.swappiness": None, "net.ipv4.tcp_fin_timeout": 30}
    )
    assert merged == {
        "net.core.somaxconn": {"value": 16384, "kind": "capacity"},
        "net.ipv4.tcp_fin_timeout": {"value": 30, "kind": "behaviour"},
    }
    assert base["net.core.somaxconn"]["value"] == 4096  # input untouched


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ("", "9108"),
        (None, "9108"),
        ("8000", "8000,9108"),
        ("9000-9200", "9000-9200"),
        ("9108", "9108"),
        ("22,\t8080", "22,8080,9108"),
    ],
)
def test_reserve_port_keeps_existing_reservations(current: str | None, expected: str) -> None:
    assert plan_mod.mailpacer_sysctl_reserve_port(current, 9108) == expected


def test_parse_reads_our_file() -> None:
    text = (
        "#\n# Ansible managed\n#\n\n# capacity\nnet.core.somaxconn = 4096\n"
        "# vm.swappiness = 10  (skipped: x)\n-net.ipv4.tcp_rmem =\t4096  131072 16777216\n"
        "; note\nnet/ipv4/tcp_tw_reuse=1\n"
    )
    assert plan_mod.mailpacer_sysctl_parse(text) == {
        "net.core.somaxconn": "4096",
        "net.ipv4.tcp_rmem": "4096 131072 16777216",
        "net.ipv4.tcp_tw_reuse": "1",
    }


def test_drift_lists_only_applied_keys_that_differ() -> None:
    settings = {
        "a.x": {"value": 1, "kind": "behaviour"},
        "b.y": {"value": "4096 16384", "kind": "behaviour"},
        "c.z": {"value": 10, "kind": "behaviour"},
    }
    plan = plan_mod.mailpacer_sysctl_plan(
        settings, {"a.x": probe("0"), "b.y": probe("1"), "c.z": probe("60", writable=False)}
    )
    live = {"a.x": "1", "b.y": "4096\t16384", "c.z": "60"}
    assert plan_mod.mailpacer_sysctl_drift(plan, live) == {}
    assert plan_mod.mailpacer_sysctl_drift(plan, {**live, "a.x": "0"}) == {
        "a.x": {"want": "1", "live": "0"}
    }
    assert plan_mod.mailpacer_sysctl_drift(plan, {"b.y": "4096 16384"}) == {
        "a.x": {"want": "1", "live": None}
    }


def test_by_status_groups_values_and_reasons() -> None:
    settings = {"a.x": {"value": 1}, "b.y": {"value": 2}, "c.z": {"value": 3, "optional": True}}
    plan = plan_mod.mailpacer_sysctl_plan(
        settings, {"a.x": probe("0"), "b.y": probe("0", writable=False, error="EACCES")}
    )
    assert plan_mod.mailpacer_sysctl_by_status(plan) == {
        "applied": {"a.x": "1"},
        "skipped": {"b.y": "not writable here: EACCES"},
        "unsupported": {},
        "not_applicable": {"c.z": "key absent (its module is not loaded)"},
    }


def test_raise_only_compares_with_the_saved_original() -> None:
    spec = {"value": 4096, "kind": "capacity"}
    # live 8192 is our own earlier raise (host had 1024): a smaller profile may lower it again
    (entry,) = plan_mod.mailpacer_sysctl_plan(
        {"k.x": spec}, {"k.x": probe("8192")}, {}, {"k.x": "1024"}
    )
    assert (entry["value"], entry["current"], entry["in_sync"]) == ("4096", "8192", False)
    # but never below what the host had
    (entry,) = plan_mod.mailpacer_sysctl_plan(
        {"k.x": spec}, {"k.x": probe("8192")}, {}, {"k.x": "16384"}
    )
    assert entry["value"] == "16384"
