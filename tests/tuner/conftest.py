"""Fixtures for the tuner's end-to-end tests: a real systemd host booted with systemd-nspawn.

The host comes from tests/hosts/ (see its README). One host per test module; tests in a
module run in file order and build on each other (fresh host -> bad input -> check mode ->
converge -> idempotence -> reboot -> rollback).

Skips only when nspawn is truly impossible here (not root, tools missing, boot fails), and
MAILPACER_REQUIRE_TESTHOST=1 (set by the Makefile) turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTS = REPO / "tests" / "hosts"
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "testhost: needs the systemd-nspawn test host (root)")


def testhost_unavailable(reason: str) -> None:
    """Skip, or fail when the environment says the test host is required."""
    if os.environ.get("MAILPACER_REQUIRE_TESTHOST") == "1":
        pytest.fail(f"test host required (MAILPACER_REQUIRE_TESTHOST=1) but: {reason}")
    pytest.skip(f"systemd-nspawn test host unavailable: {reason}")


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        PYTHONWARNINGS="ignore",
    )
    return env


@dataclass
class Run:
    """One ansible-playbook run: exit code, combined output and the recap of the host."""

    rc: int
    out: str

    @property
    def changed(self) -> int:
        m = RECAP.search(self.out)
        assert m, f"no PLAY RECAP in output:\n{self.out[-3000:]}"
        return int(m["changed"])

    @property
    def failed(self) -> int:
        m = RECAP.search(self.out)
        return int(m["failed"]) if m else -1


@dataclass
class NspawnHost:
    inventory: Path
    ssh_key: Path
    address: str

    def playbook(self, name: str, *args: str, timeout: float = 600) -> Run:
        cmd = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), f"playbooks/{name}", *args]
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=ansible_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout + proc.stderr)

    def ansible(self, module: str, args: str = "", timeout: float = 300) -> Run:
        cmd = [str(BIN / "ansible"), "-i", str(self.inventory), "senders", "-m", module]
        if args:
            cmd += ["-a", args]
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=ansible_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout + proc.stderr)

    def ssh(self, command: str, *, check: bool = True) -> str:
        proc = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.ssh_key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                f"root@{self.address}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {command!r} failed rc={proc.returncode}: {proc.stderr}")
        return proc.stdout


def _hosts_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TESTHOST_NAME", "mptuner")
    env.setdefault("TESTHOST_NET", "10.231.7")
    env.setdefault("TESTHOST_STATE", "/tmp/mailpacer-testhost")
    env.setdefault("TESTHOST_CACHE", "/var/cache/mailpacer-testhost")
    return env


# A stand-in for the agent's unit (the agent role comes later): the limits role restarts it
# and reads /proc/<MainPID>/limits, exactly as it will for the real agent.
PLACEHOLDER_AGENT_UNIT = """\
[Unit]
Description=placeholder for mailpacer-agent.service (tuner e2e tests)

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def testhost() -> Iterator[NspawnHost]:
    """A freshly booted nspawn host with the placeholder agent unit running."""
    if os.geteuid() != 0:
        testhost_unavailable("not root")
    for tool in ("systemd-nspawn", "debootstrap", "zstd", "ssh", "ip"):
        if shutil.which(tool) is None:
            testhost_unavailable(f"{tool} not installed (run tests/hosts/install-deps.sh)")
    if not (BIN / "ansible-playbook").exists():
        testhost_unavailable(f"ansible-playbook not in {BIN}")
    env = _hosts_env()
    up = subprocess.run(
        ["bash", str(HOSTS / "up.sh")], env=env, capture_output=True, text=True, check=False
    )
    if up.returncode != 0:
        subprocess.run(["bash", str(HOSTS / "down.sh")], env=env, capture_output=True, check=False)
        testhost_unavailable(f"tests/hosts/up.sh failed:\n{up.stderr[-3000:]}")
    inventory = Path(up.stdout.strip().splitlines()[-1])
    host = NspawnHost(
        inventory=inventory,
        ssh_key=Path(env["TESTHOST_STATE"]) / "id_ed25519",
        address=f"{env['TESTHOST_NET']}.2",
    )
    try:
        host.ssh(
            "cat >/etc/systemd/system/mailpacer-agent.service <<'EOF'\n"
            f"{PLACEHOLDER_AGENT_UNIT}EOF\n"
            "systemctl daemon-reload && systemctl enable --now mailpacer-agent.service"
        )
        yield host
    finally:
        subprocess.run(["bash", str(HOSTS / "down.sh")], env=env, capture_output=True, check=False)
