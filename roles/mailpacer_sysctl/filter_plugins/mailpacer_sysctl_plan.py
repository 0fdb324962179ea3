"""Per-key sysctl decisions: what to write, what is live, what this host cannot take.

Pure Python (unit-tested in tests/tuner/test_sysctl_plan.py). The role probes every key
(exists? writable by a same-value write? current value?) and these filters turn settings +
probe into a plan that the template renders and the summary reports.
"""

from __future__ import annotations

from typing import Any

# A key ends in exactly one of these. "applied": live at the planned value (now or before);
# "skipped": the key exists but this host refuses writes (read-only /proc/sys in a container,
# a per-netns key the kernel keeps global); "unsupported": the kernel (or this netns) lacks the
# key or a feature it needs (bbr, fq); "not_applicable": an optional key whose module is not
# loaded (conntrack). Strict mode fails on skipped and unsupported.
STATUSES = ("applied", "skipped", "unsupported", "not_applicable")


class PlanError(ValueError):
    """Bad settings; the message names the key and what is allowed."""


def normalize(value: Any) -> str:
    """sysctl prints multi-field values with tabs; compare with single spaces."""
    return " ".join(str(value).split())


def _check_value(key: str, value: Any) -> None:
    if isinstance(value, bool):
        raise PlanError(
            f"sysctl {key}: value {value!r} is a YAML boolean (yes/no/on/off/true/false); "
            "write 1 or 0, or quote a string"
        )
    if not isinstance(value, int | str) or normalize(value) == "":
        raise PlanError(
            f"sysctl {key}: value must be an integer or a non-empty string, got {value!r}"
        )


def _raise_only(current: str | None, wanted: Any) -> str:
    """Field-wise max(current, wanted); never lower what the host has."""
    wanted_s = normalize(wanted)
    if current is None:
        return wanted_s
    cur_fields, want_fields = normalize(current).split(), wanted_s.split()
    if len(cur_fields) != len(want_fields):
        return wanted_s
    try:
        return " ".join(
            str(max(int(c), int(w))) for c, w in zip(cur_fields, want_fields, strict=True)
        )
    except ValueError:
        return wanted_s


def mailpacer_sysctl_settings(
    base: dict[str, Any], overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """Merge user overrides (key -> plain value, or None to drop a key) into the profile."""
    merged = {k: dict(v) for k, v in base.items()}
    for key, value in (overrides or {}).items():
        if value is None:
            merged.pop(key, None)
            continue
        _check_value(key, value)
        entry = merged.get(key, {"kind": "behaviour"})
        merged[key] = {**entry, "value": value}
    return merged


def mailpacer_sysctl_plan(
    settings: dict[str, Any],
    probe: dict[str, Any],
    features: dict[str, Any] | None = None,
    originals: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One entry per key, sorted: wanted, current, planned value, status, reason, file line.

    Raise-only keys compare with the host's own value: the original saved before our first
    change when there is one, else the live value. So a move to a smaller profile lowers our
    earlier raise again, but never below what the host had.
    """
    features = features or {}
    originals = originals or {}
    plan = []
    for key in sorted(settings):
        spec = settings[key]
        wanted = spec["value"]
        _check_value(key, wanted)
        kind = spec.get("kind", "behaviour")
        if kind not in ("capacity", "behaviour"):
            raise PlanError(f"sysctl {key}: kind must be capacity or behaviour, got {kind!r}")
        state = probe.get(key) or {"exists": False}
        current = state.get("value") if state.get("exists") else None
        host_value = originals.get(key, current) if current is not None else None
        value = _raise_only(host_value, wanted) if kind == "capacity" else normalize(wanted)
        feature = spec.get("requires")
        if feature and not features.get(feature, {}).get("supported", False):
            status = "unsupported"
            reason = features.get(feature, {}).get("reason") or f"{feature} not available"
        elif not state.get("exists"):
            if spec.get("optional"):
                status, reason = "not_applicable", "key absent (its module is not loaded)"
            else:
                status, reason = "unsupported", "key absent in this kernel or network namespace"
        elif not state.get("writable"):
            status = "skipped"
            reason = f"not writable here: {state.get('error') or 'read-only'}"
        else:
            status, reason = "applied", ""
        line = f"{key} = {value}"
        if status != "applied":
            line = f"# {line}  ({status}: {reason})"
        plan.append(
            {
                "key": key,
                "kind": kind,
                "wanted": normalize(wanted),
                "current": None if current is None else normalize(current),
                "value": value,
                "status": status,
                "reason": reason,
                "in_sync": current is not None and normalize(current) == value,
                "line": line,
            }
        )
    return plan


def mailpacer_sysctl_by_status(plan: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Summary shape: status -> {key: value or reason}."""
    out: dict[str, dict[str, Any]] = {s: {} for s in STATUSES}
    for entry in plan:
        out[entry["status"]][entry["key"]] = (
            entry["value"] if entry["status"] == "applied" else entry["reason"]
        )
    return out


def mailpacer_sysctl_drift(plan: list[dict[str, Any]], live: dict[str, Any]) -> dict[str, Any]:
    """Applied keys whose live value differs from the plan: key -> {want, live}."""
    drift = {}
    for entry in plan:
        if entry["status"] != "applied":
            continue
        got = live.get(entry["key"])
        if got is None or normalize(got) != entry["value"]:
            drift[entry["key"]] = {"want": entry["value"], "live": got}
    return drift


def mailpacer_sysctl_reserve_port(current: str | None, port: int) -> str:
    """ip_local_reserved_ports with `port` added; writing replaces the whole list, so keep
    whatever is reserved already."""
    items = [i for i in normalize(current or "").replace(" ", "").split(",") if i]
    for item in items:
        low, _, high = item.partition("-")
        if int(low) <= int(port) <= int(high or low):
            return ",".join(items)
    return ",".join([*items, str(int(port))])


def mailpacer_sysctl_parse(text: str) -> dict[str, str]:
    """key = value lines of a sysctl.d file (comments and '-' prefixes handled)."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        out[key.strip().lstrip("-").replace("/", ".")] = normalize(value)
    return out


class FilterModule:
    """Ansible entry point for the filters above."""

    def filters(self) -> dict[str, Any]:
        return {
            "mailpacer_sysctl_settings": mailpacer_sysctl_settings,
            "mailpacer_sysctl_plan": mailpacer_sysctl_plan,
            "mailpacer_sysctl_by_status": mailpacer_sysctl_by_status,
            "mailpacer_sysctl_drift": mailpacer_sysctl_drift,
            "mailpacer_sysctl_parse": mailpacer_sysctl_parse,
            "mailpacer_sysctl_reserve_port": mailpacer_sysctl_reserve_port,
        }
