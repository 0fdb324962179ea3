"""The sizing profile (roles/mailpacer_host_facts/filter_plugins/mailpacer_sizing.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ._plugins import load

sizing_mod = load("mailpacer_host_facts", "mailpacer_sizing")
sizing = sizing_mod.mailpacer_sizing
SizingError = sizing_mod.SizingError

# The CI VM as the test host sees it (kernel defaults of a systemd host).
HOST: dict[str, Any] = {
    "cores": 2,
    "memtotal_mb": 24_105,
    "nr_open": 1_048_576,
    "pid_max": 4_194_304,
    "nic_speed_mbps": 10_000,
}


def host(**changes: Any) -> dict[str, Any]:
    return {**HOST, **changes}


def test_default_profile_is_balanced() -> None:
    assert sizing(HOST)["profile"] == "balanced"


@pytest.mark.parametrize(
    ("profile", "per_core", "nofile", "nproc", "tmpfs_mb"),
    [
        ("gentle", 4, 65_536, 4_096, 24_105 * 5 // 100),
        ("balanced", 8, 262_144, 16_384, 24_105 * 10 // 100),
        # 90 % of fs.nr_open (943718) and of pid_max, then the hard caps (100000)
        ("aggressive", 16, 943_718, 100_000, 24_105 * 20 // 100),
    ],
)
def test_profile_numbers(
    profile: str, per_core: int, nofile: int, nproc: int, tmpfs_mb: int
) -> None:
    out = sizing(HOST, profile)
    assert out["agent"]["smtp_connections_per_core"] == per_core
    assert out["agent"]["smtp_connections"] == 2 * per_core
    assert out["limits"] == {"nofile": nofile, "nproc": nproc, "tasks_max": nproc}
    assert out["ramdisk"]["size_mb"] == tmpfs_mb


def test_profiles_are_ordered() -> None:
    g, b, a = (sizing(HOST, p) for p in ("gentle", "balanced", "aggressive"))
    for path in (
        ("limits", "nofile"),
        ("limits", "nproc"),
        ("ramdisk", "size_mb"),
        ("agent", "smtp_connections"),
    ):
        values = [out[path[0]][path[1]] for out in (g, b, a)]
        assert values == sorted(values), path
        assert values[0] < values[2], path


def test_aggressive_concurrency_is_16_per_core() -> None:
    assert sizing(host(cores=12), "aggressive")["agent"]["smtp_connections"] == 192


def test_aggressive_nofile_is_capped_at_1048576_on_huge_nr_open() -> None:
    # systemd bumps fs.nr_open towards 2^30; 90 % of that must still stop at 1,048,576
    assert sizing(host(nr_open=1_073_741_816), "aggressive")["limits"]["nofile"] == 1_048_576


def test_aggressive_nproc_is_90_percent_of_a_small_pid_max() -> None:
    out = sizing(host(pid_max=32_768), "aggressive")
    assert out["limits"]["nproc"] == 29_491  # floor(0.9 * 32768)
    assert any("kernel.pid_max" in note for note in out["notes"])


@pytest.mark.parametrize("profile", ["gentle", "balanced", "aggressive"])
def test_no_profile_exceeds_90_percent_of_nr_open(profile: str) -> None:
    out = sizing(host(nr_open=100_000), profile)
    assert out["limits"]["nofile"] <= 90_000
    assert out["sysctl"]["fs.nr_open"]["value"] == out["limits"]["nofile"]


def test_tmpfs_keeps_the_ram_floor() -> None:
    # 4 GiB host: floor = max(1024, 25 %) = 1024 MB; aggressive 20 % = 819 MB fits
    out = sizing(host(memtotal_mb=4_096), "aggressive")
    assert out["ramdisk"] == {"size_mb": 819, "percent_of_ram": 20, "ram_floor_mb": 1_024}
    # an explicit floor can cut it
    out = sizing(host(memtotal_mb=4_096), "aggressive", ram_floor=3_500)
    assert out["ramdisk"]["size_mb"] == 596
    assert any("keep 3500 MB" in note for note in out["notes"])


def test_tmpfs_is_disabled_when_nothing_is_left_above_the_floor() -> None:
    out = sizing(host(memtotal_mb=1_024), "aggressive")
    assert out["ramdisk"]["size_mb"] == 0
    assert any("disabled" in note for note in out["notes"])


def test_tmpfs_never_crosses_the_floor_for_any_ram_size() -> None:
    for mem in (512, 1_000, 1_300, 2_048, 8_192, 65_536, 1_048_576):
        for profile in ("gentle", "balanced", "aggressive"):
            r = sizing(host(memtotal_mb=mem), profile)["ramdisk"]
            assert r["size_mb"] == 0 or r["size_mb"] <= mem - r["ram_floor_mb"], (mem, profile)


@pytest.mark.parametrize(
    ("speed", "backlog"),
    [
        (None, 5_000),
        (-1, 5_000),
        (1_000, 5_000),
        (10_000, 16_384),
        (25_000, 32_768),
        (100_000, 32_768),
    ],
)
def test_netdev_max_backlog_follows_nic_speed(speed: int | None, backlog: int) -> None:
    out = sizing(host(nic_speed_mbps=speed), "balanced")
    assert out["sysctl"]["net.core.netdev_max_backlog"] == {"value": backlog, "kind": "capacity"}


def test_sysctl_kinds() -> None:
    keys = sizing(HOST, "balanced")["sysctl"]
    capacity = {k for k, v in keys.items() if v["kind"] == "capacity"}
    assert {"net.core.somaxconn", "fs.file-max", "fs.nr_open", "net.ipv4.tcp_rmem"} <= capacity
    assert keys["net.ipv4.tcp_congestion_control"] == {
        "value": "bbr",
        "kind": "behaviour",
        "requires": "bbr",
    }
    assert keys["net.core.default_qdisc"]["requires"] == "fq"
    assert keys["net.netfilter.nf_conntrack_max"]["optional"] is True
    assert keys["net.ipv4.ip_local_port_range"]["value"] == "10240 65535"
    # tw_reuse needs timestamps; both exact
    assert keys["net.ipv4.tcp_tw_reuse"]["value"] == 1
    assert keys["net.ipv4.tcp_timestamps"]["value"] == 1


def test_gentle_leaves_swappiness_alone() -> None:
    assert "vm.swappiness" not in sizing(HOST, "gentle")["sysctl"]
    assert sizing(HOST, "balanced")["sysctl"]["vm.swappiness"]["value"] == 10


def test_port_range_keeps_the_agent_port_out() -> None:
    for profile in ("gentle", "balanced", "aggressive"):
        low, high = sizing(HOST, profile)["port_range"]
        assert 1024 <= low < high <= 65535
        assert not low <= 9108 <= high
        assert low % 2 != high % 2  # ip-sysctl.rst: ends of different parity


def test_file_max_covers_twice_nofile() -> None:
    out = sizing(HOST, "aggressive")
    assert out["sysctl"]["fs.file-max"]["value"] >= 2 * out["limits"]["nofile"]


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(
        SizingError, match=r"profile must be one of gentle, balanced, aggressive; got 'turbo'"
    ):
        sizing(HOST, "turbo")


@pytest.mark.parametrize(
    ("field", "value"),
    [("cores", True), ("cores", 0), ("memtotal_mb", -5), ("nr_open", None), ("pid_max", "lots")],
)
def test_bad_host_facts_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(SizingError, match=rf"'{field}' must be a positive integer"):
        sizing(host(**{field: value}))


def test_output_is_plain_json_data() -> None:
    import json

    out = sizing(HOST, "aggressive")
    assert json.loads(json.dumps(out)) == {**out, "port_range": list(out["port_range"])}


def test_filter_is_exported() -> None:
    assert sizing_mod.FilterModule().filters() == {"mailpacer_sizing": sizing}
