"""Static checks of the tuner: ansible-lint (production profile) and --syntax-check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_playbooks_exist() -> None:
    assert PLAYBOOKS == ["deploy.yml", "rollback.yml", "site.yml", "tune.yml", "verify.yml"]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", ["inventory/local.yml", "inventory/example"])
def test_syntax_check(playbook: str, inventory: str) -> None:
    proc = run(
        str(BIN / "ansible-playbook"), "--syntax-check", "-i", inventory, f"playbooks/{playbook}"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_ansible_lint_production_profile() -> None:
    # .ansible-lint at the repo root: profile production, roles/ playbooks/ inventory/
    proc = run(str(BIN / "ansible-lint"), "--profile", "production", "--offline")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr
