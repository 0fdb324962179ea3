"""Fixtures for the deployment's end-to-end test: the nspawn test host of tests/hosts/ (its own
name and /24, so it can run beside the tuner's), peers on the controller's end of the veth (the
built-in SMTP sink, a relay that refuses AUTH) and an inventory with both groups.

Nothing leaves the machine: the guest only reaches the controller's veth address. Skips only
when nspawn is impossible here; MAILPACER_REQUIRE_TESTHOST=1 turns that into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest

from tests.tuner.conftest import BIN, HOSTS, REPO, NspawnHost, testhost_unavailable

# One host per test run, named after the process: two runs at once (a developer's and CI's on
# the same machine) never tear down each other's host. MAILPACER_DEPLOY_TESTHOST_SLOT picks it.
SLOT = int(os.environ.get("MAILPACER_DEPLOY_TESTHOST_SLOT", os.getpid() % 100))
NAME = f"mpdeploy{SLOT}"
NET = f"10.231.{100 + SLOT}"  # the tuner's host uses 10.231.7
STATE = f"/tmp/mailpacer-deployhost-{SLOT}"
CONTROLLER_IP = f"{NET}.1"
GUEST_IP = f"{NET}.2"
AGENT_PORT = 9108


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "testhost: needs the systemd-nspawn test host (root)")


def hosts_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TESTHOST_NAME=NAME, TESTHOST_NET=NET, TESTHOST_STATE=STATE)
    env.setdefault("TESTHOST_CACHE", "/var/cache/mailpacer-testhost")
    return env


@pytest.fixture(scope="module")
def deployhost() -> Iterator[NspawnHost]:
    """A freshly booted nspawn host, nothing of mailpacer on it."""
    if os.geteuid() != 0:
        testhost_unavailable("not root")
    for tool in ("systemd-nspawn", "debootstrap", "zstd", "ssh", "ip"):
        if shutil.which(tool) is None:
            testhost_unavailable(f"{tool} not installed (run tests/hosts/install-deps.sh)")
    if not (BIN / "ansible-playbook").exists():
        testhost_unavailable(f"ansible-playbook not in {BIN}")
    env = hosts_env()
    up = subprocess.run(
        ["bash", str(HOSTS / "up.sh")], env=env, capture_output=True, text=True, check=False
    )
    if up.returncode != 0:
        subprocess.run(["bash", str(HOSTS / "down.sh")], env=env, capture_output=True, check=False)
        testhost_unavailable(f"tests/hosts/up.sh failed:\n{up.stderr[-3000:]}")
    host = NspawnHost(
        inventory=Path(up.stdout.strip().splitlines()[-1]),
        ssh_key=Path(STATE) / "id_ed25519",
        address=GUEST_IP,
    )
    try:
        yield host
    finally:
        subprocess.run(
            ["bash", str(HOSTS / "down.sh"), "--all"], env=env, capture_output=True, check=False
        )


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@dataclass
class Peer:
    process: subprocess.Popen[bytes]
    port: int
    store: Path | None = None

    def received(self) -> list[Path]:
        assert self.store is not None
        return sorted(p for p in self.store.rglob("*") if p.is_file())


@contextlib.contextmanager
def running(cmd: list[str], ready: str, log: Path, timeout: float = 20) -> Iterator[Popen[bytes]]:
    """Start ``cmd`` with its output in ``log``; wait for ``ready`` in it; stop it at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while ready not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{cmd} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture(scope="module")
def sink(deployhost: NspawnHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """The built-in SMTP sink on the controller's end of the veth, keeping every message."""
    work = tmp_path_factory.mktemp("sink")
    (work / "store").mkdir()
    port = free_port(CONTROLLER_IP)
    cmd = [sys.executable, "-m", "mailpacer", "sink", "--listen", f"{CONTROLLER_IP}:{port}",
           "--store", str(work / "store")]  # fmt: skip
    with running(cmd, "listening on", work / "sink.log") as process:
        yield Peer(process, port, work / "store")


@pytest.fixture(scope="module")
def refusing_relay(
    deployhost: NspawnHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Peer]:
    """A relay on the controller's end of the veth that refuses every AUTH."""
    work = tmp_path_factory.mktemp("relay")
    port = free_port(CONTROLLER_IP)
    script = Path(__file__).with_name("relay_refusing_auth.py")
    cmd = [sys.executable, str(script), CONTROLLER_IP, str(port)]
    with running(cmd, "listening on", work / "relay.log") as process:
        yield Peer(process, port)
