"""Rendering in worker processes, so personalization uses the host's other cores.

Rendering (Jinja2, ~340 µs) and MIME building dominate a personalized message's CPU cost;
the Trio process keeps the SMTP connections and the ledger. Each worker process builds the
same message factory from the campaign's spec once (templates compiled, DKIM key loaded),
then renders chunks of claimed rows; what comes back is the wire payload, or the reason a
row cannot be rendered. Workers are started with ``forkserver`` (never forked from the
threaded Trio process), and exit on their own when the sender is killed.

How many workers: ``render_workers("auto")`` is one fewer than the CPUs this process may run
on (the Trio process keeps one), at most 4, so 0 on a one-CPU host; an explicit number wins.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import trio

from mailpacer.campaign_spec import CampaignSpec, build_factory
from mailpacer.message.factory import MessageFactory, decode_variables
from mailpacer.message.headers import HeaderInjectionError
from mailpacer.message.render import RenderError
from mailpacer.unsubscribe.tokens import UnsubscribeSettings

__all__ = ["MAX_RENDER_WORKERS", "RenderJob", "RenderPool", "Rendered", "render_workers"]

MAX_RENDER_WORKERS = 64
AUTO_CAP = 4  # beyond this the single Trio process, not rendering, is the limit


def render_workers(value: object) -> int:
    """``"auto"`` or an integer 0..64 -> the number of render processes (0: render in the
    sending process). ValueError, with a one-line reason, for anything else."""
    if value == "auto":
        return min(len(os.sched_getaffinity(0)) - 1, AUTO_CAP)
    number: object = value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    if (
        not isinstance(number, int)
        or isinstance(number, bool)
        or not 0 <= number <= MAX_RENDER_WORKERS
    ):
        raise ValueError(
            f"{value!r}: expected auto or a number of processes from 0 to {MAX_RENDER_WORKERS}"
        )
    return number


Row = tuple[int, str, str, int | None]  # recipient id, email, variables (JSON), source row


class Rendered(NamedTuple):
    """One row's result (a tuple: cheap to pickle back from the worker)."""

    recipient_id: int
    error: str | None  # why it cannot be rendered; None when payload is ready
    sender: str = ""
    payload: bytes = b""
    size: int = 0
    eight_bit: bool = False
    smtputf8: bool = False


_factory: MessageFactory | None = None


def _watch_parent() -> None:
    """A SIGKILLed sender never shuts its pool down, and an idle worker would wait on the
    call queue forever (it holds the queue's write end itself; the forkserver lives while its
    children do). The sender's death closes the pipe behind ``parent_process().sentinel``."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)


def _start(
    spec: CampaignSpec,
    verp: tuple[str, bytes] | None,
    unsubscribe: tuple[UnsubscribeSettings, int] | None,
) -> None:
    global _factory
    # Ctrl-C in a terminal and systemd's stop reach the whole process group / cgroup: the
    # sender (or agent) finishes in-flight work and closes the pool; a worker killed first
    # would break the pool under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, name="watch-parent", daemon=True).start()
    return_path = None
    if verp is not None:
        from mailpacer.bounces.verp import Verp

        return_path = Verp(*verp).address
    list_unsubscribe = None
    if unsubscribe is not None:
        settings, campaign_id = unsubscribe
        list_unsubscribe = functools.partial(settings.uris, campaign_id)
    _factory = build_factory(spec, return_path=return_path, list_unsubscribe=list_unsubscribe)


def _ready() -> bool:
    return _factory is not None


def _render(rows: Sequence[Row]) -> list[Rendered]:
    factory = _factory
    assert factory is not None
    wants = factory.uses_variables
    out: list[Rendered] = []
    for rid, email, variables, source_row in rows:
        try:
            message = factory.build(
                rid, email, decode_variables(variables) if wants else {}, source_row=source_row
            )
        except (RenderError, HeaderInjectionError, ValueError) as exc:
            out.append(Rendered(rid, f"message: {exc}"))
            continue
        out.append(
            Rendered(
                rid,
                None,
                message.sender,
                message.payload,
                message.size,
                message.eight_bit,
                message.smtputf8,
            )
        )
    return out


class RenderJob:
    """A chunk of rows being rendered in a worker; waited for without a thread."""

    def __init__(self, future: concurrent.futures.Future[list[Rendered]]) -> None:
        self._future = future
        self._done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._done.set)

        future.add_done_callback(wake)

    async def result(self) -> list[Rendered]:
        try:
            await self._done.wait()
        except BaseException:
            self._future.cancel()
            raise
        return self._future.result()

    def cancel(self) -> None:
        self._future.cancel()


class RenderPool:
    """``await pool.render(rows)``: the rows rendered by ``workers`` processes, in order."""

    def __init__(
        self,
        spec: CampaignSpec,
        workers: int,
        *,
        verp: tuple[str, bytes] | None = None,
        unsubscribe: tuple[UnsubscribeSettings, int] | None = None,
    ) -> None:
        """``verp`` (domain, secret) and ``unsubscribe`` (settings, campaign id) reach the
        workers pickled through the pool's pipe, never as text (logs, command lines)."""
        if workers < 1:
            raise ValueError("a render pool needs at least one worker")
        self.workers = workers
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start,
            initargs=(spec, verp, unsubscribe),
        )
        # Start the workers now (the executor would on first use): their interpreter start,
        # imports and template compilation then overlap the list import, not the send.
        for _ in range(workers):
            self.executor.submit(_ready)

    def submit(self, rows: Sequence[Row]) -> RenderJob:
        """Queue ``rows`` for a worker now; ``await job.result()`` later. Submitting ahead
        keeps the workers busy while the Trio process sends what came back before."""
        return RenderJob(self.executor.submit(_render, rows))

    async def render(self, rows: Sequence[Row]) -> list[Rendered]:
        """The rows rendered by the workers (split between them), in order."""
        if not rows:
            return []
        size = -(-len(rows) // self.workers)
        jobs = [self.submit(rows[i : i + size]) for i in range(0, len(rows), size)]
        results: list[Rendered] = []
        for job in jobs:
            results.extend(await job.result())
        return results

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
