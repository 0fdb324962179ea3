"""End to end: playbooks/site.yml deploys the agent on a real systemd host (systemd-nspawn, own
netns) and it sends a real campaign to a sink on the controller's end of the veth.

Tests run in file order on one host and build on each other: bad input first (nothing may be
installed), then site.yml -> service active -> /healthz across the veth -> a campaign queued
on the host is sent by the agent -> /metrics and a real Prometheus (file_sd from the role) see
it -> a second run changes nothing -> verify.yml -> a config change restarts the agent exactly
once -> a broken upgrade, an unreachable database and a relay refusing AUTH each fail the host
with the explanation and leave the last good release and configuration running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.tuner.conftest import BIN, RECAP, REPO, NspawnHost, Run

from .conftest import AGENT_PORT, CONTROLLER_IP, GUEST_IP, NAME, Peer, free_port

pytestmark = [pytest.mark.testhost, pytest.mark.slow]

UNIT = "mailpacer-agent.service"
DATA = "/var/lib/mailpacer/agent"
DB = f"sqlite:///{DATA}/ledger.db"
AGENT_URL = f"http://{GUEST_IP}:{AGENT_PORT}"
MAILPACER = "/opt/mailpacer/current/venv/bin/mailpacer"
RECIPIENTS = 40


@dataclass
class Deployment:
    host: NspawnHost
    vars_file: Path
    variables: dict[str, object]
    prom_dir: Path
    source_dir: Path

    def write_vars(self, **changes: object) -> None:
        self.variables.update(changes)
        self.vars_file.write_text(yaml.safe_dump(self.variables))

    def run(self, playbook: str, *args: str) -> Run:
        started = time.monotonic()
        run = self.host.playbook(playbook, "-e", f"@{self.vars_file}", *args, timeout=900)
        print(f"{playbook} {' '.join(args)}: rc={run.rc} in {time.monotonic() - started:.0f}s")
        return run

    def current_release(self) -> str:
        return self.host.ssh("readlink -f /opt/mailpacer/current").strip()

    def last_good_release(self) -> str:
        return self.host.ssh("readlink -f /opt/mailpacer/last-good").strip()

    def unit(self, *props: str) -> dict[str, str]:
        out = self.host.ssh(f"systemctl show {UNIT} -p {','.join(props)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def starts_since(self, since: float) -> int:
        out = self.host.ssh(f"journalctl -u {UNIT} --since @{int(since)} -o cat --no-pager")
        return sum(1 for line in out.splitlines() if line.startswith(f"Started {UNIT}"))


def recap(run: Run) -> dict[str, dict[str, int]]:
    """PLAY RECAP per host (the run has two: the sender and localhost, the Prometheus server)."""
    found = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
             for m in RECAP.finditer(run.out)}  # fmt: skip
    assert found, f"no PLAY RECAP in output:\n{run.out[-3000:]}"
    return found


def changes(run: Run) -> dict[str, int]:
    return {host: counts["changed"] for host, counts in recap(run).items()}


def changed_tasks(run: Run) -> str:
    """The tasks that reported a change, for assertion messages."""
    found, task = [], ""
    for line in run.out.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip("* ")
        elif line.startswith("changed:"):
            found.append(f"{task} -> {line}")
    return "\n".join(found)


def changed(run: Run, host: str = NAME) -> int:
    return recap(run)[host]["changed"]


def copy_source(target: Path) -> Path:
    """The parts of the work tree the wheel is built from."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(
        REPO / "agent", target / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return target


@pytest.fixture(scope="module")
def deployment(
    deployhost: NspawnHost, sink: Peer, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    work = tmp_path_factory.mktemp("deploy")
    prom_dir = work / "prometheus"
    # the controller is the Prometheus server of this fleet (group `prometheus`)
    inventory = work / "inventory.ini"
    inventory.write_text(
        deployhost.inventory.read_text()
        + "\n[prometheus]\nlocalhost ansible_connection=local ansible_become=false "
        f"ansible_python_interpreter={BIN / 'python'}\n"
    )
    host = dataclasses.replace(deployhost, inventory=inventory)
    promtool = shutil.which("promtool") or ""
    deployment = Deployment(
        host=host,
        vars_file=work / "vars.yml",
        variables={},
        prom_dir=prom_dir,
        # a snapshot, so that edits to the work tree during the run cannot change the release
        source_dir=copy_source(work / "source"),
    )
    deployment.write_vars(
        mailpacer_agent_db=DB,
        mailpacer_agent_relays=[{"url": f"smtp://{CONTROLLER_IP}:{sink.port}"}],
        mailpacer_agent_source_dir=str(deployment.source_dir),
        mailpacer_agent_health_timeout=30,
        mailpacer_prometheus_file_sd_path=str(prom_dir / "file_sd" / "mailpacer.yml"),
        mailpacer_prometheus_rules_path=str(prom_dir / "rules" / "mailpacer-alerts.yml"),
        mailpacer_prometheus_dashboard_path=str(prom_dir / "dashboards" / "mailpacer.json"),
        mailpacer_prometheus_promtool=promtool,
        mailpacer_prometheus_labels={"fleet": "e2e"},
    )
    return deployment


def nothing_installed(host: NspawnHost) -> bool:
    return host.ssh(
        "ls /opt/mailpacer /etc/mailpacer /etc/systemd/system/mailpacer-agent.service 2>&1 "
        "| grep -vc 'No such file' || true"
    ).strip() in ("", "0")


# --- bad input: the assert phase names what is missing, before anything is installed


def test_missing_database_url_fails_before_any_change(deployment: Deployment) -> None:
    db = deployment.variables.pop("mailpacer_agent_db")
    try:
        deployment.write_vars()
        run = deployment.run("deploy.yml")
    finally:
        deployment.write_vars(mailpacer_agent_db=db)
    assert run.rc != 0, run.out[-3000:]
    assert "mailpacer_agent_db (the ledger database URL) is required" in run.out
    assert changed(run) == 0
    assert nothing_installed(deployment.host)


def test_missing_relay_and_password_in_url_fail_before_any_change(deployment: Deployment) -> None:
    run = deployment.run("deploy.yml", "-e", '{"mailpacer_agent_relays": []}')
    assert run.rc != 0, run.out[-3000:]
    assert "mailpacer_agent_relays (the SMTP relays) is required" in run.out
    run = deployment.run(
        "deploy.yml", "-e", '{"mailpacer_agent_relays": [{"url": "smtp://u:secret@relay:25"}]}'
    )
    assert run.rc != 0, run.out[-3000:]
    assert "without a password" in run.out
    assert "secret" not in run.out.replace("without a password", "")
    assert nothing_installed(deployment.host)


def test_check_mode_on_a_fresh_host_shows_the_plan_and_installs_nothing(
    deployment: Deployment,
) -> None:
    run = deployment.run("deploy.yml", "--check", "--diff")
    assert run.rc == 0, run.out[-5000:]
    plan = [
        "Install | check mode, would install 0.1.0-",
        f'+db = "{DB}"',
        "+Type=notify",
        "+ProtectSystem=strict",
        f"+ExecStart={MAILPACER} run --config /etc/mailpacer/agent.toml",
    ]
    missing = [line for line in plan if line not in run.out]
    assert missing == [], run.out[-5000:]
    assert nothing_installed(deployment.host)


# --- site.yml: tune + deploy, a healthy agent


def test_site_converges_and_the_agent_runs(deployment: Deployment) -> None:
    run = deployment.run("site.yml")
    assert run.rc == 0, run.out[-5000:]
    assert changed(run) > 0
    props = deployment.unit(
        "ActiveState", "SubState", "Type", "User", "NoNewPrivileges", "ProtectSystem",
        "PrivateTmp", "CapabilityBoundingSet", "RestrictAddressFamilies", "WatchdogUSec",
        "RequiresMountsFor", "LimitNOFILE", "LimitNPROC",
    )  # fmt: skip
    assert props["ActiveState"] == "active", props
    assert props["SubState"] == "running"
    assert props["Type"] == "notify"
    assert props["User"] == "mailpacer"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert set(props["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert props["WatchdogUSec"] == "30s"
    assert "/var/cache/mailpacer-scratch" in props["RequiresMountsFor"]
    assert props["LimitNOFILE"] == "262144"  # the balanced profile (configured; PID 1 clamps)
    # the release is complete, current and remembered as the last good one
    release = deployment.current_release()
    assert release.startswith("/opt/mailpacer/releases/0.1.0-")
    assert deployment.last_good_release() == release
    marker = json.loads(deployment.host.ssh(f"cat {release}/.mailpacer-release.json"))
    assert marker["release"] == Path(release).name
    # the configuration holds no secret and is readable by the agent's group only
    assert deployment.host.ssh("stat -c '%U:%G %a' /etc/mailpacer/agent.toml").strip() == (
        "root:mailpacer 640"
    )


def test_healthz_and_readyz_across_the_veth(deployment: Deployment) -> None:
    health = httpx.get(f"{AGENT_URL}/healthz", timeout=5)
    assert health.status_code == 200, health.text
    ready = httpx.get(f"{AGENT_URL}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text


def test_the_agent_sends_a_campaign_to_the_sink(deployment: Deployment, sink: Peer) -> None:
    host = deployment.host
    rows = "\n".join(f"r{i}@example.com,Reader{i}" for i in range(RECIPIENTS))
    host.ssh(
        f"install -d -o mailpacer -g mailpacer -m 0750 {DATA}/e2e/template && cd {DATA}/e2e && "
        "printf 'Hello {{ name }}\\n' >template/subject.j2 && "
        "printf 'Dear {{ name }},\\nsent by the deployed agent.\\n' >template/body.txt.j2 && "
        f"printf 'email,name\\n{rows}\\n' >list.csv && chown -R mailpacer:mailpacer {DATA}/e2e"
    )
    started = time.monotonic()
    host.ssh(
        f"cd {DATA} && runuser -u mailpacer -- {MAILPACER} campaign create e2e --db {DB} "
        f"--template {DATA}/e2e/template --from 'E2E <e2e@example.com>' "
        f"--recipients {DATA}/e2e/list.csv"
    )
    deadline = started + 90
    while len(sink.received()) < RECIPIENTS and time.monotonic() < deadline:
        time.sleep(1)
    print(
        f"{len(sink.received())} messages in the sink "
        f"{time.monotonic() - started:.1f}s after create"
    )
    assert len(sink.received()) == RECIPIENTS
    first = sink.received()[0].read_text(errors="replace")
    assert "sent by the deployed agent" in first
    status = json.loads(
        host.ssh(f"cd {DATA} && runuser -u mailpacer -- {MAILPACER} status --db {DB} --json")
    )
    assert '"sent": 40' in json.dumps(status), status


def test_metrics_show_the_campaign(deployment: Deployment) -> None:
    metrics = httpx.get(f"{AGENT_URL}/metrics", timeout=5).text
    sent = re.search(
        r'^mailpacer_messages_total\{[^}]*campaign="e2e"[^}]*result="sent"[^}]*\} (\S+)$',
        metrics,
        re.M,
    )
    assert sent, metrics[:3000]
    assert float(sent.group(1)) == RECIPIENTS


def test_prometheus_wiring(deployment: Deployment, tmp_path: Path) -> None:
    file_sd = yaml.safe_load((deployment.prom_dir / "file_sd" / "mailpacer.yml").read_text())
    assert file_sd == [
        {
            "targets": [f"{GUEST_IP}:{AGENT_PORT}"],
            "labels": {"instance": NAME, "fleet": "e2e"},
        }
    ]
    rules = deployment.prom_dir / "rules" / "mailpacer-alerts.yml"
    assert rules.read_text() == (REPO / "templates/prometheus/alerts.yml").read_text()
    dashboard = deployment.prom_dir / "dashboards" / "mailpacer.json"
    assert json.loads(dashboard.read_text())["uid"] == "mailpacer-agents"
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        reason = "prometheus not installed (tests/setup/install-prometheus.sh)"
        if os.environ.get("MAILPACER_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{reason}; MAILPACER_REQUIRE_PROMETHEUS=1 requires it")
        pytest.skip(reason)
    # a real Prometheus reads the role's file_sd file and rules and scrapes the agent
    port = free_port("127.0.0.1")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n  - job_name: mailpacer\n"
        f"    file_sd_configs: [{{files: [{deployment.prom_dir / 'file_sd' / 'mailpacer.yml'}]}}]\n"
    )
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        query = f'mailpacer_messages_total{{job="mailpacer",instance="{NAME}",result="sent"}}'
        deadline = time.monotonic() + 30
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5
                ).json()
            except httpx.HTTPError:
                continue
            result = answer["data"]["result"]
        assert result, "Prometheus never scraped the agent through the role's file_sd file"
        assert float(result[0]["value"][1]) == RECIPIENTS  # type: ignore[index]
        assert result[0]["metric"]["fleet"] == "e2e"  # type: ignore[index]
    finally:
        server.terminate()
        server.wait(10)


def test_second_site_run_changes_nothing(deployment: Deployment) -> None:
    since = time.time()
    run = deployment.run("site.yml")
    assert run.rc == 0, run.out[-5000:]
    assert changes(run) == {NAME: 0, "localhost": 0}, changed_tasks(run)
    assert deployment.starts_since(since) == 0


def test_check_mode_on_the_deployed_host_changes_nothing(deployment: Deployment) -> None:
    run = deployment.run("deploy.yml", "--check", "--diff")
    assert run.rc == 0, run.out[-5000:]
    assert changes(run) == {NAME: 0, "localhost": 0}, changed_tasks(run)


def test_verify_checks_the_agent(deployment: Deployment) -> None:
    run = deployment.run("verify.yml")
    assert run.rc == 0, run.out[-5000:]
    assert changed(run) == 0
    assert "/readyz 200 and mailpacer doctor passed" in run.out
    assert "active (running) as mailpacer, Type=notify" in run.out


def test_a_config_change_restarts_the_agent_exactly_once(deployment: Deployment) -> None:
    before = deployment.unit("InvocationID", "MainPID")
    since = time.time()
    deployment.write_vars(mailpacer_agent_log_level="debug", mailpacer_agent_max_campaigns=2)
    run = deployment.run("deploy.yml")
    assert run.rc == 0, run.out[-5000:]
    assert changed(run) > 0
    after = deployment.unit("InvocationID", "MainPID", "ActiveState")
    assert after["ActiveState"] == "active"
    assert after["InvocationID"] != before["InvocationID"]
    assert deployment.starts_since(since) == 1
    assert 'log_level = "debug"' in deployment.host.ssh("cat /etc/mailpacer/agent.toml")


# --- failures: the host fails with the explanation, the last good release keeps running


def broken_source(base: Path) -> Path:
    """The same code, except that `mailpacer run` exits at once: a release that installs and
    passes its smoke test but can never become ready."""
    source = copy_source(base)
    (source / "agent/mailpacer/_broken_for_tests.py").write_text(
        "import sys\n\nfrom mailpacer.cli import main as _main\n\n\n"
        "def main():\n"
        "    if sys.argv[1:2] == ['run']:\n"
        "        sys.exit('mailpacer run: this build is broken on purpose (tests/deploy)')\n"
        "    return _main()\n"
    )
    pyproject = source / "pyproject.toml"
    text = pyproject.read_text()
    assert 'mailpacer = "mailpacer.cli:main"' in text
    pyproject.write_text(
        text.replace(
            'mailpacer = "mailpacer.cli:main"', 'mailpacer = "mailpacer._broken_for_tests:main"'
        )
    )
    return source


def test_a_broken_upgrade_fails_health_and_rolls_back(
    deployment: Deployment, tmp_path: Path
) -> None:
    good = deployment.current_release()
    run = deployment.run(
        "deploy.yml", "-e", f"mailpacer_agent_source_dir={broken_source(tmp_path / 'src')}"
    )
    assert run.rc != 0, run.out[-5000:]
    assert "this build is broken on purpose" in run.out  # the agent's own words, from the journal
    assert f"ROLLED BACK to release {Path(good).name}" in run.out
    assert "it is running and ready again" in run.out
    assert deployment.current_release() == good
    assert deployment.last_good_release() == good
    broken = deployment.host.ssh("ls /opt/mailpacer/releases").split()
    assert len(broken) == 2  # installed completely, not active
    assert deployment.unit("ActiveState")["ActiveState"] == "active"
    assert httpx.get(f"{AGENT_URL}/healthz", timeout=5).status_code == 200


def test_an_unreachable_database_fails_with_the_doctors_explanation(
    deployment: Deployment,
) -> None:
    good_config = deployment.host.ssh("cat /etc/mailpacer/agent.toml")
    run = deployment.run(
        "deploy.yml",
        "-e",
        f"mailpacer_agent_db=mysql+pymysql://mailpacer@{CONTROLLER_IP}:1/mailpacer",
    )
    assert run.rc != 0, run.out[-5000:]
    assert "mailpacer doctor (exit 1)" in run.out, run.out[-5000:]
    assert re.search(r"✘ database .*(refused|Can't connect)", run.out), run.out[-5000:]
    assert "it is running and ready again" in run.out
    assert "the new configuration was not kept" in run.out
    assert deployment.host.ssh("cat /etc/mailpacer/agent.toml") == good_config
    assert httpx.get(f"{AGENT_URL}/readyz", timeout=5).status_code == 200


def test_a_relay_refusing_auth_fails_with_the_doctors_explanation(
    deployment: Deployment, refusing_relay: Peer
) -> None:
    relays = json.dumps(
        {
            "mailpacer_agent_relays": [
                {
                    "url": f"smtp://{CONTROLLER_IP}:{refusing_relay.port}?allow_plain_auth=true",
                    "username": "mailer",
                    "password": "wrong-password-e2e",
                }
            ]
        }
    )
    run = deployment.run("deploy.yml", "-e", relays)
    assert run.rc != 0, run.out[-5000:]
    assert "mailpacer doctor (exit 1)" in run.out, run.out[-5000:]
    assert re.search(r"✘ relay .*authentication failed: 535", run.out), run.out[-5000:]
    assert "wrong-password-e2e" not in run.out  # no_log, and the doctor masks it
    assert "it is running and ready again" in run.out
    assert httpx.get(f"{AGENT_URL}/readyz", timeout=5).status_code == 200
    # the last good secrets are back: the refused relay's password file is not used
    assert f"{CONTROLLER_IP}:{refusing_relay.port}" not in deployment.host.ssh(
        "cat /etc/mailpacer/agent.toml"
    )


def test_after_the_failures_the_good_inventory_changes_nothing(deployment: Deployment) -> None:
    since = time.time()
    run = deployment.run("deploy.yml")
    assert run.rc == 0, run.out[-5000:]
    assert changes(run) == {NAME: 0, "localhost": 0}, changed_tasks(run)
    assert deployment.starts_since(since) == 0
