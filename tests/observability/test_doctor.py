"""`mailpacer doctor` against healthy and broken set-ups: the real Postfix smtpd (STARTTLS +
AUTH) with the right and a wrong password, an unreachable relay, a bad database URL, the
private MariaDB, a tuning.json whose sysctl values drifted. Passwords never appear."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from tests.servers.postfix_smtpd import PostfixServer

from .conftest import PrivateMariaDB, Running

WRONG = "Wrong-Pass-123"


def doctor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailpacer", "doctor", "--timeout", "5", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def postfix_url(server: PostfixServer, password: str) -> str:
    return (
        f"smtp+starttls://{server.username}:{quote(password, safe='')}@{server.host}:"
        f"{server.port}?cafile={server.ca_pem_path}"
    )


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tuning(tmp_path: Path, applied: dict[str, str]) -> Path:
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({
        "profile": "balanced",
        "sysctl": {"keys": {"applied": applied, "skipped": {"fs.file-max": "EROFS"},
                            "unsupported": {}, "not_applicable": {}}},
        "limits": {"effective": {"nofile": "1024"}},
    }))  # fmt: skip
    return path


def live(key: str) -> str:
    return " ".join(Path("/proc/sys", key.replace(".", "/")).read_text().split())


def test_healthy_setup_passes(
    tmp_path: Path, postfix_smtpd: PostfixServer, private_mariadb: PrivateMariaDB, sink: Running
) -> None:
    db = private_mariadb.create_database("mp_doctor")
    (tmp_path / "ledger.db").write_bytes(b"")
    cc = live("net.ipv4.tcp_congestion_control")
    tune = tuning(tmp_path, {"net.ipv4.tcp_congestion_control": cc})
    count_before = postfix_smtpd.count()
    done = doctor(
        "--db", db, "--db", f"sqlite:///{tmp_path / 'ledger.db'}",
        "--relay", postfix_url(postfix_smtpd, postfix_smtpd.password),
        "--relay", f"smtp://{sink.address}",
        "--tuning-json", str(tune), "--scratch", "/dev/shm", "--data-dir", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "✘" not in out
    assert f"✔ relay     smtp+starttls://{postfix_smtpd.username}:***@" in out
    assert "connect, EHLO, STARTTLS, AUTH as mailpacer ok in" in out
    assert "nothing sent" in out
    assert "SELECT 1" in out
    assert "mp_doctor" in out
    assert "sysctl drift" in out
    assert "all 1 applied keys have their tuned live value" in out
    assert "profile balanced; sysctl keys: applied 1, skipped 1" in out
    assert postfix_smtpd.password not in out + done.stderr
    assert postfix_smtpd.count() == count_before  # nothing was sent


def test_broken_setups_fail_with_reasons_and_no_password(
    tmp_path: Path, postfix_smtpd: PostfixServer
) -> None:
    tune = tuning(tmp_path, {"net.ipv4.tcp_congestion_control": "no-such-algorithm"})
    port = dead_port()
    done = doctor(
        "--db", "mysql+pymysql://root:Db-Secret-9@127.0.0.1:1/ledger",
        "--db", "nosuchdb://x",
        "--relay", postfix_url(postfix_smtpd, WRONG),
        "--relay", f"smtps://mailer:Relay-Secret-7@127.0.0.1:{port}",
        "--tuning-json", str(tune), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    for secret in ("Db-Secret-9", WRONG, "Relay-Secret-7"):
        assert secret not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    checks = {(c["group"], c["name"]): c for c in report["checks"]}
    print(json.dumps(report, indent=1))
    mysql = checks[("database", "mysql+pymysql://root:***@127.0.0.1:1/ledger")]
    assert mysql["status"] == "fail"
    assert "Can't connect" in mysql["detail"]
    bad = [c for (g, _), c in checks.items() if g == "database" and c["name"] != mysql["name"]]
    assert len(bad) == 1
    assert bad[0]["status"] == "fail"
    wrong = next(c for (g, n), c in checks.items() if g == "relay" and "starttls" in n)
    assert wrong["status"] == "fail"
    assert "535" in wrong["detail"] or "auth" in wrong["detail"].lower()
    dead = checks[("relay", f"smtps://mailer:***@127.0.0.1:{port}")]
    assert dead["status"] == "fail"
    assert "Connection refused" in dead["detail"]
    drift = checks[("host", "sysctl drift")]
    assert drift["status"] == "fail"
    assert "net.ipv4.tcp_congestion_control" in drift["detail"]
    assert checks[("host", "congestion control")]["status"] == "fail"


def test_table_output_and_exit_code_on_failure(tmp_path: Path) -> None:
    done = doctor("--relay", f"smtp://127.0.0.1:{dead_port()}", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("✘ relay")
    assert "failed" in lines[-1]


def test_bad_relay_url_is_a_usage_error(tmp_path: Path) -> None:
    done = doctor("--relay", "ftp://user:Pw-Secret-1@host", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid relay URL")
    assert "Pw-Secret-1" not in done.stderr
    assert done.stdout == ""
