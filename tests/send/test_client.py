from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web
from helpers import FAST_BACKOFF, SandboxServer, read_ledger, rows_csv, run_args, run_cli
from local_server import serving
from yarl import URL

from sync_worker.send.client import (
    MAX_PAUSE_S,
    Client,
    Kind,
    Outcome,
    RetryPolicy,
    classify,
    reset_delay,
    retry_after,
)


def api_error(code: str, message: str = "m") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (200, b'{"interview_request_id": 1}', Kind.OK, ""),
        (204, b"", Kind.OK, ""),
        (400, api_error("bad_request", "No fields"), Kind.FAILED, "bad_request"),
        (404, api_error("not_found"), Kind.FAILED, "not_found"),
        (422, b"<html>nope</html>", Kind.FAILED, "http_422"),
        (401, api_error("unauthorized"), Kind.FATAL, "unauthorized"),
        (403, b"", Kind.FATAL, "http_403"),
        (429, api_error("rate_limit_exceeded"), Kind.RATE_LIMITED, "rate_limit_exceeded"),
        (500, b"oops", Kind.RETRY, "server_error"),
        (503, api_error("server_error"), Kind.RETRY, "server_error"),
        (408, b"", Kind.RETRY, "server_error"),
    ],
    ids=["200", "204", "400", "404", "422-html", "401", "403", "429", "500", "503", "408"],
)
def test_classify(status: int, body: bytes, kind: Kind, code: str) -> None:
    verdict = classify(status, body)
    assert verdict.kind is kind
    assert verdict.code == code


@pytest.mark.parametrize(
    ("status", "body", "content_type", "kind"),
    [
        (200, b'{"interview_request_id": 7}', "application/json", Kind.OK),
        (200, b'{"interview_request_id":7,"contact_id":3}', "application/json", Kind.OK),
        (200, b'{"interview_request_id": "7"}', "application/json", Kind.OK),
        (200, b'{"interview_request_id": 8}', "application/json", Kind.FAILED),
        (200, b'{"interview_request_id": true}', "application/json", Kind.FAILED),
        (200, b"{}", "application/json", Kind.FAILED),
        (200, b"[7]", "application/json", Kind.RETRY),
        (200, b"<html>Welcome</html>", "text/html", Kind.RETRY),
        (204, b"", "", Kind.RETRY),
    ],
    ids=["api", "more-keys", "id-as-text", "another-id", "bool", "empty", "list", "html", "204"],
)
def test_a_2xx_is_ok_only_when_it_confirms_the_interview(
    status: int, body: bytes, content_type: str, kind: Kind
) -> None:
    """A JSON object about another interview (or none) fails the row; anything else is not
    the API answering (a portal's page): retried, and counted towards an outage."""
    verdict = classify(status, body, 7, content_type)
    assert verdict.kind is kind
    if kind is not Kind.OK:
        assert (verdict.code, verdict.healthy) == ("bad_response", False)
        assert f"HTTP {status} {content_type or 'without a content type'}" in verdict.message


@pytest.mark.parametrize(
    ("status", "body", "healthy"),
    [
        (404, api_error("not_found"), True),
        (400, api_error("bad_request"), True),
        (404, b"<h1>Not Found</h1>", False),
        (502, b"<html>Bad Gateway</html>", False),
        (503, api_error("server_error"), False),
        (429, api_error("rate_limit_exceeded"), True),
    ],
    ids=["404-api", "400-api", "404-html", "502-html", "503-api", "429"],
)
def test_which_answers_count_towards_an_outage(status: int, body: bytes, healthy: bool) -> None:
    assert classify(status, body, 7).healthy is healthy


def test_classify_keeps_server_message_and_shape() -> None:
    verdict = classify(404, api_error("not_found", "Interview request not found"))
    assert (verdict.message, verdict.api_shaped) == ("Interview request not found", True)
    assert classify(404, b"<h1>Not Found</h1>").api_shaped is False


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-RateLimit-Reset": str(NOW + 12.5)}, 12.5),
        ({"X-RateLimit-Reset": "7"}, 7.0),
        ({"X-RateLimit-Reset": "0.25"}, 0.25),
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": formatdate(NOW + 10, usegmt=True)}, 10.0),
        ({"X-RateLimit-Reset": "4", "Retry-After": "9"}, 4.0),
        ({"X-RateLimit-Reset": str(NOW - 5)}, 0.0),
        ({"X-RateLimit-Reset": "100000"}, MAX_PAUSE_S),
        ({"X-RateLimit-Reset": "soon"}, 1.0),
        ({}, 1.0),
    ],
    ids=[
        "unix",
        "seconds",
        "fraction",
        "retry-after",
        "retry-after-date",
        "reset-first",
        "past",
        "capped",
        "garbage",
        "none",
    ],
)
def test_reset_delay(headers: dict[str, str], expected: float) -> None:
    assert reset_delay(headers, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 8, 20])
def test_backoff_grows_with_jitter_and_a_cap(failures: int) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=30.0)
    ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
    delays = {policy.delay(failures) for _ in range(50)}
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(delays) > 1  # jittered


def test_a_row_that_keeps_getting_429_fails_after_bounded_tries() -> None:
    """A real server that answers every request 429 (reset 10 ms away)."""
    import asyncio

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from sync_worker.send.client import MAX_RATE_LIMITED, Client
    from sync_worker.send.limiter import Pacer

    async def always_429(_request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "rate_limit_exceeded", "message": "Too many requests"}},
            status=429,
            headers={"X-RateLimit-Reset": "0.01"},
        )

    async def scenario() -> tuple[str, str, int, int]:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", always_429)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            client = Client(
                session,
                str(server.make_url("")),
                Pacer(1000, 1.0, stop),
                RetryPolicy(max_retries=2),
                stop,
            )
            outcome = await client.send(7, b'{"objective":"x"}')
            return outcome.status, outcome.error_code, outcome.attempts, client.counters.retries

    status, code, attempts, retries = asyncio.run(scenario())
    assert (status, code) == ("failed", "rate_limit_exceeded")
    assert attempts == MAX_RATE_LIMITED  # more than max_retries: a 429 is not a failed attempt
    assert retries == 0


def test_transient_failures_are_retried_to_success(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory(
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        "--fail-rate",
        "0.25",
        "--drop-rate",
        "0.1",
        "--seed",
        "7",
    )
    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 8\n")
    rows_csv(tmp_path, 40)
    result = run_cli(*run_args(server, "--config", "fast.toml"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    ledger = read_ledger(tmp_path / "ledger.csv")
    assert {line["status"] for line in ledger} == {"ok"}
    arrivals = Counter(r["id"] for r in server.requests())
    answers: dict[str, list[int]] = {}
    for r in server.requests():
        answers.setdefault(r["id"], []).append(r["status"])
    for line in ledger:
        assert int(line["attempts"]) == arrivals[line["interview_id"]]  # attempts are real sends
        if answers[line["interview_id"]] == [200]:
            assert line["attempts"] == "1"  # healthy rows take one attempt
    assert any(n > 1 for n in arrivals.values())
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    assert summary["retries"] == sum(arrivals.values()) - 40
    assert any(e["event"] == "retry" for e in result.events())


def sandbox_at(base_url: str) -> SandboxServer:
    """Another server, addressed as run_args addresses a sandbox."""
    return SandboxServer(None, base_url.removesuffix("/api/v1"))  # type: ignore[arg-type]


def test_retries_run_out_as_failed(tmp_path: Path) -> None:
    """One row the server keeps failing (503) among rows it takes: that row ends `failed`
    after its retries; the others are sent."""

    async def fails_row_2(request: web.Request) -> web.Response:
        interview = int(request.match_info["tail"].rsplit("/", 1)[-1])
        if interview == 2:
            return web.json_response(
                {"error": {"code": "server_error", "message": "m"}}, status=503
            )
        return web.json_response({"interview_request_id": interview})

    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 2\n")
    rows_csv(tmp_path, 3)
    with serving(fails_row_2) as server:
        args = run_args(sandbox_at(server.base_url), "--config", "fast.toml", "--concurrency", "1")
        result = run_cli(*args, cwd=tmp_path)
    assert result.code == 1
    lines = sorted(read_ledger(tmp_path / "ledger.csv"), key=lambda x: int(x["source_row"]))
    assert [(x["status"], x["error_code"], x["attempts"]) for x in lines] == [
        ("ok", "", "1"),
        ("failed", "server_error", "3"),
        ("ok", "", "1"),
    ]


def test_503_to_every_request_from_the_start_is_an_outage(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """An API that fails every request is waited out as a whole, not row by row: exit 3 at
    --max-outage, the rows never sent `not_attempted`."""
    server = sandbox_factory("--rate-limit", "1000", "--rate-period", "1", "--fail-rate", "1")
    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 2\n")
    rows_csv(tmp_path, 30)
    result = run_cli(*run_args(server, "--config", "fast.toml", "--max-outage", "1"), cwd=tmp_path)
    assert result.code == 3
    assert "did not answer for 1 s" in result.event("run_aborted")["reason"]
    statuses = Counter((x["status"], x["error_code"]) for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses == {("failed", "server_error"): 1, ("not_attempted", ""): 29}
    assert {r["id"] for r in server.requests()} == {"1"}  # every try the first row's own


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        (
            "https://app.usehindsight.com/api/v1",
            "https://app.usehindsight.com/api/v1/interviews/42",
        ),
        ("http://127.0.0.1:8765/api/v1/", "http://127.0.0.1:8765/api/v1/interviews/42"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765/interviews/42"),
        ("http://127.0.0.1:8765/a%20b/v1", "http://127.0.0.1:8765/a%20b/v1/interviews/42"),
    ],
)
def test_request_url(base_url: str, expected: str) -> None:
    import asyncio

    from sync_worker.send.client import Client
    from sync_worker.send.limiter import Pacer

    client = Client(None, base_url, Pacer(1, 1.0), RetryPolicy(), asyncio.Event())  # type: ignore[arg-type]
    url = client.url(42)
    assert str(url) == expected
    assert url == URL(expected)  # what aiohttp would have made of the text


@pytest.mark.parametrize(
    ("hint", "expected"),
    [(3.0, 3.0), (0.0, 0.0), (-4.0, 0.0), (100_000.0, MAX_PAUSE_S)],
    ids=["retry-after", "zero", "past", "capped"],
)
def test_a_server_hint_replaces_the_backoff(hint: float, expected: float) -> None:
    assert RetryPolicy(base_s=0.5).delay(3, hint) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": formatdate(NOW + 10, usegmt=True)}, 10.0),
        ({"Retry-After": "later"}, None),
        ({}, None),
    ],
    ids=["seconds", "date", "unreadable", "absent"],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = retry_after(headers, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


async def _raw_server(answers: list[bytes]) -> tuple[asyncio.AbstractServer, str, list[float]]:
    """A TCP server writing the next raw answer for each request, then closing: HTTP or not."""
    arrivals: list[float] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrivals.append(asyncio.get_running_loop().time())
        writer.write(answers.pop(0) if len(answers) > 1 else answers[0])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", arrivals


def _http(status: str, body: bytes = b"{}", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _send_one(base_url: str, policy: RetryPolicy, watching: bool = True) -> Client:
    import aiohttp

    from sync_worker.send.limiter import Pacer
    from sync_worker.send.outage import Outage

    stop = asyncio.Event()
    outage = Outage(60.0, stop)
    outage.watching = watching
    async with aiohttp.ClientSession() as session:
        client = Client(session, base_url, Pacer(1000, 1.0, stop), policy, stop, outage)
        client.last = await client.send(7, b'{"objective":"x"}')  # type: ignore[attr-defined]
    return client


def test_a_503_retry_after_is_waited_out() -> None:
    async def scenario() -> tuple[Outcome, list[float]]:
        server, url, arrivals = await _raw_server(
            [
                _http("503 Service Unavailable", b"", "Retry-After: 0.3"),
                _http("200 OK", b'{"interview_request_id": 7}'),
            ]
        )
        async with server:
            client = await _send_one(url, RetryPolicy(base_s=0.001))
        return client.last, arrivals  # type: ignore[attr-defined]

    outcome, arrivals = asyncio.run(scenario())
    assert (outcome.status, outcome.attempts) == ("ok", 2)
    assert arrivals[1] - arrivals[0] >= 0.3  # the server's word, not the 1 ms backoff


def test_an_answer_that_is_not_http_is_retried_then_fails_the_row() -> None:
    async def scenario() -> Client:
        server, url, _arrivals = await _raw_server([b"HTTP/1.1 2OO OK\r\n\r\n"])
        async with server:
            return await _send_one(url, RetryPolicy(max_retries=2, base_s=0.001))

    client = asyncio.run(scenario())
    outcome: Outcome = client.last  # type: ignore[attr-defined]
    assert (outcome.status, outcome.error_code, outcome.attempts) == ("failed", "bad_response", 3)
    assert outcome.http_status is None and "not HTTP" in outcome.error_message
    assert (client.counters.requests, client.counters.connection_errors) == (0, 3)


def test_a_connection_never_opened_is_not_attempted_and_not_on_the_wire() -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = asyncio.run(_send_one(f"http://127.0.0.1:{port}", RetryPolicy(), watching=False))
    outcome: Outcome = client.last  # type: ignore[attr-defined]
    assert (outcome.status, outcome.error_code, outcome.attempts) == (
        "not_attempted",
        "connection_error",
        0,
    )
    assert client.started == {} and client.counters.retries == 0


def test_rows_wait_out_an_outage_without_spending_retries() -> None:
    """The API stops listening mid-run and comes back on the same port: with only the retries
    that drops cut off in flight may spend before the outage shows, every row still ends ok."""
    import aiohttp
    from aiohttp import web

    from sync_worker.send.limiter import Pacer
    from sync_worker.send.outage import OUTAGE_AFTER, Outage

    async def accept(request: web.Request) -> web.Response:
        return web.json_response({"interview_request_id": int(request.match_info["id"])})

    async def listen(port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", accept)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    async def scenario() -> tuple[list[Outcome], int]:
        runner = await listen(0)
        port = runner.addresses[0][1]
        stop = asyncio.Event()
        outage = Outage(30.0, stop)
        outage.watching = True
        async with aiohttp.ClientSession() as session:
            client = Client(
                session,
                f"http://127.0.0.1:{port}",
                Pacer(100, 1.0, stop),
                RetryPolicy(OUTAGE_AFTER - 1, base_s=0.001),
                stop,
                outage,
            )
            sends = [asyncio.ensure_future(client.send(i, b"{}")) for i in range(1, 41)]
            await asyncio.sleep(0.1)
            await runner.cleanup()
            await asyncio.sleep(0.3)
            runner = await listen(port)
            outcomes = await asyncio.gather(*sends)
        await runner.cleanup()
        return outcomes, client.counters.connection_errors

    outcomes, connection_errors = asyncio.run(scenario())
    assert {o.status for o in outcomes} == {"ok"}
    assert connection_errors > 0  # the outage did happen
