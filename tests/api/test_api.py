"""The control API over real HTTP (hypercorn + httpx): auth, every route, bad input.

Each bad request gets a 4xx with a JSON error and changes nothing."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import trio
import trio.lowlevel

from mailpacer.ledger.schema import recipients

from .conftest import READ, TEMPLATE, WRITE, auth, csv_bytes, served, spec, upload

pytestmark = pytest.mark.filterwarnings("error")


async def create(client: httpx.AsyncClient, name: str = "spring", count: int = 20) -> dict:  # type: ignore[type-arg]
    response = await client.post("/campaigns", files=upload(spec(name), csv_bytes(count)))
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    for needle in needles:
        assert needle in body["error"], body["error"]
    assert "Traceback" not in response.text


async def test_auth_401_403_200_and_tokens_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(tmp_path) as s:
        await create(s.client)
        bare = httpx.AsyncClient(base_url=s.root, timeout=10)
        async with bare:
            missing = await bare.get("/api/v1/campaigns")
            assert_error(missing, 401, "missing bearer token")
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = await bare.get("/api/v1/campaigns", headers=auth(WRITE + "x"))
            assert_error(wrong, 401, "invalid bearer token")
            assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
            basic = await bare.get("/api/v1/campaigns", headers={"Authorization": f"Basic {WRITE}"})
            assert_error(basic, 401)
            # unknown paths and writes are 401 too without a token (nothing is revealed)
            assert_error(await bare.get("/api/v1/nothing"), 401)
            assert_error(await bare.post("/api/v1/campaigns/spring/pause"), 401)

            read = await bare.get("/api/v1/campaigns", headers=auth(READ))
            assert read.status_code == 200
            assert [c["campaign"] for c in read.json()["campaigns"]] == ["spring"]
            forbidden = await bare.post("/api/v1/campaigns/spring/pause", headers=auth(READ))
            assert_error(forbidden, 403, "may only read")
            assert (await bare.delete("/api/v1/suppressions/x.example", headers=auth(READ))
                    ).status_code == 403  # fmt: skip
            assert (await bare.get("/api/v1/campaigns/spring", headers=auth(READ))
                    ).json()["status"] == "ready"  # fmt: skip
            paused = await bare.post("/api/v1/campaigns/spring/pause", headers=auth(WRITE))
            assert paused.status_code == 200
            assert paused.json()["status"] == "paused"
            assert (await bare.get("/api/v1/openapi.json")).status_code == 200  # public
            assert (await bare.get("/healthz")).status_code == 200  # stays open
            metrics = (await bare.get("/metrics")).text
    assert WRITE not in caplog.text
    assert READ not in caplog.text
    assert WRITE not in metrics


async def test_read_token_alone_reads_and_no_token_disables_the_api(tmp_path: Path) -> None:
    async with served(tmp_path, token=None) as s:
        assert (await s.client.get("/campaigns", headers=auth(READ))).status_code == 200
        assert_error(await s.client.get("/campaigns"), 401)  # the write token is not set
        assert_error(await s.client.post("/suppressions", headers=auth(READ)), 403)
    for kwargs in ({"token": None, "read_token": None}, {"api": False}):
        async with served(tmp_path, **kwargs) as s:  # type: ignore[arg-type]
            assert_error(await s.client.get("/campaigns"), 404, "disabled")
            assert_error(await s.client.get("/openapi.json"), 404, "disabled")
            async with httpx.AsyncClient(base_url=s.root, timeout=10) as bare:
                assert (await bare.get("/healthz")).status_code == 200
                assert (await bare.get("/metrics")).status_code == 200
                assert (await bare.post("/healthz")).status_code == 405


async def test_create_list_get_and_the_campaign_actions(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        s.ledger.add_suppression("r00003@example.net", reason="complaint", now=1.0)
        data = csv_bytes(20) + b"not-an-address,Ana,X,Porto,M-x\n"
        response = await s.client.post("/campaigns", files=upload(spec(), data))
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/api/v1/campaigns/spring"
        created = response.json()
        assert created["campaign"] == "spring"
        assert created["status"] == "ready"
        assert created["recipients"] == 20
        assert created["import"]["rejected"] == 1
        assert created["import"]["rejected_rows"][0]["line"] == 22
        assert created["counts"]["pending"] == 19
        assert created["counts"]["suppressed"] == 1
        assert created["settings"]["rate"] == "300/min"
        assert created["source"] == "uploaded through the control API (list.csv)"
        assert created["note"] is None
        assert len(s.wakes) == 1  # the agent polls soon
        assert list(s.uploads.iterdir()) == []  # the upload's temp file is gone

        listed = (await s.client.get("/campaigns")).json()["campaigns"]
        assert [c["campaign"] for c in listed] == ["spring"]
        shown = (await s.client.get("/campaigns/spring")).json()
        assert shown["total"] == 20
        assert shown["remaining"] == 19

        again = await s.client.post("/campaigns", files=upload(spec(), csv_bytes(5, prefix="o")))
        assert_error(again, 409, "already exists")
        assert "sqlite" not in again.json()["error"]  # the ledger's URL is not shown
        assert (await s.client.get("/campaigns/spring")).json()["total"] == 20

        async def act(action: str, **kwargs: object) -> httpx.Response:
            return await s.client.post(f"/campaigns/spring/{action}", **kwargs)  # type: ignore[arg-type]

        assert (await act("pause")).json()["status"] == "paused"
        assert (await act("pause", json={})).json()["status"] == "paused"  # idempotent
        resumed = await act("resume")
        assert resumed.json()["status"] == "ready"
        assert len(s.wakes) == 2

        with s.ledger.engine.begin() as conn:  # the relay refused three, deferred two
            for email, state in [("r00001", "failed"), ("r00002", "failed"),
                                 ("r00004", "failed"), ("r00005", "deferred"),
                                 ("r00006", "deferred"), ("r00007", "uncertain"),
                                 ("r00008", "uncertain")]:  # fmt: skip
                conn.execute(
                    recipients.update()
                    .where(recipients.c.email == f"{email}@example.net")
                    .values(status=state, next_attempt_at=9e9)
                )
        retried = await act("retry", json={"states": ["failed"], "emails": ["R00001@example.net"]})
        assert retried.status_code == 200, retried.text
        assert retried.json()["changed"] == {"failed": 1}
        retried = await act("retry", json={"states": ["failed", "deferred"]})
        assert retried.json()["changed"] == {"failed": 2, "deferred": 2}
        assert retried.json()["counts"]["failed"] == 0
        resolved = await act("resolve-uncertain", json={"resolution": "mark-sent"})
        assert resolved.json()["changed"] == {"uncertain": 2}
        assert resolved.json()["counts"]["sent"] == 2

        cancelled = await act("cancel")
        assert cancelled.json()["status"] == "cancelled"
        assert_error(await act("resume"), 409, "'spring' is cancelled; it cannot be resumed")
        assert_error(await act("pause"), 409, "cannot be paused")
        assert_error(await act("retry", json={"states": ["failed"]}), 409, "was cancelled")
        assert (await s.client.get("/campaigns/spring")).json()["status"] == "cancelled"

        # a name with a slash, spaces and non-ASCII, percent-encoded in the path
        odd = "été 2025/news"
        wakes = len(s.wakes)  # 4: the create, the resume, two retries (not the mark-sent)
        assert wakes == 4
        response = await s.client.post("/campaigns", files=upload(spec(odd, paused=True),
                                                                  csv_bytes(3)))  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "paused"
        assert len(s.wakes) == wakes  # a paused create does not wake the agent
        path = f"/campaigns/{quote(odd, safe='')}"
        assert response.headers["location"] == "/api/v1" + path
        assert (await s.client.get(path)).json()["campaign"] == odd
        assert (await s.client.post(path + "/resume")).json()["status"] == "ready"


async def test_bad_requests_are_4xx_json_and_change_nothing(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        await create(s.client)
        c = s.client
        before = (await c.get("/campaigns")).json()

        # unknown campaign, endpoint, method
        assert_error(await c.get("/campaigns/nope"), 404, "no campaign named 'nope'")
        assert_error(await c.post("/campaigns/nope/pause"), 404, "'nope'")
        assert_error(await c.post("/campaigns/nope/retry", json={"states": ["failed"]}), 404)
        assert_error(await c.get("/campaigns/spring/nothing"), 404, "no such endpoint")
        wrong = await c.put("/campaigns/spring")
        assert_error(wrong, 405, "PUT not allowed")
        assert wrong.headers["allow"] == "GET"
        assert_error(await c.get("/campaigns/%ff"), 400, "UTF-8")

        # bodies: bad JSON, wrong shape, wrong type, fields
        bad_json = await c.post(
            "/campaigns/spring/retry",
            content=b"{", headers={"content-type": "application/json"},
        )  # fmt: skip
        assert_error(bad_json, 400, "not valid JSON")
        assert_error(await c.post("/campaigns/spring/retry", json=["failed"]), 400, "JSON object")
        assert_error(await c.post("/campaigns/spring/retry"), 400, "JSON object is required")
        assert_error(await c.post("/campaigns/spring/retry", json={"states": []}), 400, "states")
        assert_error(
            await c.post("/campaigns/spring/retry", json={"states": ["sent"]}), 400, "states"
        )
        assert_error(
            await c.post("/campaigns/spring/retry", json={"states": ["failed"], "x": 1}),
            400, "unknown field(s) x",
        )  # fmt: skip
        assert_error(
            await c.post("/campaigns/spring/resolve-uncertain", json={"resolution": "maybe"}), 400
        )
        text = await c.post(
            "/campaigns/spring/retry", content=b"states=failed",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert_error(text, 415, "application/json")
        assert_error(await c.post("/campaigns/spring/pause", content=b"{}"), 415)

        # create: content type, parts, spec fields, CSV, template
        assert_error(await c.post("/campaigns", json=spec("x")), 415, "multipart/form-data")
        assert_error(await c.post("/campaigns", files=upload(spec("x"), None)), 400, "recipients")
        assert_error(
            await c.post("/campaigns", files={"recipients": ("l.csv", csv_bytes(2), "text/csv")}),
            400, "'spec' part",
        )  # fmt: skip
        extra = upload(spec("x"), csv_bytes(2)) | {"other": ("o.txt", b"x", "text/plain")}
        assert_error(await c.post("/campaigns", files=extra), 400, "unexpected part 'other'")
        assert_error(await c.post("/campaigns", files=upload("{nope", csv_bytes(2))), 400, "JSON")
        for bad_spec, needle in [
            ({k: v for k, v in spec("x").items() if k != "from"}, "from: required"),
            (spec("x", colour="red"), "unknown field(s) colour"),
            (spec("x", template="templates/welcome"), "absolute path"),
            (spec("x", rate="fast"), "rate"),
            (spec("x", burst=0), "burst"),
            (spec("x", paused="yes"), "paused"),
            (spec("x", guard_bounce_rate=5), "guard_bounce_rate"),
            (spec("x", template=str(TEMPLATE.parent / "nonexistent")), "nonexistent"),
            (spec("x", **{"from": "not an address"}), "from"),
            (spec("x", message="/etc/hostname"), "exactly one of template"),
        ]:
            response = await c.post("/campaigns", files=upload(bad_spec, csv_bytes(2)))
            assert_error(response, 400, needle)
            assert "--" not in response.json()["error"], response.text  # API words, not CLI's
        no_email = b"address,first_name\nx@example.net,A\n"
        assert_error(await c.post("/campaigns", files=upload(spec("x"), no_email)), 400, "email")
        assert_error(
            await c.post("/campaigns", files=upload(spec("x"), b"")), 400, "the uploaded list"
        )
        unfit = await c.post("/campaigns", files=upload(spec("x"), csv_bytes(5, columns=False)))
        assert_error(unfit, 400, "the template fails for the first 5 recipient(s)", "first_name")
        assert str(s.uploads) not in unfit.text
        wrong_type = {"spec": (None, json.dumps(spec("x")), "application/json"),
                      "recipients": ("l.csv", csv_bytes(2), "image/png")}  # fmt: skip
        assert_error(await c.post("/campaigns", files=wrong_type), 415, "text/csv")
        truncated = await c.post(
            "/campaigns", content=b"--b\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )  # fmt: skip
        assert_error(truncated, 400, "closing boundary")

        # suppressions
        assert_error(await c.post("/suppressions", json={"value": "a@@b"}), 400, "cannot suppress")
        assert_error(await c.post("/suppressions", json={}), 400, "value")
        assert_error(await c.post("/suppressions", json={"value": "x.example", "reason": 5}), 400)
        assert_error(await c.get("/suppressions", params={"limit": "0"}), 400, "limit")
        assert_error(await c.get("/suppressions", params={"limit": "x"}), 400, "limit")
        assert_error(await c.get("/suppressions", params={"kind": "ip"}), 400, "kind")
        assert_error(await c.get("/suppressions", params={"page": "2"}), 400, "page")
        assert_error(await c.delete("/suppressions/nobody@example.net"), 404, "not on the")

        assert (await c.get("/campaigns")).json() == before  # nothing changed
        assert (await c.get("/suppressions")).json()["total"] == 0
        assert list(s.uploads.iterdir()) == []

        # A list with no valid row is found only by importing it: like `campaign create`,
        # the campaign then stays held (note "importing"); the same request with a fixed
        # list finishes it.
        invalid_rows = b"email,first_name,last_name,city,member_id\nnope,A,B,C,1\n"
        response = await c.post("/campaigns", files=upload(spec("x"), invalid_rows))
        assert_error(response, 400, "no valid recipient in the uploaded list", "request again")
        held = (await c.get("/campaigns/x")).json()
        assert (held["status"], held["note"], held["total"]) == ("paused", "importing", 0)
        fixed = await c.post("/campaigns", files=upload(spec("x"), csv_bytes(3)))
        assert fixed.status_code == 201, fixed.text
        assert (fixed.json()["status"], fixed.json()["note"]) == ("ready", None)


async def test_size_limits(tmp_path: Path) -> None:
    async with served(tmp_path, max_upload=256 * 1024) as s:
        c = s.client
        huge_json = b'{"value": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        response = await c.post(
            "/suppressions", content=huge_json, headers={"content-type": "application/json"}
        )
        assert_error(response, 413, "too large")

        async def stream(total: int) -> AsyncIterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'
            yield json.dumps(spec("big")).encode()
            yield b'\r\n--b\r\nContent-Disposition: form-data; name="recipients"\r\n\r\n'
            yield b"email,first_name,last_name,city,member_id\n"
            row = b"someone@example.net,Ana,Test,Porto,M-1\n" * 1000
            for _ in range(total // len(row)):
                yield row
                await trio.lowlevel.checkpoint()
            yield b"\r\n--b--\r\n"

        multipart = {"content-type": "multipart/form-data; boundary=b"}
        # 100 MB announced by Content-Length: refused at once, the body never read
        port = int(s.root.rpartition(":")[2])
        with trio.fail_after(10):
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            async with sock:
                await sock.send_all(
                    b"POST /api/v1/campaigns HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {WRITE}\r\n".encode()
                    + b"Content-Type: multipart/form-data; boundary=b\r\n"
                    + f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
                    + b"--b\r\n" * 1000
                )
                answer = b""
                while b"}" not in answer:
                    chunk = await sock.receive_some(65536)
                    if not chunk:
                        break
                    answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 "), answer
        assert b"connection: close" in head.lower()
        assert b"upload too large" in payload
        # chunked, no length: refused once the recipients part passes the limit
        chunked = await c.post("/campaigns", content=stream(2 * 1024 * 1024), headers=multipart)
        assert_error(chunked, 413, "over 262,144 bytes")
        assert list(s.uploads.iterdir()) == []  # the partial upload was removed
        assert_error(await c.get("/campaigns/big"), 404)

        within = await c.post("/campaigns", files=upload(spec("fits"), csv_bytes(3000)))
        assert within.status_code == 201, within.text
        assert within.json()["recipients"] == 3000


async def test_suppressions(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        c = s.client
        await create(c, count=10)
        added = await c.post(
            "/suppressions", json={"value": "R00002@Example.net", "reason": "complaint"}
        )
        assert added.status_code == 201, added.text
        body = added.json()
        assert body["created"] is True
        assert body["recipients_suppressed"] == 1  # the pending recipient of 'spring'
        assert body["suppression"]["value"] == "r00002@example.net"
        assert body["suppression"]["source"] == "api"
        again = await c.post("/suppressions", json={"value": "r00002@example.net"})
        assert again.status_code == 200
        assert again.json()["created"] is False
        domain = await c.post(
            "/suppressions", json={"value": "spam.example", "reason": "r", "source": "crm"}
        )
        assert domain.status_code == 201
        for n in range(5):
            await c.post("/suppressions", json={"value": f"x{n}@other.example"})
        shown = (await c.get("/campaigns/spring")).json()
        assert shown["counts"]["suppressed"] == 1

        seen: list[str] = []
        params: dict[str, str | int] = {"limit": 3}
        while True:
            page = (await c.get("/suppressions", params=params)).json()
            assert page["total"] == 7
            seen += [e["value"] for e in page["suppressions"]]
            if page["next_after"] is None:
                break
            params["after"] = page["next_after"]
        assert seen[:2] == ["r00002@example.net", "spam.example"]
        assert len(seen) == 7
        domains = (await c.get("/suppressions", params={"kind": "domain"})).json()
        assert [e["value"] for e in domains["suppressions"]] == ["spam.example"]
        assert domains["next_after"] is None

        one = await c.get("/suppressions/" + quote("R00002@example.net", safe=""))
        assert one.json()["suppression"]["reason"] == "complaint"
        deleted = await c.delete("/suppressions/spam.example")
        assert deleted.status_code == 200
        assert deleted.json()["deleted"]["value"] == "spam.example"
        assert_error(await c.delete("/suppressions/spam.example"), 404)
        assert_error(await c.get("/suppressions/spam.example"), 404)
        assert (await c.get("/suppressions")).json()["total"] == 6


async def test_a_long_import_does_not_block_health_or_other_calls(tmp_path: Path) -> None:
    """The create runs in a thread of its own: /healthz and API reads answer meanwhile."""
    async with served(tmp_path) as s:
        await create(s.client, "first", count=5)
        data = csv_bytes(60_000)
        latencies: list[float] = []
        done = trio.Event()

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=s.root, timeout=10) as bare:
                while not done.is_set():
                    started = trio.current_time()
                    assert (await bare.get("/healthz")).status_code == 200
                    latencies.append(trio.current_time() - started)
                    got = await s.client.get("/campaigns/first")
                    assert got.status_code == 200
                    await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            started = trio.current_time()
            response = await s.client.post("/campaigns", files=upload(spec("big"), data))
            took = trio.current_time() - started
            done.set()
        assert response.status_code == 201, response.text
        assert response.json()["recipients"] == 60_000
    latencies.sort()
    print(
        f"create of 60,000 recipients took {took:.1f} s; /healthz meanwhile: "
        f"{len(latencies)} requests, max {latencies[-1] * 1000:.0f} ms"
    )
    assert len(latencies) >= 5
    assert latencies[-1] < 1.0


async def test_campaign_files_must_come_from_the_allowed_roots(tmp_path: Path) -> None:
    """A write token must not be enough to have any readable file of the host mailed out."""
    secret = tmp_path / "elsewhere" / "secret.eml"
    secret.parent.mkdir()
    secret.write_text("From: a@b\n\nthe host's secrets\n")
    async with served(tmp_path, file_roots=(TEMPLATE.parent,)) as s:
        leak = {k: v for k, v in spec().items() if k != "template"}
        leak["message"] = str(secret)
        refused = await s.client.post("/campaigns", files=upload(leak, csv_bytes(3)))
        assert_error(refused, 403, "outside the directories in [api].file_roots")
        sneaky = {**spec(), "template": str(TEMPLATE.parent / ".." / "elsewhere")}
        refused = await s.client.post("/campaigns", files=upload(sneaky, csv_bytes(3)))
        assert_error(refused, 403, "outside")
        assert (await s.client.get("/campaigns")).json()["campaigns"] == []
        fine = await s.client.post("/campaigns", files=upload(spec(), csv_bytes(3)))
        assert fine.status_code == 201, fine.text
    (tmp_path / "none").mkdir()
    async with served(tmp_path / "none", file_roots=()) as s:
        refused = await s.client.post("/campaigns", files=upload(spec(), csv_bytes(3)))
        assert_error(refused, 403, "allows no files")
