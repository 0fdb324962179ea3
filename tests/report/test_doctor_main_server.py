"""`mailpacer doctor` checks the main server: reachable, and our signature accepted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

SECRET = b"doctor-checks-the-main-server-secret"


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailpacer", "doctor", "--json", "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_doctor_posts_a_signed_empty_report(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not-the-receivers-secret-at-all!")
    receiver = subprocess.Popen(
        [sys.executable, "-m", "mailpacer", "report-receiver", "--listen", "127.0.0.1:0",
         "--secret-file", str(secret), "--db", f"sqlite:///{tmp_path / 'r.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        url = receiver.stdout.readline().split()[3].rstrip(",")
        good = doctor("--report-url", url, "--report-secret-file", str(secret))
        checks = {c["group"]: c for c in json.loads(good.stdout)["checks"]}
        assert checks["report"]["status"] == "ok", checks["report"]
        assert "signature accepted" in checks["report"]["detail"]
        bad = doctor("--report-url", url, "--report-secret-file", str(wrong))
        checks = {c["group"]: c for c in json.loads(bad.stdout)["checks"]}
        assert bad.returncode == 1
        assert checks["report"]["status"] == "fail"
        assert "signature rejected" in checks["report"]["detail"]
        assert SECRET.decode() not in bad.stdout + bad.stderr
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(10)
        if receiver.stdout is not None:
            receiver.stdout.close()
    gone = doctor("--report-url", url, "--report-secret-file", str(secret))
    checks = {c["group"]: c for c in json.loads(gone.stdout)["checks"]}
    assert checks["report"]["status"] == "fail"
    assert "ConnectError" in checks["report"]["detail"] or "refused" in checks["report"]["detail"]
