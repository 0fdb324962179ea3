"""The host's tuning state as the agent sees it: congestion control, nofile, tmpfs, tuning.json.

The Ansible tuner (docs/tuning.md) writes ``/var/lib/mailpacer/tuning.json``; this module reads
it and compares the sysctl values it applied with the live ones in ``/proc/sys``, so drift is
visible in /metrics and in ``mailpacer doctor``. Everything here is blocking file I/O: the agent
calls :func:`read_host_state` from a worker thread and serves the snapshot from memory.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SCRATCH",
    "DEFAULT_TUNING_JSON",
    "DiskState",
    "HostState",
    "SysctlCheck",
    "disk_state",
    "read_host_state",
    "read_sysctl",
]

DEFAULT_TUNING_JSON = Path(
    os.environ.get("MAILPACER_TUNING_JSON", "/var/lib/mailpacer/tuning.json")
)
DEFAULT_SCRATCH = Path(os.environ.get("MAILPACER_SCRATCH", "/var/cache/mailpacer-scratch"))
PROC_SYS = Path("/proc/sys")
TUNING_STATUSES = ("applied", "skipped", "unsupported", "not_applicable")


@dataclass(frozen=True)
class DiskState:
    path: str
    exists: bool
    total_bytes: int = 0
    free_bytes: int = 0
    used_bytes: int = 0
    fstype: str | None = None
    error: str | None = None

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "exists": self.exists}
        if self.exists and self.error is None:
            out.update(
                total_bytes=self.total_bytes,
                free_bytes=self.free_bytes,
                used_bytes=self.used_bytes,
                free_ratio=round(self.free_ratio, 4),
                fstype=self.fstype,
            )
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class SysctlCheck:
    key: str
    expected: str
    live: str | None  # None: absent here

    @property
    def ok(self) -> bool:
        return self.live is not None and _norm(self.live) == _norm(self.expected)


@dataclass
class HostState:
    congestion_control: str | None = None
    nofile_soft: int = 0
    nofile_hard: int = 0
    scratch: DiskState | None = None
    tuning_path: str = str(DEFAULT_TUNING_JSON)
    tuning_present: bool = False
    tuning_error: str | None = None
    tuning_profile: str | None = None
    tuning_counts: dict[str, int] = field(default_factory=dict)  # status -> keys
    sysctl_checks: list[SysctlCheck] = field(default_factory=list)
    nofile_configured: int | None = None  # limits.effective (or configured) nofile, tuning.json

    @property
    def drifted(self) -> list[SysctlCheck]:
        return [c for c in self.sysctl_checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "congestion_control": self.congestion_control,
            "nofile": {"soft": self.nofile_soft, "hard": self.nofile_hard},
            "scratch": self.scratch.as_dict() if self.scratch else None,
            "tuning": {
                "path": self.tuning_path,
                "present": self.tuning_present,
                "error": self.tuning_error,
                "profile": self.tuning_profile,
                "keys": dict(self.tuning_counts),
                "nofile_configured": self.nofile_configured,
                "drift": [
                    {"key": c.key, "expected": c.expected, "live": c.live} for c in self.drifted
                ],
            },
        }


def _norm(value: str) -> str:
    return " ".join(str(value).split())


def read_sysctl(key: str, root: Path = PROC_SYS) -> str | None:
    """The live value of ``net.ipv4.tcp_congestion_control`` style keys; None if absent."""
    try:
        return _norm((root / key.replace(".", "/")).read_text())
    except OSError:
        return None


def _fstype(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (longest mount-point match)."""
    try:
        target = str(path.resolve())
        best, kind = "", None
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, parts[2]
        return kind
    except OSError:
        return None


def disk_state(path: Path | str) -> DiskState:
    """Space of the file system holding ``path`` (shutil.disk_usage); never raises."""
    p = Path(path)
    if not p.exists():
        return DiskState(str(p), exists=False)
    try:
        usage = shutil.disk_usage(p)
    except OSError as exc:
        return DiskState(str(p), exists=True, error=exc.strerror or str(exc))
    return DiskState(
        str(p),
        exists=True,
        total_bytes=usage.total,
        free_bytes=usage.free,
        used_bytes=usage.used,
        fstype=_fstype(p),
    )


def _expected_sysctls(applied: Any) -> dict[str, str]:
    """``sysctl.keys.applied`` is {key: value} or {key: {"value": ...}} depending on the key."""
    out: dict[str, str] = {}
    if isinstance(applied, dict):
        for key, value in applied.items():
            if isinstance(value, dict):
                value = value.get("value", value.get("planned"))
            if value is None or isinstance(value, (dict, list)):
                continue
            out[str(key)] = _norm(str(value))
    return out


def read_host_state(
    tuning_json: Path | None = None,
    scratch: Path | None = None,
    proc_sys: Path = PROC_SYS,
) -> HostState:
    """A snapshot of the host's tuning: blocking (file reads), so call it from a thread."""
    tuning_json = tuning_json or DEFAULT_TUNING_JSON
    scratch = scratch or DEFAULT_SCRATCH
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    state = HostState(
        congestion_control=read_sysctl("net.ipv4.tcp_congestion_control", proc_sys),
        nofile_soft=-1 if soft == resource.RLIM_INFINITY else soft,
        nofile_hard=-1 if hard == resource.RLIM_INFINITY else hard,
        scratch=disk_state(scratch),
        tuning_path=str(tuning_json),
    )
    try:
        document = json.loads(tuning_json.read_text())
    except FileNotFoundError:
        return state
    except (OSError, ValueError) as exc:
        state.tuning_present = True
        state.tuning_error = f"cannot read {tuning_json}: {exc}"
        return state
    state.tuning_present = True
    if not isinstance(document, dict):
        state.tuning_error = f"{tuning_json}: not a JSON object"
        return state
    state.tuning_profile = str(document.get("profile")) if document.get("profile") else None
    keys = (document.get("sysctl") or {}).get("keys") or {}
    if isinstance(keys, dict):
        for status in TUNING_STATUSES:
            group = keys.get(status) or {}
            state.tuning_counts[status] = len(group) if isinstance(group, (dict, list)) else 0
        for key, expected in sorted(_expected_sysctls(keys.get("applied")).items()):
            state.sysctl_checks.append(SysctlCheck(key, expected, read_sysctl(key, proc_sys)))
    limits = document.get("limits") or {}
    if isinstance(limits, dict):
        for part in ("effective", "configured"):  # effective = min(configured, PID 1's hard)
            value = (limits.get(part) or {}) if isinstance(limits.get(part), dict) else {}
            nofile = value.get("nofile")
            if isinstance(nofile, int) or (isinstance(nofile, str) and nofile.isdigit()):
                state.nofile_configured = int(nofile)
                break
    return state
