"""Without a test host: what the deploy roles render, checked by the agent's own parser, and the
release id of the controller's build.

- agent.toml + secret files from inventory variables are accepted by
  ``mailpacer.agentconfig.load_agent_config`` (the parser `mailpacer run` uses), and the TOML
  holds no secret;
- the unit carries the sandbox, Type=notify and the watchdog;
- the Prometheus file_sd file has one target per sender;
- the release id follows the package's source and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from mailpacer.agentconfig import load_agent_config
from mailpacer.engine.render_pool import render_workers
from tests.tuner.conftest import BIN, REPO, ansible_env

from ..tuner._plugins import load

ROLE = REPO / "roles" / "mailpacer_agent"


def playbook(
    tmp_path: Path, plays: list[dict[str, object]], inventory: str = "", *args: str
) -> str:
    book = tmp_path / "render.yml"
    book.write_text(yaml.safe_dump(plays, sort_keys=False))
    hosts = tmp_path / "hosts.ini"
    hosts.write_text(
        inventory or f"localhost ansible_connection=local ansible_python_interpreter={BIN}/python\n"
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(hosts), str(book), *args],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


def render_agent(tmp_path: Path, variables: dict[str, object], *args: str) -> Path:
    etc = tmp_path / "etc"
    (etc / "secrets").mkdir(parents=True)
    overrides = tmp_path / "inventory-vars.yml"  # vars_files: a later file wins
    overrides.write_text(
        yaml.safe_dump(
            {
                "mailpacer_agent_config_dir": str(etc),
                "mailpacer_agent_build": {"release": "0.1.0-render"},
                **variables,
            }
        )
    )
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [
            str(ROLE / "defaults/main.yml"),
            str(ROLE / "vars/main.yml"),
            str(overrides),
        ],
        "tasks": [
            {
                "name": "Secrets",
                "ansible.builtin.copy": {
                    "dest": "{{ __mailpacer_agent_secrets_dir }}/{{ item.name }}",
                    "content": "{{ item.value }}\n",
                    "mode": "0600",
                },
                "loop": "{{ __mailpacer_agent_secrets }}",
                "no_log": True,
            },
            {
                "name": "Configuration",
                "ansible.builtin.template": {
                    "src": str(ROLE / "templates/agent.toml.j2"),
                    "dest": str(etc / "agent.toml"),
                    "mode": "0600",
                },
            },
            {
                "name": "Unit",
                "ansible.builtin.template": {
                    "src": str(ROLE / "templates/mailpacer-agent.service.j2"),
                    "dest": str(etc / "mailpacer-agent.service"),
                    "mode": "0600",
                },
            },
        ],
    }
    out = playbook(tmp_path, [play], "", *args)
    for secret in ("db-s3cret", "relay-s3cret", "report-s3cret", "api-s3cret", "vault-s3cret"):
        assert secret not in out
    return etc


FULL = {
    "mailpacer_agent_db": "mysql+pymysql://mailpacer@db.example.net/mailpacer",
    "mailpacer_agent_db_password": "db-s3cret/with:odd@chars",
    "mailpacer_agent_relays": [
        {"url": "smtp://10.0.0.1:25"},
        {
            "url": "smtp+starttls://relay.example.net:587",
            "username": "mailer",
            "password": "relay-s3cret",
            "priority": 1,
            "weight": 3,
        },
    ],
    "mailpacer_agent_report_url": "https://crm.example.com/mailpacer/progress",
    "mailpacer_agent_report_secret": "report-s3cret",
    "mailpacer_agent_api_token": "api-s3cret",
    "mailpacer_agent_scratch_dir": "",
}


def test_rendered_configuration_is_what_the_agent_parses(tmp_path: Path) -> None:
    etc = render_agent(tmp_path, FULL)
    text = (etc / "agent.toml").read_text()
    for secret in ("s3cret",):
        assert secret not in text
    config = load_agent_config(etc / "agent.toml")
    assert config.db == (
        "mysql+pymysql://mailpacer:db-s3cret%2Fwith%3Aodd%40chars@db.example.net/mailpacer"
    )
    assert [r.username for r in config.relays] == [None, "mailer"]
    assert config.relays[1].password == "relay-s3cret"
    assert (config.relays[1].priority, config.relays[1].weight) == (1, 3)
    assert config.http == "0.0.0.0:9108"
    assert config.concurrency == 2  # no sizing profile here: 8 connections / 4 campaigns
    assert 'render_workers = "auto"' in text  # ... and the agent sizes its render pool
    assert config.render_workers == render_workers("auto")
    assert config.log_format == "json"
    assert config.scratch_dir is None
    assert config.report is not None
    assert config.report.secret == b"report-s3cret"
    assert config.report.source == "localhost"
    assert config.api_token == "api-s3cret"
    assert config.api_read_token is None
    assert sorted(p.name for p in (etc / "secrets").iterdir()) == [
        "api-token", "db-password", "relay-1", "report-secret",
    ]  # fmt: skip


def test_minimal_configuration(tmp_path: Path) -> None:
    etc = render_agent(
        tmp_path,
        {
            "mailpacer_agent_db": "sqlite:////var/lib/mailpacer/agent/ledger.db",
            "mailpacer_agent_relays": [{"url": "smtp://127.0.0.1:2525"}],
            "mailpacer_host_facts_sizing": {
                "profile": "aggressive",
                "inputs": {"cores": 12},
                "agent": {"smtp_connections": 64, "render_workers": 8},
                "limits": {"nofile": 943718, "nproc": 100000, "tasks_max": 100000},
            },
        },
    )
    config = load_agent_config(etc / "agent.toml")
    assert config.db == "sqlite:////var/lib/mailpacer/agent/ledger.db"
    assert config.concurrency == 16  # 64 connections of the profile / 4 campaigns
    assert config.render_workers == 8  # 12 CPUs - 1, at most 8 when aggressive
    assert config.scratch_dir == Path("/var/cache/mailpacer-scratch")
    assert config.report is None
    assert list((etc / "secrets").iterdir()) == []
    unit = (etc / "mailpacer-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        f"ExecStart=/opt/mailpacer/current/venv/bin/mailpacer run --config {etc}/agent.toml",
        "User=mailpacer",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/mailpacer/agent",
        "ReadWritePaths=-/var/cache/mailpacer-scratch",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RequiresMountsFor=/var/lib/mailpacer/agent /var/cache/mailpacer-scratch",
        "LimitNOFILE=943718",
        "LimitNPROC=100000",
        "TasksMax=100000",
    ):
        assert f"\n{line}\n" in unit, line


def sizing_rule(profile: str, cores: int) -> int | str:
    """What the tuner's sizing filter says for this profile and CPU count."""
    plugin = load("mailpacer_host_facts", "mailpacer_sizing")
    facts = {"cores": cores, "memtotal_mb": 8192, "nr_open": 1_048_576, "pid_max": 4_194_304}
    value: int | str = plugin.mailpacer_sizing(facts, profile)["agent"]["render_workers"]
    return value


@pytest.mark.parametrize(
    ("profile", "cores", "override", "expected"),
    [
        ("gentle", 2, None, 0),  # a small host keeps its CPUs for the sender
        ("gentle", 4, None, 1),
        ("balanced", 16, None, "auto"),  # the agent decides, on the host
        ("aggressive", 3, None, 2),
        ("aggressive", 16, 3, 3),  # the inventory wins
    ],
)
def test_render_workers_follow_the_profile(
    tmp_path: Path, profile: str, cores: int, override: int | None, expected: int | str
) -> None:
    variables: dict[str, object] = {
        "mailpacer_agent_db": "sqlite:////var/lib/mailpacer/agent/ledger.db",
        "mailpacer_agent_relays": [{"url": "smtp://127.0.0.1:2525"}],
        "mailpacer_host_facts_sizing": {
            "profile": profile,
            "inputs": {"cores": cores},
            "agent": {"smtp_connections": 8, "render_workers": sizing_rule(profile, cores)},
        },
    }
    if override is not None:
        variables["mailpacer_agent_render_workers"] = override
    etc = render_agent(tmp_path, variables)
    config = load_agent_config(etc / "agent.toml")
    if expected == "auto":
        assert 'render_workers = "auto"' in (etc / "agent.toml").read_text()
        expected = render_workers("auto")
    assert config.render_workers == expected


def test_relay_password_from_ansible_vault(tmp_path: Path) -> None:
    password_file = tmp_path / "vault-pass"
    password_file.write_text("e2e-vault-key\n")
    encrypted = subprocess.run(
        [str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(password_file),
         "--name", "vault_relay_password", "vault-s3cret"],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "vault-s3cret" not in encrypted
    vault_vars = tmp_path / "vault.yml"
    vault_vars.write_text(encrypted)
    etc = render_agent(
        tmp_path,
        {
            "mailpacer_agent_db": "sqlite:////var/lib/mailpacer/agent/ledger.db",
            "mailpacer_agent_relays": [
                {
                    "url": "smtps://relay.example.net:465",
                    "username": "mailer",
                    "password": "{{ vault_relay_password }}",
                }
            ],
        },
        "--vault-password-file",
        str(password_file),
        "-e",
        f"@{vault_vars}",
    )
    assert (etc / "secrets" / "relay-0").read_text() == "vault-s3cret\n"
    assert "vault-s3cret" not in (etc / "agent.toml").read_text()
    assert load_agent_config(etc / "agent.toml").relays[0].password == "vault-s3cret"


def test_file_sd_has_one_target_per_sender(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    inventory = (
        "[senders]\n"
        "mx-1 ansible_host=192.0.2.10\n"
        "mx-2 ansible_host=192.0.2.11 mailpacer_agent_http_port=9200\n"
        "mx-3 mailpacer_prometheus_target=mx-3.internal:9108\n"
        "[prometheus]\n"
        f"localhost ansible_connection=local ansible_python_interpreter={BIN}/python\n"
    )
    promtool = shutil.which("promtool") or ""
    play = {
        "hosts": "prometheus",
        "gather_facts": False,
        "vars": {
            "mailpacer_prometheus_file_sd_path": str(prom / "sd/mailpacer.yml"),
            "mailpacer_prometheus_rules_path": str(prom / "rules/mailpacer.yml"),
            "mailpacer_prometheus_dashboard_path": "",
            "mailpacer_prometheus_assets_dir": str(REPO / "templates/prometheus"),
            "mailpacer_prometheus_promtool": promtool,
            "mailpacer_prometheus_labels": {"env": "prod"},
        },
        "roles": [{"role": "mailpacer_prometheus"}],
    }
    playbook(tmp_path, [play], inventory)
    targets = yaml.safe_load((prom / "sd/mailpacer.yml").read_text())
    assert targets == [
        {"targets": ["192.0.2.10:9108"], "labels": {"instance": "mx-1", "env": "prod"}},
        {"targets": ["192.0.2.11:9200"], "labels": {"instance": "mx-2", "env": "prod"}},
        {"targets": ["mx-3.internal:9108"], "labels": {"instance": "mx-3", "env": "prod"}},
    ]
    assert (prom / "rules/mailpacer.yml").read_text() == (
        REPO / "templates/prometheus/alerts.yml"
    ).read_text()
    assert not (prom / "dashboards").exists()


def load_build_script() -> ModuleType:
    path = ROLE / "files" / "mailpacer_build_wheelhouse.py"
    spec = importlib.util.spec_from_file_location("mailpacer_build_wheelhouse", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "agent" / "mailpacer").mkdir(parents=True)
    (src / "pyproject.toml").write_text('[project]\nname = "mailpacer"\nversion = "0.1.0"\n')
    (src / "agent" / "mailpacer" / "__init__.py").write_text("x = 1\n")
    return src


def test_release_id_follows_the_package_source_only(source: Path) -> None:
    build = load_build_script()
    first = build.source_hash(source, "3.11")
    # caches, bytecode and files outside the package do not make a new release
    (source / "agent" / "mailpacer" / "__pycache__").mkdir()
    (source / "agent" / "mailpacer" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (source / "README.md").write_text("docs only\n")
    assert build.source_hash(source, "3.11") == first
    # code, metadata and the build Python do
    assert build.source_hash(source, "3.12") != first
    (source / "agent" / "mailpacer" / "__init__.py").write_text("x = 2\n")
    second = build.source_hash(source, "3.11")
    assert second != first
    (source / "pyproject.toml").write_text('[project]\nname = "mailpacer"\nversion = "0.2.0"\n')
    assert build.source_hash(source, "3.11") not in (first, second)
    assert json.dumps(first).strip('"').isalnum()
