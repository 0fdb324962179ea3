"""End to end on a real systemd host (systemd-nspawn, own netns): the tune / verify / rollback
cycle of playbooks/*.yml. Tests run in file order on one host and build on each other.

What the guest cannot change (global fs.*/vm.* keys, rmem_max/wmem_max, netdev_max_backlog,
default_qdisc, fq) is asserted as "configured and reported", never silently passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import NspawnHost

pytestmark = [pytest.mark.testhost, pytest.mark.slow]

OWNED_FILES = [
    "/etc/sysctl.d/90-mailpacer.conf",
    "/etc/modules-load.d/mailpacer.conf",
    "/etc/ansible/facts.d/mailpacer.fact",
    "/etc/security/limits.d/90-mailpacer.conf",
    "/etc/systemd/system/mailpacer-agent.service.d/50-mailpacer-limits.conf",
    r"/etc/systemd/system/var-cache-mailpacer\x2dscratch.mount",
    "/var/lib/mailpacer/tuning.json",
]
WATCHED_KEYS = [
    "net.ipv4.tcp_congestion_control",
    "net.core.somaxconn",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
    "net.ipv4.tcp_wmem",
]
# The test host starts here (tests/hosts/up.sh installs the reno baseline).
BASELINE_CC = "reno"
PROBE_CC = (
    'python3 -c \'import socket; s = socket.create_connection(("127.0.0.1", 22)); '
    'print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode())\''
)


def state(host: NspawnHost) -> str:
    """Everything tune.yml may touch, as text: our files, live keys, the RAM disk."""
    files = " ".join(f"'{f}'" for f in OWNED_FILES)
    return host.ssh(
        f'for f in {files}; do [ -e "$f" ] && echo "present $f"; done; '
        f"sysctl {' '.join(WATCHED_KEYS)}; "
        "findmnt -n /var/cache/mailpacer-scratch || echo 'no ramdisk'"
    )


def read_json(host: NspawnHost, path: str) -> dict:
    return json.loads(host.ssh(f"cat {path}"))


@pytest.fixture(scope="module")
def pristine(testhost: NspawnHost) -> str:
    before = state(testhost)
    assert "present" not in before
    assert f"net.ipv4.tcp_congestion_control = {BASELINE_CC}" in before
    return before


# --- bad input: fails in the assert phase, names the variable and the range, changes nothing


BAD_INPUT = {
    "yaml_boolean_sysctl_value": (
        "mailpacer_sysctl_overrides:\n  net.ipv4.tcp_tw_reuse: yes\n",
        ["mailpacer_sysctl_overrides", "net.ipv4.tcp_tw_reuse", "YAML booleans"],
    ),
    "inverted_port_range": (
        "mailpacer_sysctl_port_range: [60999, 20000]\n",
        ["mailpacer_sysctl_port_range", "low < high <= 65535"],
    ),
    "port_range_below_unprivileged_start": (
        "mailpacer_sysctl_port_range: [512, 60999]\n",
        ["mailpacer_sysctl_port_range", "1024 (net.ipv4.ip_unprivileged_port_start) <= low"],
    ),
    "tmpfs_larger_than_ram_minus_floor": (
        "mailpacer_ramdisk_size_mb: 1000000\n",
        ["mailpacer_ramdisk_size_mb", "must be an integer between 0 and", "minus the floor"],
    ),
    "limit_nofile_above_nr_open": (
        "mailpacer_limits_nofile: 2000000\n",
        ["mailpacer_limits_nofile", "between 1024 and 1048576 (fs.nr_open"],
    ),
    "unknown_profile": (
        "mailpacer_host_facts_profile: turbo\n",
        ["mailpacer_host_facts_profile", "gentle, balanced, aggressive"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_before_any_change(
    testhost: NspawnHost, pristine: str, tmp_path: Path, case: str
) -> None:
    vars_yaml, expected = BAD_INPUT[case]
    extra = tmp_path / "bad.yml"
    extra.write_text(vars_yaml)  # a file, so that YAML itself turns `yes` into a boolean
    run = testhost.playbook("tune.yml", "-e", f"@{extra}")
    assert run.rc != 0, run.out[-3000:]
    missing = [text for text in expected if text not in run.out]
    assert missing == [], run.out[-3000:]
    assert "changed=0" in run.out
    assert state(testhost) == pristine


def test_strict_mode_fails_on_an_unsupported_key(testhost: NspawnHost, pristine: str) -> None:
    run = testhost.playbook("tune.yml", "-e", "mailpacer_tuning_strict=true")
    assert run.rc != 0
    assert "mailpacer_sysctl_strict (mailpacer_tuning_strict) is true" in run.out
    for key in ("fs.file-max", "vm.swappiness", "net.core.default_qdisc"):
        assert key in run.out
    assert state(testhost) == pristine


def test_check_diff_on_fresh_host_shows_the_plan_and_changes_nothing(
    testhost: NspawnHost, pristine: str
) -> None:
    run = testhost.playbook("tune.yml", "--check", "--diff")
    assert run.rc == 0, run.out[-4000:]
    plan = [
        "+net.ipv4.tcp_congestion_control = bbr",
        "+net.ipv4.ip_local_port_range = 10240 65535",
        "+# fs.file-max = ",  # configured, reported as not applicable here
        "+# net.core.default_qdisc = fq  (unsupported: kernel has no fq qdisc",
        "+LimitNOFILE=262144",
        "+Options=mode=0750,size=2410m,nosuid,nodev,noexec",
        '+        "smtp_connections": 16,',  # the summary's diff shows the derived numbers
        '+            "nofile": 262144,',
    ]
    missing = [line for line in plan if line not in run.out]
    assert missing == [], run.out[-4000:]
    assert state(testhost) == pristine


# --- converge, idempotence, live values


def test_converge(testhost: NspawnHost, pristine: str) -> None:
    run = testhost.playbook("tune.yml")
    assert run.rc == 0, run.out[-4000:]
    assert run.changed > 0
    assert testhost.ssh(PROBE_CC).strip() == "bbr"  # a fresh socket really uses BBR
    live = testhost.ssh("sysctl -n " + " ".join(WATCHED_KEYS)).split("\n")
    assert live[:3] == ["bbr", "4096", "10240\t65535"]
    assert live[4:7] == ["1", "0", "131072"]


def test_summary_reports_applied_skipped_and_unsupported_keys(testhost: NspawnHost) -> None:
    summary = read_json(testhost, "/var/lib/mailpacer/tuning.json")
    keys = summary["sysctl"]["keys"]
    assert summary["profile"] == "balanced"
    assert summary["agent"]["smtp_connections"] == 8 * summary["host"]["cores"]
    assert keys["applied"]["net.ipv4.tcp_congestion_control"] == "bbr"
    assert keys["applied"]["net.ipv4.tcp_tw_reuse"] == "1"
    # global keys: read-only in the guest -> configured, reported skipped with the reason
    for key in ("fs.file-max", "fs.nr_open", "vm.swappiness"):
        assert "EROFS" in keys["skipped"][key]
    for key in ("net.core.rmem_max", "net.core.wmem_max"):
        assert key in keys["skipped"]
    # absent in a non-init netns / no fq in this kernel -> unsupported
    assert "no fq qdisc" in keys["unsupported"]["net.core.default_qdisc"]
    assert "absent" in keys["unsupported"]["net.core.netdev_max_backlog"]
    conf = testhost.ssh("cat /etc/sysctl.d/90-mailpacer.conf")
    assert "\nnet.ipv4.tcp_congestion_control = bbr\n" in conf
    for key in ("fs.file-max", "vm.swappiness", "net.core.default_qdisc"):
        assert f"\n# {key} = " in conf  # configured, visibly not applied
    assert summary["sysctl"]["agent_port_reserved"] is False  # 9108 is below 10240


def test_originals_saved_before_the_first_change(testhost: NspawnHost) -> None:
    saved = read_json(testhost, "/etc/ansible/facts.d/mailpacer.fact")["sysctl"]
    assert saved["net.ipv4.tcp_congestion_control"] == BASELINE_CC
    assert saved["net.ipv4.ip_local_port_range"] == "32768 60999"


def test_effective_limits_of_the_agent(testhost: NspawnHost) -> None:
    pid = testhost.ssh("systemctl show -p MainPID --value mailpacer-agent.service").strip()
    limits = testhost.ssh(f"cat /proc/{pid}/limits")
    nofile = int(limits.split("Max open files")[1].split()[0])
    nproc = int(limits.split("Max processes")[1].split()[0])
    pid1 = testhost.ssh("cat /proc/1/limits")
    pid1_nofile_hard = int(pid1.split("Max open files")[1].split()[1])
    # configured 262144 (balanced); without CAP_SYS_RESOURCE the kernel caps at PID 1's hard limit
    assert nofile == min(262_144, pid1_nofile_hard)
    assert nproc == 16_384
    assert "TasksMax=16384" in testhost.ssh("systemctl show -p TasksMax mailpacer-agent.service")
    summary = read_json(testhost, "/var/lib/mailpacer/tuning.json")["limits"]
    assert summary["effective"]["nofile"] == nofile
    assert summary["verified_on"] == "running unit"


def test_ramdisk_mount_unit(testhost: NspawnHost) -> None:
    unit = testhost.ssh("systemd-escape -p --suffix=mount /var/cache/mailpacer-scratch").strip()
    assert unit == r"var-cache-mailpacer\x2dscratch.mount"
    assert testhost.ssh(f"systemctl is-enabled '{unit}'").strip() == "enabled"
    mnt = testhost.ssh("findmnt -n -o FSTYPE,OPTIONS /var/cache/mailpacer-scratch")
    assert mnt.startswith("tmpfs")
    assert f"size={2410 * 1024}k" in mnt


def test_second_converge_changes_nothing(testhost: NspawnHost) -> None:
    run = testhost.playbook("tune.yml")
    assert run.rc == 0, run.out[-4000:]
    assert run.changed == 0, run.out[-4000:]


def test_verify_playbook_passes_without_changes(testhost: NspawnHost) -> None:
    run = testhost.playbook("verify.yml")
    assert run.rc == 0, run.out[-4000:]
    assert run.changed == 0
    assert "keys in /etc/sysctl.d/90-mailpacer.conf are live" in run.out


def test_verify_playbook_catches_drift(testhost: NspawnHost) -> None:
    testhost.ssh("sysctl -w net.ipv4.tcp_slow_start_after_idle=1")
    try:
        run = testhost.playbook("verify.yml")
        assert run.rc != 0
        assert "net.ipv4.tcp_slow_start_after_idle" in run.out
    finally:
        testhost.ssh("sysctl -w net.ipv4.tcp_slow_start_after_idle=0")


def test_settings_survive_a_reboot(testhost: NspawnHost) -> None:
    boot_id = testhost.ssh("cat /proc/sys/kernel/random/boot_id")
    run = testhost.ansible("ansible.builtin.reboot", "reboot_timeout=120")
    assert run.rc == 0, run.out
    assert testhost.ssh("cat /proc/sys/kernel/random/boot_id") != boot_id
    assert testhost.ssh(PROBE_CC).strip() == "bbr"
    run = testhost.playbook("verify.yml")
    assert run.rc == 0, run.out[-4000:]
    assert run.changed == 0


def test_verify_without_a_running_agent_uses_a_transient_unit(testhost: NspawnHost) -> None:
    # before the agent is deployed, limits are checked on a transient unit with the same values
    testhost.ssh("systemctl stop mailpacer-agent.service")
    try:
        run = testhost.playbook("verify.yml")
        assert run.rc == 0, run.out[-4000:]
        assert "verified_on: transient unit, same limits" in run.out
    finally:
        testhost.ssh("systemctl start mailpacer-agent.service")


def test_aggressive_profile_plan_shows_every_derived_number(testhost: NspawnHost) -> None:
    run = testhost.playbook(
        "tune.yml", "--check", "--diff", "-e", "mailpacer_host_facts_profile=aggressive"
    )
    assert run.rc == 0, run.out[-4000:]
    plan = [
        "+LimitNOFILE=943718",  # 90 % of fs.nr_open 1048576
        "+LimitNPROC=100000",  # 90 % of pid_max 4194304, capped at 100,000
        "+Options=mode=0750,size=4821m,",  # 20 % of 24105 MB
        "+net.core.somaxconn = 8192",
        '+        "smtp_connections": 32,',  # 16 per core
    ]
    missing = [line for line in plan if line not in run.out]
    assert missing == [], run.out[-4000:]


def test_agent_port_inside_the_port_range_gets_reserved(testhost: NspawnHost) -> None:
    run = testhost.playbook(
        "tune.yml", "--check", "--diff", "-e", '{"mailpacer_sysctl_port_range": [9000, 65535]}'
    )
    assert run.rc == 0, run.out[-4000:]
    plan = [
        "+net.ipv4.ip_local_port_range = 9000 65535",
        "+net.ipv4.ip_local_reserved_ports = 9108",
    ]
    missing = [line for line in plan if line not in run.out]
    assert missing == [], run.out[-4000:]


# --- rollback


def test_rollback_restores_the_originals(testhost: NspawnHost, pristine: str) -> None:
    saved = read_json(testhost, "/etc/ansible/facts.d/mailpacer.fact")["sysctl"]
    run = testhost.playbook("rollback.yml")
    assert run.rc == 0, run.out[-4000:]
    assert run.changed > 0
    assert state(testhost) == pristine
    for key, value in saved.items():
        assert " ".join(testhost.ssh(f"sysctl -n {key}").split()) == value, key
    assert testhost.ssh(PROBE_CC).strip() == BASELINE_CC
    # the agent was restarted back to the default limits
    pid = testhost.ssh("systemctl show -p MainPID --value mailpacer-agent.service").strip()
    assert "Max open files            1024" in testhost.ssh(f"cat /proc/{pid}/limits")


def test_second_rollback_changes_nothing(testhost: NspawnHost, pristine: str) -> None:
    run = testhost.playbook("rollback.yml")
    assert run.rc == 0, run.out[-4000:]
    assert run.changed == 0
    assert state(testhost) == pristine
