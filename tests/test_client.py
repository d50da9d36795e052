from __future__ import annotations

import json
from email.utils import formatdate

import pytest
from yarl import URL

from sync_worker.client import MAX_PAUSE_S, Kind, RetryPolicy, classify, reset_delay


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
    ids=["unix", "seconds", "fraction", "retry-after", "retry-after-date", "reset-first",
         "past", "capped", "garbage", "none"],
)  # fmt: skip
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

    from sync_worker.client import MAX_RATE_LIMITED, Client
    from sync_worker.limiter import Pacer

    async def always_429(_request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "rate_limit_exceeded", "message": "Too many requests"}},
            status=429, headers={"X-RateLimit-Reset": "0.01"},
        )  # fmt: skip

    async def scenario() -> tuple[str, str, int, int]:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", always_429)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            client = Client(session, str(server.make_url("")), Pacer(1000, 1.0, stop),
                            RetryPolicy(max_retries=2), stop)  # fmt: skip
            outcome = await client.send(7, b'{"objective":"x"}')
            return outcome.status, outcome.error_code, outcome.attempts, client.counters.retries

    status, code, attempts, retries = asyncio.run(scenario())
    assert (status, code) == ("failed", "rate_limit_exceeded")
    assert attempts == MAX_RATE_LIMITED  # more than max_retries: a 429 is not a failed attempt
    assert retries == 0


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

    from sync_worker.client import Client
    from sync_worker.limiter import Pacer

    client = Client(None, base_url, Pacer(1, 1.0), RetryPolicy(), asyncio.Event())  # type: ignore[arg-type]
    url = client.url(42)
    assert str(url) == expected
    assert url == URL(expected)  # what aiohttp would have made of the text
