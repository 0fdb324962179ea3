"""``/unsubscribe/TOKEN``: the one-click endpoint of the agent's List-Unsubscribe links.

- ``POST`` (RFC 8058: a mailbox provider's one-click, or the button of the page below)
  puts the token's address on the suppression list. No credentials: the token's signature
  is the authorisation. The body (``List-Unsubscribe=One-Click``, form-encoded or
  multipart) is read, at most ``MAX_BODY`` bytes, and not required. A second POST is
  answered 200 as well and changes nothing.
- ``GET`` (and ``HEAD``) never unsubscribe, because link scanners and previews fetch every
  URL of a message: they answer a small page whose button sends the POST.
- A malformed, forged or other secret's token: 404 (plain text), nothing written.
- The ledger unreachable, frozen or too slow (``timeout``): 503 with ``Retry-After``; the
  request never waits longer than that. Nothing unexpected reaches the client as a
  traceback (500, plain text; the log has the details).
"""

from __future__ import annotations

import html
import logging

import trio

from mailpacer.asgi import Receive, Scope, Send
from mailpacer.ledger.store import LedgerError
from mailpacer.ledger.threaded import is_outage
from mailpacer.unsubscribe import Unsubscribe, UnsubscribeRecorder, UnsubscribeSettings

__all__ = ["PATH_PREFIX", "UnsubscribeEndpoint"]

log = logging.getLogger("mailpacer.http")

PATH_PREFIX = "/unsubscribe/"
MAX_BODY = 16 * 1024
RETRY_AFTER = "30"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto; padding: 0 1em">
{content}
</body></html>
"""

_FORM = """<h1>Unsubscribe</h1>
<p>Stop all mail from this sender to <strong>{who}</strong>?</p>
<form method="post" action="{token}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>"""

_DONE = """<h1>Unsubscribed</h1>
<p><strong>{who}</strong> will not get mail from this sender again.</p>"""


def _masked(address: str) -> str:
    """``jane@example.org`` -> ``j…@example.org``: enough to recognise, not to harvest."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}…@{domain}"


class UnsubscribeEndpoint:
    """The ASGI handler :class:`~mailpacer.http.app.OperatorApp` hands ``/unsubscribe/...``."""

    def __init__(
        self,
        settings: UnsubscribeSettings,
        recorder: UnsubscribeRecorder,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD", "POST"):
            await _text(send, 405, "method not allowed\n", {"allow": "GET, HEAD, POST"})
            return
        body_ok = await _read_body(receive)
        if body_ok is None:
            return  # the client went away
        token = scope["path"][len(PATH_PREFIX) :]
        request = self.settings.read(token, via="https")
        if request is None:
            await _text(send, 404, "This unsubscribe link is not valid.\n")
            return
        if method != "POST":
            page = _FORM.format(who=html.escape(_masked(request.address)), token=token)
            await _html(send, 200, "Unsubscribe", page, head=method == "HEAD")
            return
        if not body_ok:
            await _text(send, 413, f"the request body is over {MAX_BODY} bytes\n")
            return
        await self._unsubscribe(send, request)

    async def _unsubscribe(self, send: Send, request: Unsubscribe) -> None:
        try:
            await self.recorder.record(request, within=self.timeout)
        except trio.TooSlowError:
            await _unavailable(send, f"no answer within {self.timeout:g} s")
            return
        except LedgerError:
            await _text(send, 404, "This unsubscribe link is not valid.\n")
            return
        except Exception as exc:
            if is_outage(exc):
                await _unavailable(send, "the database is unavailable")
                return
            log.exception("unsubscribe failed", extra={"event": "unsubscribe.error"})
            await _text(send, 500, "internal error; please try again later\n")
            return
        page = _DONE.format(who=html.escape(_masked(request.address)))
        await _html(send, 200, "Unsubscribed", page)


async def _read_body(receive: Receive) -> bool | None:
    """Read the request body to its end, keeping none of it: True, False when it was over
    ``MAX_BODY`` bytes (the rest is not read), None when the client disconnected."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            return False
        if not message.get("more_body", False):
            return True


async def _unavailable(send: Send, why: str) -> None:
    log.warning("unsubscribe answered 503: %s", why, extra={"event": "unsubscribe.unavailable"})
    await _text(
        send,
        503,
        "The unsubscribe could not be recorded right now; please try again later.\n",
        {"retry-after": RETRY_AFTER},
    )


async def _text(send: Send, status: int, text: str, headers: dict[str, str] | None = None) -> None:
    await _reply(send, status, text.encode(), "text/plain; charset=utf-8", headers or {})


async def _html(send: Send, status: int, title: str, content: str, *, head: bool = False) -> None:
    payload = _PAGE.format(title=title, content=content).encode()
    headers = {
        "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'",
        "referrer-policy": "no-referrer",
    }
    await _reply(send, status, payload, "text/html; charset=utf-8", headers, head=head)


async def _reply(
    send: Send,
    status: int,
    payload: bytes,
    content_type: str,
    headers: dict[str, str],
    *,
    head: bool = False,
) -> None:
    fields = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *((k.encode(), v.encode()) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": b"" if head else payload})
