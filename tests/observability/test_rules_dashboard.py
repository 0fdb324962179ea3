"""templates/prometheus: alert rules checked and unit-tested with promtool; the Grafana
dashboard is valid JSON and every metric it or the rules use is one the agent exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailpacer.hoststate import read_host_state
from mailpacer.metrics import DatabaseStatus, Metrics

from .conftest import need_promtool

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "prometheus"
ALERTS = TEMPLATES / "alerts.yml"
DASHBOARD = TEMPLATES / "grafana-dashboard.json"
PROMETHEUS_OWN = {"up"}


class _Stats:
    def __init__(self) -> None:
        self.name = "spring"
        self.counts = {"pending": 10, "deferred": 1, "active": 2}


def exported_names() -> set[str]:
    """Every sample name the agent can export, with all in-memory state populated."""
    metrics = Metrics()
    metrics.messages.labels("spring", "sent").inc()
    metrics.connections.labels("smtp://r:25").inc()
    metrics.connect_failures.labels("smtp://r:25").inc()
    metrics.campaign_remaining.labels("spring").set(1)
    metrics.campaign_eta_seconds.labels("spring").set(1)
    metrics.guard_tripped.labels("spring", "consecutive_failures").set(0)
    metrics.relays.register("smtp://r:25")
    metrics.watch_campaign(_Stats())
    metrics.database = DatabaseStatus("sqlite:///x", up=True, latency_seconds=0.001,
                                      last_success=1.0)  # fmt: skip
    from mailpacer.hoststate import disk_state

    metrics.disks["/tmp"] = disk_state("/tmp")
    host = read_host_state(scratch=Path("/tmp"))
    host.tuning_profile = "balanced"
    host.tuning_present = True
    host.tuning_counts = {"applied": 12, "skipped": 2, "unsupported": 1, "not_applicable": 1}
    metrics.host = host
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(mailpacer_[a-z0-9_]+)", expr)) | (
        {"up"} if re.search(r"\bup\{", expr) else set()
    )


def test_promtool_check_rules() -> None:
    done = subprocess.run([need_promtool(), "check", "rules", str(ALERTS)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_promtool_test_rules() -> None:
    done = subprocess.run([need_promtool(), "test", "rules", "alerts_test.yml"], cwd=TEMPLATES,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests are real: a test expecting an alert that cannot fire fails."""
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "t.yml").write_text(
        "rule_files: [alerts.yml]\nevaluation_interval: 1m\ntests:\n"
        "  - interval: 1m\n    input_series:\n"
        "      - series: 'up{job=\"mailpacer\", instance=\"a\"}'\n        values: '1 1 1 1'\n"
        "    alert_rule_test:\n      - eval_time: 3m\n        alertname: MailpacerAgentDown\n"
        "        exp_alerts: [{exp_labels: {severity: critical, job: mailpacer, instance: a}}]\n"
    )
    done = subprocess.run([need_promtool(), "test", "rules", "t.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr


def test_alert_rules_use_only_exported_metrics() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    used = metric_names(ALERTS.read_text())
    assert used, "no metric found in the rules"
    assert used <= exported, f"not exported by the agent: {sorted(used - exported)}"


def test_grafana_dashboard_is_valid_and_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mailpacer-agents"
    panels = dashboard["panels"]
    assert len(panels) >= 10
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exported = exported_names() | PROMETHEUS_OWN
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            used |= names
    assert used <= exported, f"not exported by the agent: {sorted(used - exported)}"
    # the headline series are on the dashboard
    for name in ("mailpacer_messages_total", "mailpacer_relay_breaker_state",
                 "mailpacer_ledger_backlog_recipients", "mailpacer_event_loop_lag_seconds_bucket",
                 "mailpacer_host_tcp_congestion_control_info"):  # fmt: skip
        assert name in used


def test_exported_names_include_the_new_families() -> None:
    names = exported_names()
    for name in ("mailpacer_ledger_backlog_recipients", "mailpacer_relay_breaker_state",
                 "mailpacer_database_up", "mailpacer_host_nofile_limit",
                 "mailpacer_host_scratch_size_bytes", "mailpacer_event_loop_lag_seconds_count",
                 "mailpacer_reporter_backlog_events", "mailpacer_disk_free_bytes"):  # fmt: skip
        assert name in names, name
