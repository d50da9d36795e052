"""The sender on the real event loop against an in-process server: what a worker survives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from sync_worker.plan.request_table import ChainQueue, Request, RequestTable
from sync_worker.send.client import Client, Outcome, RetryPolicy
from sync_worker.send.sender import SendConfig, Sender


def requests(count: int) -> RequestTable:
    return RequestTable.from_requests(
        [
            Request(i, b'{"objective":"x"}', "", [i - 1], f"interview:{i}", "off", None)
            for i in range(1, count + 1)
        ]
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def send_all(
    handler: Handler, count: int, concurrency: int | None = None, stop_after: float | None = None
) -> dict[int, Outcome]:
    """`count` requests sent through a Sender to an in-process server answering with
    `handler`; each request's outcome. `stop_after`: seconds until the run is told to stop."""

    async def scenario() -> dict[int, Outcome]:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", handler)
        results: dict[int, Outcome] = {}
        stop = asyncio.Event()

        def sink(request: Request, outcome: Outcome) -> None:
            results[request.interview_id] = outcome

        async with TestServer(app, host="127.0.0.1") as server:
            config = SendConfig(
                str(server.make_url("")),
                "k",
                1000,
                1.0,
                concurrency=concurrency,
                timeout_s=5.0,
                policy=RetryPolicy(),
            )
            if stop_after is not None:
                asyncio.get_running_loop().call_later(stop_after, stop.set)
            await Sender(config, sink, stop).run(ChainQueue(requests(count)))
        return results

    return asyncio.run(scenario())


async def accept(request: web.Request) -> web.Response:
    return web.json_response({"interview_request_id": int(request.match_info["id"])})


def test_a_surprise_in_one_request_is_recorded_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send = Client.send

    async def breaks_on_3(self: Client, interview_id: int, body: bytes) -> Outcome:
        if interview_id == 3:
            raise RuntimeError("a bug")
        return await send(self, interview_id, body)

    monkeypatch.setattr(Client, "send", breaks_on_3)
    with capture_logs() as logs:
        results = send_all(accept, 6, concurrency=1)
    assert sorted(results) == [1, 2, 3, 4, 5, 6]  # one worker: it went on past row 3
    assert {i: o.status for i, o in results.items() if o.status != "ok"} == {3: "failed"}
    assert results[3].error_code == "internal_error" and "a bug" in results[3].error_message
    errors: list[dict[str, Any]] = [e for e in logs if e["event"] == "request_error"]
    assert [e["interview_id"] for e in errors] == [3]


def test_a_worker_that_dies_is_logged_and_the_pool_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A surprise outside a request (here: taking a chain) ends that worker only; the others
    send the rest, and the death is logged rather than lost with the task."""
    popleft = ChainQueue.popleft
    taken = 0

    def breaks_once(self: ChainQueue) -> Any:
        nonlocal taken
        taken += 1
        if taken == 3:
            raise RuntimeError("a bug in the queue")
        return popleft(self)

    monkeypatch.setattr(ChainQueue, "popleft", breaks_once)
    with capture_logs() as logs:
        results = send_all(accept, 8, concurrency=2)
    assert sorted(results) == list(range(1, 9))  # the other worker, or a new one, sent them all
    assert [e["error"] for e in logs if e["event"] == "worker_error"] == [
        "RuntimeError: a bug in the queue"
    ]


def test_a_stop_cuts_off_the_first_request_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first request goes alone; a stop during it waits STOP_GRACE_S, like any worker's."""
    monkeypatch.setattr("sync_worker.send.sender.STOP_GRACE_S", 0.2)

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def scenario() -> tuple[float, dict[int, tuple[float, int]]]:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", slow)
        stop = asyncio.Event()
        async with TestServer(app, host="127.0.0.1") as server:
            config = SendConfig(
                str(server.make_url("")), "k", 1000, 1.0, timeout_s=60.0, policy=RetryPolicy()
            )
            asyncio.get_running_loop().call_later(0.3, stop.set)
            started = asyncio.get_running_loop().time()
            report = await Sender(config, lambda _r, _o: None, stop).run(ChainQueue(requests(3)))
            return asyncio.get_running_loop().time() - started, report.started

    took, on_the_wire = asyncio.run(scenario())
    assert took < 5  # not the 30 s of the answer
    assert set(on_the_wire) == {1}  # the run fills its line in as failed / interrupted
    assert on_the_wire[1][1] == 1  # one try went out


def test_a_stop_while_waiting_out_a_429_is_interrupted_not_rate_limit_exceeded() -> None:
    """rate_limit_exceeded means a row met 429 after 429; one refused try then a stop is not."""

    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "rate_limit_exceeded", "message": "slow"}},
            status=429,
            headers={"X-RateLimit-Reset": "30"},
        )

    results = send_all(refuse, 2, stop_after=0.3)
    first = results[1]  # the server refused it, and it was never tried again: not sent
    assert (first.status, first.error_code, first.http_status) == (
        "not_attempted",
        "interrupted",
        429,
    )
    assert "rate-limit pause" in first.error_message and first.attempts == 1
