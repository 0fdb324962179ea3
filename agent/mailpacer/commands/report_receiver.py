"""`mailpacer report-receiver`: the reference receiver as a foreground process."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from mailpacer.commands import UsageError

__all__ = ["ReceiverOptions", "run_report_receiver"]


@dataclass(frozen=True, slots=True)
class ReceiverOptions:
    listen: str
    secret_file: Path
    db: str
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tolerance: float = 300.0


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8088")
    return host, int(port)


def _secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"--secret-file {str(path)!r}: {exc.strerror or exc}") from None
    if len(secret) < 16:
        raise UsageError(
            f"--secret-file {str(path)!r}: the secret must be at least 16 bytes "
            f"(it has {len(secret)}); e.g. `openssl rand -hex 32 > {path}`"
        )
    return secret


def _db_path(url: str) -> Path:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise UsageError(f"--db {url!r}: expected sqlite:///path/to/receiver.db")
    path = Path(url[len(prefix) :])
    if not path.parent.is_dir():
        raise UsageError(f"--db {url!r}: directory {str(path.parent)!r} does not exist")
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a bind failure (hypercorn raises it inside its own nursery)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


def _say(line: str) -> None:
    print(f"report-receiver: {line}", flush=True)


async def _main(options: ReceiverOptions, secret: bytes, db: Path) -> None:
    from mailpacer.report.receiver import ReceiverApp, ReceiverStore, serve_receiver

    try:
        store = ReceiverStore(db)
    except Exception as exc:  # sqlite3 errors: not a database, unwritable, ...
        raise UsageError(f"--db {options.db!r}: {exc}") from None
    app = ReceiverApp(secret, store, tolerance=options.tolerance, on_progress=_say)
    host, port = _listen(options.listen)
    bind = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                try:
                    urls = await nursery.start(
                        partial(
                            serve_receiver,
                            app,
                            bind,
                            certfile=str(options.tls_cert) if options.tls_cert else None,
                            keyfile=str(options.tls_key) if options.tls_key else None,
                        )
                    )
                except (OSError, BaseExceptionGroup) as exc:
                    failure = _os_error(exc)
                    if failure is None:
                        raise
                    raise UsageError(
                        f"cannot listen on {options.listen}: {failure.strerror or failure}"
                    ) from None
                _say(f"listening on {urls[0]}/v1/progress, storing in {db}")
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    print(
        f"report-receiver: stopped ({app.accepted:,} requests accepted, {app.rejected:,} rejected)",
        file=sys.stderr,
    )


def run_report_receiver(options: ReceiverOptions) -> int:
    _listen(options.listen)
    secret = _secret(options.secret_file)
    db = _db_path(options.db)
    if bool(options.tls_cert) != bool(options.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for tls in (options.tls_cert, options.tls_key):
        if tls is not None and not tls.is_file():
            raise UsageError(f"{str(tls)!r}: no such file")
    try:
        trio.run(_main, options, secret, db)
    except BaseExceptionGroup as group:
        usage, rest = group.split(UsageError)
        if usage is not None and rest is None:
            raise usage.exceptions[0] from None
        raise
    return 0
