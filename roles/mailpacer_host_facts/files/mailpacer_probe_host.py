#!/usr/bin/env python3
"""Read-only probe of a sending host; prints one JSON object.

Usage: mailpacer_probe_host.py DATA_PATH
Everything is read from /proc, /sys and the filesystem; the only "action" is an fq test in a
throw-away network namespace (unshare --net), which vanishes with the process.
Container detection is by evidence (files, PID 1's environment, read-only /proc/sys, missing
capabilities), never by a single virtualization label.
"""

import json
import os
import re
import shutil
import subprocess
import sys


def read(path, default=None):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return default


def sysctl(key):
    return read("/proc/sys/" + key.replace(".", "/"))


def as_int(text):
    try:
        return int(str(text).split()[0])
    except (ValueError, IndexError, TypeError):
        return None


def meminfo():
    out = {}
    for line in (read("/proc/meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        out[name] = as_int(rest)
    return out


def cpu_mhz():
    # cpufreq gives the nominal maximum; VMs often only have "cpu MHz" in cpuinfo
    khz = as_int(read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    if khz:
        return round(khz / 1000)
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", read("/proc/cpuinfo") or "", re.M)
    return round(float(m.group(1))) if m else None


def proc_limits(pid):
    """{"nofile": [soft, hard], "nproc": [...]} from /proc/<pid>/limits (None = unlimited)."""
    names = {"Max open files": "nofile", "Max processes": "nproc"}
    out = {}
    for line in (read(f"/proc/{pid}/limits") or "").splitlines():
        for label, key in names.items():
            if line.startswith(label):
                soft, hard = line[len(label) :].split()[:2]
                out[key] = [None if v == "unlimited" else int(v) for v in (soft, hard)]
    return out


def default_iface():
    for line in (read("/proc/net/route") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    for name in sorted(os.listdir("/sys/class/net")):
        if name != "lo":
            return name
    return None


def nic_speed(iface):
    if not iface:
        return None
    # reading speed of a down or virtual link raises EINVAL: report unknown
    return as_int(read(f"/sys/class/net/{iface}/speed"))


def disk(path):
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    return {
        "path": path,
        "measured_at": probe,
        "total_mb": st.f_blocks * st.f_frsize // 2**20,
        "free_mb": st.f_bavail * st.f_frsize // 2**20,
    }


def capabilities():
    status = read("/proc/self/status") or ""
    caps = {}
    for name in ("CapEff", "CapBnd"):
        m = re.search(rf"^{name}:\s*([0-9a-f]+)", status, re.M)
        caps[name] = int(m.group(1), 16) if m else 0
    return {
        "sys_resource": bool(caps["CapBnd"] >> 24 & 1),
        "sys_module": bool(caps["CapEff"] >> 16 & 1),
        "sys_admin": bool(caps["CapEff"] >> 21 & 1),
    }


def proc_sys_read_only():
    for line in (read("/proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[4] == "/proc/sys":
            return "ro" in fields[5].split(",")
    return False


def container(caps):
    evidence = []
    kind = read("/run/systemd/container")
    if kind:
        evidence.append(f"/run/systemd/container={kind}")
    env = read("/proc/1/environ") or ""
    for var in env.split("\0"):
        if var.startswith("container="):
            evidence.append(f"PID 1 environment {var}")
            kind = kind or var.partition("=")[2]
    for marker, name in (("/.dockerenv", "docker"), ("/run/.containerenv", "podman")):
        if os.path.exists(marker):
            evidence.append(f"{marker} exists")
            kind = kind or name
    if proc_sys_read_only():
        evidence.append("/proc/sys is mounted read-only")
    if not caps["sys_module"]:
        evidence.append("no CAP_SYS_MODULE")
    # missing CAP_SYS_MODULE alone is weak (hardened hosts drop it too)
    strong = [e for e in evidence if e != "no CAP_SYS_MODULE"]
    return {"detected": bool(strong), "kind": kind or None, "evidence": evidence}


def modules_dir():
    return f"/lib/modules/{os.uname().release}"


def module_state(name, path_glob_dir):
    """'loaded', 'builtin', 'loadable' or 'absent' for a kernel module."""
    if os.path.isdir(f"/sys/module/{name}"):
        return "loaded"
    mdir = modules_dir()
    builtin = read(f"{mdir}/modules.builtin") or ""
    if re.search(rf"/{name}\.ko\b", builtin):
        return "builtin"
    d = f"{mdir}/kernel/{path_glob_dir}"
    if os.path.isdir(d) and any(f.startswith(name + ".ko") for f in os.listdir(d)):
        return "loadable"
    return "absent"


def kernel_at_least(release, want):
    nums = [int(x) for x in re.findall(r"\d+", release.split("-")[0])[:2]]
    return tuple(nums) >= want


def probe_bbr(release, container_detected, caps):
    available = (sysctl("net.ipv4.tcp_available_congestion_control") or "").split()
    allowed = (sysctl("net.ipv4.tcp_allowed_congestion_control") or "").split()
    module = module_state("tcp_bbr", "net/ipv4")
    out = {
        "kernel_ok": kernel_at_least(release, (4, 9)),
        "available": available,
        "allowed": allowed,
        "module": module,
        "modprobe": shutil.which("modprobe") is not None,
    }
    if not out["kernel_ok"]:
        out.update(supported=False, reason=f"kernel {release} < 4.9 has no BBR")
    elif "bbr" in available:
        out.update(supported=True, reason="bbr listed in tcp_available_congestion_control")
    elif module == "loadable" and out["modprobe"] and caps["sys_module"] and not container_detected:
        out.update(supported=True, reason="tcp_bbr module loadable", needs_modprobe=True)
    elif container_detected:
        out.update(supported=False, reason="bbr not loaded by the container's host kernel")
    else:
        out.update(supported=False, reason=f"tcp_bbr not available (module {module})")
    out.setdefault("needs_modprobe", False)
    return out


def probe_fq():
    """fq qdisc support: try it in a throw-away netns, else look for the module."""
    tc, unshare = shutil.which("tc"), shutil.which("unshare")
    if tc and unshare:
        try:
            r = subprocess.run(
                [unshare, "--net", tc, "qdisc", "add", "dev", "lo", "root", "fq"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if r.returncode == 0:
                return {"supported": True, "reason": "fq qdisc created in a scratch netns"}
            err = (r.stderr or r.stdout).strip().splitlines()
            if "unknown" in " ".join(err).lower():
                return {"supported": False, "reason": "kernel has no fq qdisc: " + err[-1]}
        except (OSError, subprocess.SubprocessError):
            pass
    state = module_state("sch_fq", "net/sched")
    if state != "absent":
        return {"supported": True, "reason": f"sch_fq {state}"}
    return {"supported": False, "reason": "no sch_fq module or built-in found"}


def main():
    data_path = sys.argv[1] if len(sys.argv) > 1 else "/var/lib/mailpacer"
    mem = meminfo()
    caps = capabilities()
    release = os.uname().release
    iface = default_iface()
    ctn = container(caps)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    facts = {
        "cores": cores,
        "cpu_mhz": cpu_mhz(),
        "memtotal_mb": (mem.get("MemTotal") or 0) // 1024,
        "memavailable_mb": (mem.get("MemAvailable") or 0) // 1024,
        "disk": disk(data_path),
        "nic": iface,
        "nic_speed_mbps": nic_speed(iface),
        "kernel": release,
        "nr_open": as_int(sysctl("fs.nr_open")),
        "file_max": as_int(sysctl("fs.file-max")),
        "pid_max": as_int(sysctl("kernel.pid_max")),
        "ip_unprivileged_port_start": as_int(sysctl("net.ipv4.ip_unprivileged_port_start")) or 1024,
        "pid1_limits": proc_limits(1),
        "capabilities": caps,
        "container": ctn,
        "systemd": os.path.isdir("/run/systemd/system"),
        "bbr": probe_bbr(release, ctn["detected"], caps),
        "fq": probe_fq(),
    }
    json.dump(facts, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
