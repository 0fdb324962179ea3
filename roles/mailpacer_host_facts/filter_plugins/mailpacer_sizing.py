"""Sizing profiles for a mailpacer sending host.

Pure functions of the probed host numbers (no Ansible imports), so the rules are unit-tested
in tests/tuner/test_sizing.py and every derived number can be explained in the summary.
The same profile drives the kernel (sysctl), the limits, the RAM disk and the agent's
concurrency.
"""

from __future__ import annotations

import math
from typing import Any

PROFILES = ("gentle", "balanced", "aggressive")
DEFAULT_PROFILE = "balanced"

# Hard caps from the issue: never size limits past these, whatever the host allows.
NOFILE_CAP = 1_048_576
NPROC_CAP = 100_000
# Fraction of a host ceiling (fs.nr_open, kernel.pid_max) a profile may use.
CEILING_SHARE = 0.9
# A RAM disk smaller than this is not worth a mount unit.
TMPFS_MIN_MB = 64
# Free RAM that a RAM disk can never take: max(this, a quarter of RAM).
RAM_FLOOR_MIN_MB = 1024
RAM_FLOOR_SHARE = 0.25

_PER_PROFILE: dict[str, dict[str, Any]] = {
    "gentle": {
        "smtp_connections_per_core": 4,
        "nofile": 65_536,
        "nproc": 4_096,
        "tmpfs_percent": 5,
        "somaxconn": 4_096,
        # netdev_max_backlog for NIC speed <10G / >=10G / >=25G (Mb/s)
        "netdev_max_backlog": (1_000, 5_000, 5_000),
        "port_range": (16_384, 65_535),
        "buffer_max": 4_194_304,
        "tcp_rmem": "4096 131072 6291456",
        "tcp_wmem": "4096 16384 4194304",
        "nf_conntrack_max": 131_072,
        "swappiness": None,
        "file_max": 1_048_576,
    },
    "balanced": {
        "smtp_connections_per_core": 8,
        "nofile": 262_144,
        "nproc": 16_384,
        "tmpfs_percent": 10,
        "somaxconn": 4_096,
        "netdev_max_backlog": (5_000, 16_384, 32_768),
        "port_range": (10_240, 65_535),
        "buffer_max": 16_777_216,
        "tcp_rmem": "4096 131072 16777216",
        "tcp_wmem": "4096 16384 16777216",
        "nf_conntrack_max": 262_144,
        "swappiness": 10,
        "file_max": 2_097_152,
    },
    "aggressive": {
        "smtp_connections_per_core": 16,
        "nofile": NOFILE_CAP,  # then 90 % of fs.nr_open
        "nproc": NPROC_CAP,  # then 90 % of kernel.pid_max
        "tmpfs_percent": 20,
        "somaxconn": 8_192,
        "netdev_max_backlog": (10_000, 32_768, 65_536),
        "port_range": (10_240, 65_535),
        "buffer_max": 16_777_216,
        "tcp_rmem": "4096 131072 16777216",
        "tcp_wmem": "4096 16384 16777216",
        "nf_conntrack_max": 1_048_576,
        "swappiness": 10,
        "file_max": 4_194_304,
    },
}


class SizingError(ValueError):
    """Bad input to the sizing rules; the message names the field and the allowed range."""


def _positive_int(host: dict[str, Any], name: str) -> int:
    value = host.get(name)
    # bool is an int subclass: a YAML "yes" must not pass as 1
    if isinstance(value, bool) or value is None:
        raise SizingError(f"host fact {name!r} must be a positive integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SizingError(f"host fact {name!r} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise SizingError(f"host fact {name!r} must be a positive integer, got {value!r}")
    return number


def ram_floor_mb(memtotal_mb: int, floor_mb: int | None = None) -> int:
    """Free RAM a RAM disk may never take (explicit floor, else max(1 GiB, 25 % of RAM))."""
    if floor_mb is not None:
        return int(floor_mb)
    return max(RAM_FLOOR_MIN_MB, math.ceil(memtotal_mb * RAM_FLOOR_SHARE))


def _backlog_for_speed(table: tuple[int, int, int], speed_mbps: int | None) -> int:
    # veth/virtio often report -1 or nothing: treat as "below 10G"
    if speed_mbps is None or speed_mbps < 10_000:
        return table[0]
    if speed_mbps < 25_000:
        return table[1]
    return table[2]


def mailpacer_sizing(
    host: dict[str, Any], profile: str = DEFAULT_PROFILE, ram_floor: int | None = None
) -> dict[str, Any]:
    """Derive every tuning number for one host from its probed facts.

    host needs: cores, memtotal_mb, nr_open, pid_max; optional: nic_speed_mbps.
    Returns a JSON-able dict: inputs, agent, limits, ramdisk, sysctl (key -> value/kind/requires),
    and notes explaining each cap that was hit.
    """
    if profile not in PROFILES:
        raise SizingError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    cores = _positive_int(host, "cores")
    memtotal_mb = _positive_int(host, "memtotal_mb")
    nr_open = _positive_int(host, "nr_open")
    pid_max = _positive_int(host, "pid_max")
    speed = host.get("nic_speed_mbps")
    speed = (
        int(speed) if isinstance(speed, int | str) and str(speed).lstrip("-").isdigit() else None
    )
    if speed is not None and speed <= 0:
        speed = None
    rules = _PER_PROFILE[profile]
    notes: list[str] = []

    nofile_ceiling = min(math.floor(nr_open * CEILING_SHARE), NOFILE_CAP)
    nofile = min(rules["nofile"], nofile_ceiling)
    if nofile < rules["nofile"]:
        notes.append(
            f"nofile {rules['nofile']} capped to {nofile} "
            f"(90 % of fs.nr_open {nr_open}, at most {NOFILE_CAP})"
        )
    nproc_ceiling = min(math.floor(pid_max * CEILING_SHARE), NPROC_CAP)
    nproc = min(rules["nproc"], nproc_ceiling)
    if nproc < rules["nproc"]:
        notes.append(
            f"nproc {rules['nproc']} capped to {nproc} "
            f"(90 % of kernel.pid_max {pid_max}, at most {NPROC_CAP})"
        )

    floor = ram_floor_mb(memtotal_mb, ram_floor)
    if floor < 0:
        raise SizingError(f"ram_floor must be >= 0 MB; got {floor}")
    tmpfs_wanted = memtotal_mb * rules["tmpfs_percent"] // 100
    tmpfs_mb = max(0, min(tmpfs_wanted, memtotal_mb - floor))
    if tmpfs_mb < tmpfs_wanted:
        notes.append(f"tmpfs {tmpfs_wanted} MB cut to {tmpfs_mb} MB to keep {floor} MB of RAM free")
    if tmpfs_mb < TMPFS_MIN_MB:
        notes.append(f"RAM disk disabled: {tmpfs_mb} MB is below {TMPFS_MIN_MB} MB")
        tmpfs_mb = 0

    smtp_connections = cores * rules["smtp_connections_per_core"]
    # Each SMTP connection is one socket; leave room for the ledger, HTTP and logs.
    if smtp_connections * 4 + 1024 > nofile:
        notes.append(
            f"nofile {nofile} is tight for {smtp_connections} SMTP connections "
            "(want 4 per connection + 1024)"
        )

    low, high = rules["port_range"]
    backlog = _backlog_for_speed(rules["netdev_max_backlog"], speed)

    sysctl: dict[str, dict[str, Any]] = {
        # capacity keys: raise-only, never lower what the host already has
        "net.core.somaxconn": _cap(rules["somaxconn"]),
        "net.core.netdev_max_backlog": _cap(backlog),
        "net.core.rmem_max": _cap(rules["buffer_max"]),
        "net.core.wmem_max": _cap(rules["buffer_max"]),
        "net.ipv4.tcp_rmem": _cap(rules["tcp_rmem"]),
        "net.ipv4.tcp_wmem": _cap(rules["tcp_wmem"]),
        "fs.file-max": _cap(max(rules["file_max"], 2 * nofile)),
        "fs.nr_open": _cap(nofile),
        # only where nf_conntrack is loaded (stateful firewall)
        "net.netfilter.nf_conntrack_max": {
            "value": rules["nf_conntrack_max"],
            "kind": "capacity",
            "optional": True,
        },
        # behaviour keys: exact
        "net.ipv4.ip_local_port_range": _exact(f"{low} {high}"),
        "net.ipv4.tcp_tw_reuse": _exact(1),
        "net.ipv4.tcp_timestamps": _exact(1),
        "net.ipv4.tcp_slow_start_after_idle": _exact(0),
        "net.ipv4.tcp_notsent_lowat": _exact(131_072),
        "net.ipv4.tcp_mtu_probing": _exact(1),
        "net.ipv4.tcp_congestion_control": {**_exact("bbr"), "requires": "bbr"},
        "net.core.default_qdisc": {**_exact("fq"), "requires": "fq"},
    }
    if rules["swappiness"] is not None:
        sysctl["vm.swappiness"] = _exact(rules["swappiness"])

    return {
        "profile": profile,
        "inputs": {
            "cores": cores,
            "memtotal_mb": memtotal_mb,
            "nr_open": nr_open,
            "pid_max": pid_max,
            "nic_speed_mbps": speed,
        },
        "agent": {
            "smtp_connections_per_core": rules["smtp_connections_per_core"],
            "smtp_connections": smtp_connections,
            "render_workers": _render_workers(profile, cores),
        },
        "limits": {"nofile": nofile, "nproc": nproc, "tasks_max": nproc},
        "ramdisk": {
            "size_mb": tmpfs_mb,
            "percent_of_ram": rules["tmpfs_percent"],
            "ram_floor_mb": floor,
        },
        "port_range": [low, high],
        "sysctl": sysctl,
        "notes": notes,
    }


def _render_workers(profile: str, cores: int) -> int | str:
    """Processes rendering template campaigns ([agent] render_workers): gentle leaves small
    hosts' CPUs to the sender (1 on 4+ CPUs, else 0); balanced lets the agent size it on
    the host ("auto": CPUs - 1, at most 4); aggressive takes CPUs - 1, at most 8."""
    if profile == "gentle":
        return 1 if cores >= 4 else 0
    if profile == "aggressive":
        return max(0, min(cores - 1, 8))
    return "auto"


def _cap(value: Any) -> dict[str, Any]:
    return {"value": value, "kind": "capacity"}


def _exact(value: Any) -> dict[str, Any]:
    return {"value": value, "kind": "behaviour"}


class FilterModule:
    """Ansible entry point: {{ host | mailpacer_sizing(profile) }}."""

    def filters(self) -> dict[str, Any]:
        return {"mailpacer_sizing": mailpacer_sizing}
