"""A real, private Postfix smtpd for tests: STARTTLS, AUTH PLAIN/LOGIN after TLS, smtps, maildir.

Why a real Postfix: the sender must be proven against a production MTA's TLS, SASL and
pipelining behaviour, not only against aiosmtpd.

Each instance is a separate Postfix configuration directory inside its own temporary directory
(config, queue, data, maildir, maillog); it listens on 127.0.0.1 on two free high ports only and
is started with ``postfix -c DIR start`` and stopped with ``postfix -c DIR stop``, after which any
process still working in its queue directory is killed. /etc/postfix, the system instance and
port 25 are never touched; instances left behind by a killed test run are reaped at the next
start. Mail for every recipient of every domain is delivered by virtual(8) into one maildir,
one file per recipient, so tests can count and read what the server accepted; nothing is relayed.

SASL is Cyrus SASL with a private sasldb (auxprop, created with saslpasswd2) because it needs no
extra daemon (no saslauthd, no Dovecot). Debian packages: postfix, sasl2-bin, libsasl2-modules.
Start-up needs root (Postfix's master must start as root).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
import trustme

HOST = "127.0.0.1"
MYHOSTNAME = "smtp.mailpacer.test"
SASL_REALM = "mailpacer.test"
DEFAULT_USERNAME = "mailpacer"
DEFAULT_PASSWORD = "pacer-Test-pass-1"

# Every instance directory starts with this, so orphans of killed test runs can be found.
_DIR_PREFIX = "mailpacer-postfix-"
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BIND_ATTEMPTS = 5
_LOG_TAIL_LINES = 40
_LOG_PROBLEM_LINES = 20


class PostfixUnavailable(RuntimeError):
    """Postfix cannot run here at all (not root, a package missing); the fixture skips on it."""


class PostfixStartError(RuntimeError):
    """The private Postfix did not start or did not answer; the message carries its maillog."""


@dataclass(frozen=True)
class PostfixServer:
    """Where the running private Postfix listens and how to read the mail it accepted."""

    host: str
    port: int  # plain SMTP with STARTTLS; AUTH only after STARTTLS
    smtps_port: int | None  # implicit TLS ("wrapper mode"), None if not requested
    ca_pem_path: Path  # the test CA that signed the server certificate
    username: str
    password: str
    root: Path  # the instance directory (conf/, queue/, data/, mail/, maillog)
    startup_seconds: float

    @property
    def maildir(self) -> Path:
        """The maildir that receives every recipient's copy."""
        return self.root / "mail" / "sink"

    @property
    def maillog_path(self) -> Path:
        return self.root / "maillog"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server against the test CA (and the IP)."""
        return ssl.create_default_context(cafile=str(self.ca_pem_path))

    def _message_files(self) -> list[Path]:
        files: list[Path] = []
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                files.extend(p for p in (self.maildir / sub).iterdir() if p.is_file())
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def received(self) -> list[bytes]:
        """Delivered messages, oldest first: one per recipient, as sent, preceded by the
        Return-Path (envelope sender), Delivered-To (envelope recipient) and Received headers."""
        out: list[bytes] = []
        for path in self._message_files():
            with contextlib.suppress(FileNotFoundError):  # clear() may race with us
                out.append(path.read_bytes())
        return out

    def count(self) -> int:
        """Number of delivered recipient copies so far."""
        return len(self._message_files())

    def clear(self) -> None:
        """Forget delivered mail, so a test sharing a module-scoped server starts at zero."""
        for path in self._message_files():
            path.unlink(missing_ok=True)

    def maillog(self) -> str:
        """Postfix's own log of this instance (for assertions and failure messages)."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Block until at least n copies are delivered (delivery follows the 250 reply
        asynchronously); raise TimeoutError with the maillog tail otherwise."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(self._count_timeout_message(n, timeout))
            time.sleep(0.02)
        return self.received()

    async def wait_for_count_async(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Trio flavour of wait_for_count, for tests whose sender runs in the same event loop."""
        with trio.move_on_after(timeout):
            while self.count() < n:
                await trio.sleep(0.02)
            return self.received()
        raise TimeoutError(self._count_timeout_message(n, timeout))

    def _count_timeout_message(self, n: int, timeout: float) -> str:
        return (
            f"expected {n} delivered message(s) in {self.maildir} within {timeout}s, "
            f"found {self.count()}\n{_log_tail(self.maillog_path)}"
        )


# --------------------------------------------------------------------------- helpers


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)


def check_prerequisites() -> None:
    """Raise PostfixUnavailable saying exactly what is missing on this machine."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("must run as root (Postfix's master daemon starts as root)")
    for tool, package in (("postfix", "postfix"), ("saslpasswd2", "sasl2-bin")):
        if _which(tool) is None:
            problems.append(f"{tool} not found (Debian package {package})")
    for user in ("postfix", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"user {user!r} does not exist (Debian package postfix / base-passwd)")
    try:
        grp.getgrnam("postdrop")
    except KeyError:
        problems.append("group 'postdrop' does not exist (Debian package postfix)")
    if problems:
        raise PostfixUnavailable("private Postfix unavailable: " + "; ".join(problems))


def _env() -> dict[str, str]:
    """A small, predictable environment (no MAIL_CONFIG/MAIL_DEBUG leaking in from outside)."""
    return {"PATH": _SBIN_PATH, "LANG": "C", "LC_ALL": "C", "TZ": "UTC"}


def _run(
    argv: list[str], *, timeout: float, stdin_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        input=stdin_text,
        stdin=None if stdin_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


def _postfix(conf_dir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    postfix = _which("postfix") or "postfix"
    return _run([postfix, "-c", str(conf_dir), *args], timeout=timeout)


_PROBLEM = re.compile(r": (warning|error|fatal|panic): ")


def _log_lines(maillog: Path, since: int = 0) -> list[str] | None:
    try:
        with maillog.open("rb") as fh:
            fh.seek(since)
            return fh.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None


def _log_tail(maillog: Path, since: int = 0) -> str:
    """The first distinct warnings/fatals (usually the cause) and the last lines of the log."""
    lines = _log_lines(maillog, since)
    if lines is None:
        return f"--- {maillog}: missing (postlogd never ran) ---"
    problems: dict[str, str] = {}
    for line in lines:
        if match := _PROBLEM.search(line):
            problems.setdefault(line[match.start() :], line)
    out = []
    if problems:
        first = list(problems.values())[:_LOG_PROBLEM_LINES]
        out += [f"--- {maillog}: first distinct warnings/errors ---", *first]
    out += [f"--- {maillog}: last {_LOG_TAIL_LINES} lines ---", *lines[-_LOG_TAIL_LINES:]]
    return "\n".join(out)


def _log_has_fatal(maillog: Path, since: int = 0) -> bool:
    return any(
        (m := _PROBLEM.search(line)) and m.group(1) in ("fatal", "panic")
        for line in _log_lines(maillog, since) or []
    )


def _base_dir() -> Path:
    """The temp dir to create instances in: Postfix daemons run as user postfix/nobody and
    must traverse it, which pytest's 0700 /tmp/pytest-of-root is not."""
    base = Path(tempfile.gettempdir()).resolve()
    for part in (base, *base.parents):
        if not part.stat().st_mode & stat.S_IXOTH:
            return Path("/tmp")
    return base


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """True if pid exists and is not a zombie (a sandbox's PID 1 may reap orphans lazily)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def instance_processes(root: Path) -> list[int]:
    """Live processes of the instance in root. Every Postfix daemon (master included) works
    in its queue_directory, so a process whose cwd is that unique directory is ours; unlike
    a pid file or process group this cannot match an unrelated process after pid reuse."""
    queue = str(root / "queue")
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        if cwd in (queue, queue + " (deleted)") and is_running(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _wait_stopped(root: Path, timeout: float) -> list[int]:
    """Poll until the instance has no live process; returns the survivors (if any)."""
    deadline = time.monotonic() + timeout
    while (left := instance_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def _stop_instance(root: Path) -> None:
    """Stop one instance: `postfix stop`, wait until none of its processes is left, SIGKILL
    stragglers; raise only if something survives even that."""
    notes: list[str] = []
    conf = root / "conf"
    if (conf / "main.cf").exists() and instance_processes(root):
        try:
            res = _postfix(conf, "stop", timeout=30)
            notes.append(f"postfix stop: rc={res.returncode} {res.stdout}{res.stderr}".strip())
        except subprocess.TimeoutExpired:
            notes.append("postfix stop: timed out after 30s")
    survivors = _wait_stopped(root, 10)
    if survivors:
        notes.append(f"still running 10s after postfix stop: {survivors}; SIGKILL")
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        survivors = _wait_stopped(root, 5)
    if survivors:
        raise RuntimeError(
            f"could not stop the private Postfix in {root}: pids {survivors} survive SIGKILL\n"
            + "\n".join(notes)
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans() -> None:
    """Stop and delete instances whose owning test process died (e.g. a CI timeout killed
    pytest before its finalizer ran), so they do not pile up holding ports and processes."""
    base = _base_dir()
    for root in base.glob(_DIR_PREFIX + "*"):
        owner = _read_pid(root / "owner.pid")
        if owner is None or _pid_alive(owner):
            continue
        with contextlib.suppress(RuntimeError):
            _stop_instance(root)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------- configuration


def _main_cf(root: Path, *, require_auth: bool) -> str:
    nobody = pwd.getpwnam("nobody")
    # Postfix insists on a reject rule; every domain is "ours", so the second never rejects.
    relay = "reject" if require_auth else "reject_unauth_destination"
    return f"""\
# Private Postfix instance for mailpacer tests, written by tests/servers/postfix_smtpd.py.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = {MYHOSTNAME}
mydomain = {SASL_REALM}
myorigin = $myhostname
inet_interfaces = {HOST}
inet_protocols = ipv4
# explicit, so no interface scan; also exempts the tests from anvil's connection limits
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP mailpacer test Postfix
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0s
# Keep messages as the client sent them (no added Message-Id/Date, no address rewriting).
local_header_rewrite_clients =
in_flow_delay = 0s

# Every recipient of every domain goes into one maildir (one file per recipient copy);
# nothing ever leaves this instance.
virtual_mailbox_domains = static:all
virtual_mailbox_maps = static:sink/
virtual_mailbox_base = {root}/mail
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
local_transport = virtual
default_transport = error:the mailpacer test Postfix never relays
relay_transport = error:the mailpacer test Postfix never relays

# STARTTLS with a certificate from the test CA; AUTH only after TLS.
smtpd_tls_security_level = may
smtpd_tls_chain_files = {root}/conf/tls/server.pem
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
# Upstream reads smtpd.conf from here; Debian's build reads $config_directory/sasl (same dir).
cyrus_sasl_config_path = {root}/conf/sasl
smtpd_sasl_local_domain = {SASL_REALM}
smtpd_sasl_authenticated_header = yes
smtpd_relay_restrictions = permit_sasl_authenticated, {relay}
"""


def _master_cf(port: int, smtps_port: int | None) -> str:
    # No chroot (column 5 = n) so the daemons need no copies of /etc files.
    lines = [
        "# service type private unpriv chroot wakeup maxproc command",
        f"{HOST}:{port} inet n - n - - smtpd",
    ]
    if smtps_port is not None:
        lines.append(
            f"{HOST}:{smtps_port} inet n - n - - smtpd"
            " -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt"
        )
    lines += [
        "pickup    unix  n - n 60    1 pickup",
        "cleanup   unix  n - n -     0 cleanup",
        "qmgr      unix  n - n 300   1 qmgr",
        "tlsmgr    unix  - - n 1000? 1 tlsmgr",
        "rewrite   unix  - - n -     - trivial-rewrite",
        "bounce    unix  - - n -     0 bounce",
        "defer     unix  - - n -     0 bounce",
        "trace     unix  - - n -     0 bounce",
        "verify    unix  - - n -     1 verify",
        "flush     unix  n - n 1000? 0 flush",
        "proxymap  unix  - - n -     - proxymap",
        "showq     unix  n - n -     - showq",
        "error     unix  - - n -     - error",
        "retry     unix  - - n -     - error",
        "discard   unix  - - n -     - discard",
        "virtual   unix  - n n -     - virtual",
        "anvil     unix  - - n -     1 anvil",
        "scache    unix  - - n -     1 scache",
        "postlog   unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(lines) + "\n"


def _write_config(path: Path, text: str) -> None:
    """Write a Postfix config file with an mtime in the past: Postfix re-reads a file younger
    than ~2s until it looks stable (a guard against editors), which would cost 2s per postconf
    call made by `postfix start`."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _write_tls(tls_dir: Path) -> Path:
    """Test CA + server certificate for 127.0.0.1/localhost; returns the CA PEM path."""
    tls_dir.mkdir(mode=0o755)
    ca = trustme.CA(organization_name="mailpacer test CA")
    cert = ca.issue_cert(HOST, "localhost", MYHOSTNAME)
    ca_pem = tls_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server_pem = tls_dir / "server.pem"
    server_pem.touch(mode=0o600)  # smtpd reads its key as root, before dropping privileges
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return ca_pem


def _write_sasl(sasl_dir: Path, username: str, password: str) -> None:
    """Cyrus SASL config + sasldb with one user, readable by the unprivileged smtpd."""
    sasl_dir.mkdir(mode=0o755)
    sasldb = sasl_dir / "sasldb2"
    (sasl_dir / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasldb}\n"
        "mech_list: PLAIN LOGIN\n"
    )
    saslpasswd2 = _which("saslpasswd2") or "saslpasswd2"
    res = _run(
        [saslpasswd2, "-p", "-c", "-f", str(sasldb), "-u", SASL_REALM, username],
        stdin_text=password,
        timeout=30,
    )
    if res.returncode != 0 or not sasldb.exists():
        raise PostfixStartError(
            f"saslpasswd2 failed (rc={res.returncode}): {res.stdout}{res.stderr}".strip()
        )
    os.chown(sasldb, 0, grp.getgrnam("postfix").gr_gid)
    sasldb.chmod(0o640)


def _prepare(root: Path, *, username: str, password: str, require_auth: bool) -> Path:
    """Lay out the instance directory; returns the CA PEM path."""
    root.chmod(0o755)
    (root / "owner.pid").write_text(f"{os.getpid()}\n")
    conf = root / "conf"
    conf.mkdir(mode=0o755)
    (root / "queue").mkdir(mode=0o755)  # subdirectories: `postfix start` creates them
    postfix_pw = pwd.getpwnam("postfix")
    nobody = pwd.getpwnam("nobody")
    (root / "data").mkdir(mode=0o700)
    os.chown(root / "data", postfix_pw.pw_uid, postfix_pw.pw_gid)
    (root / "mail").mkdir(mode=0o700)
    os.chown(root / "mail", nobody.pw_uid, nobody.pw_gid)
    ca_pem = _write_tls(conf / "tls")
    _write_sasl(conf / "sasl", username, password)
    _write_config(conf / "main.cf", _main_cf(root, require_auth=require_auth))
    return ca_pem


def _probe(port: int, ca_pem: Path, *, implicit_tls: bool, timeout: float) -> None:
    """One SMTP conversation proving the listener is usable: 220, TLS, AUTH PLAIN LOGIN."""
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    client: smtplib.SMTP
    if implicit_tls:
        client = smtplib.SMTP_SSL(HOST, port, timeout=timeout, context=ctx)
    else:
        client = smtplib.SMTP(HOST, port, timeout=timeout)
    with client:
        if not implicit_tls:
            client.ehlo()
            client.starttls(context=ctx)
        client.ehlo()
        mechs = set(client.esmtp_features.get("auth", "").upper().split())
        if not {"PLAIN", "LOGIN"} <= mechs:
            raise PostfixStartError(
                f"port {port}: AUTH PLAIN LOGIN not offered after TLS (got {sorted(mechs)}); "
                "are the Cyrus SASL plugins installed (Debian package libsasl2-modules)?"
            )


def _wait_ready(server: PostfixServer, deadline: float, log_offset: int) -> None:
    """Wait (bounded) until every listener greets with 220 and offers TLS + AUTH. Connection
    errors are retried; TLS errors and daemon fatals are configuration errors: fail at once."""
    ports = [(server.port, False)]
    if server.smtps_port is not None:
        ports.append((server.smtps_port, True))
    for port, implicit in ports:
        while True:
            try:
                _probe(port, server.ca_pem_path, implicit_tls=implicit, timeout=3)
                break
            except (OSError, smtplib.SMTPException) as exc:
                permanent = isinstance(exc, ssl.SSLError | smtplib.SMTPNotSupportedError)
                if permanent or _log_has_fatal(server.maillog_path, log_offset):
                    reason = "failed its first SMTP conversation"
                elif time.monotonic() > deadline:
                    reason = "did not become ready in time"
                else:
                    time.sleep(0.05)
                    continue
                raise PostfixStartError(
                    f"private Postfix on {HOST}:{port} {reason}: {exc!r}\n"
                    + _log_tail(server.maillog_path, log_offset)
                ) from exc


# ----------------------------------------------------------------------- public API


@contextlib.contextmanager
def running_postfix(
    artifacts_dir: Path | None = None,
    *,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    smtps: bool = True,
    require_auth: bool = True,
    start_timeout: float = 30.0,
) -> Iterator[PostfixServer]:
    """Start a private Postfix, yield where it listens, always stop it and delete its files.

    The instance lives in its own directory under the system temp dir (the daemons cannot
    traverse pytest's tmp_path); its maillog is copied to ``artifacts_dir`` when it stops.
    With require_auth, only SASL-authenticated clients may send (as on a submission port).
    """
    check_prerequisites()
    reap_orphans()
    started = time.monotonic()
    deadline = started + start_timeout
    root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=_base_dir()))
    conf = root / "conf"
    try:
        ca_pem = _prepare(root, username=username, password=password, require_auth=require_auth)
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            ports = _free_ports(2)
            port, smtps_port = ports[0], (ports[1] if smtps else None)
            _write_config(conf / "master.cf", _master_cf(port, smtps_port))
            log_offset = (root / "maillog").stat().st_size if (root / "maillog").exists() else 0
            try:
                res = _postfix(conf, "start", timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise PostfixStartError(
                    f"`postfix -c {conf} start` did not finish within {start_timeout}s\n"
                    + _log_tail(root / "maillog", log_offset)
                ) from exc
            if res.returncode == 0:
                break
            log = _log_tail(root / "maillog", log_offset)
            if "Address already in use" in log and attempt < _BIND_ATTEMPTS:
                continue  # another process took one of our ports in between: pick new ones
            raise PostfixStartError(
                f"`postfix -c {conf} start` failed (rc={res.returncode}, attempt {attempt})\n"
                f"--- postfix output ---\n{res.stdout}{res.stderr}\n{log}"
            )
        server = PostfixServer(
            host=HOST,
            port=port,
            smtps_port=smtps_port,
            ca_pem_path=ca_pem,
            username=username,
            password=password,
            root=root,
            startup_seconds=0.0,
        )
        _wait_ready(server, deadline, log_offset)
        server = replace(server, startup_seconds=time.monotonic() - started)
        yield server
    finally:
        try:
            _stop_instance(root)
        finally:
            if artifacts_dir is not None and (root / "maillog").exists():
                with contextlib.suppress(OSError):
                    shutil.copyfile(root / "maillog", artifacts_dir / "postfix-maillog")
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix_available() -> None:
    """Skip when Postfix cannot run here, unless MAILPACER_REQUIRE_POSTFIX=1 (then fail), so
    a developer machine without the packages skips while CI cannot silently lose the tests."""
    try:
        check_prerequisites()
    except PostfixUnavailable as exc:
        if os.environ.get("MAILPACER_REQUIRE_POSTFIX") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def postfix_smtpd(
    postfix_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostfixServer]:
    """A private Postfix shared by one test module (start-up takes about half a second).

    Tests that count mail should call ``clear()`` first, since the module shares the maildir;
    the maillog is kept in the module's pytest temp dir as ``postfix-maillog``.
    """
    with running_postfix(tmp_path_factory.mktemp("postfix")) as server:
        yield server
