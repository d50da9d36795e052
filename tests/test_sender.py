"""The sender on the real event loop against an in-process server: what a worker survives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from sync_worker.client import Client, Outcome, RetryPolicy
from sync_worker.request_table import ChainQueue, Request, RequestTable
from sync_worker.sender import SendConfig, Sender


def requests(count: int) -> RequestTable:
    return RequestTable.from_requests([
        Request(i, b'{"objective":"x"}', "", [i - 1], f"interview:{i}", "off", None)
        for i in range(1, count + 1)
    ])  # fmt: skip


def test_a_surprise_in_one_request_is_recorded_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send = Client.send

    async def breaks_on_3(self: Client, interview_id: int, body: bytes) -> Outcome:
        if interview_id == 3:
            raise RuntimeError("a bug")
        return await send(self, interview_id, body)

    monkeypatch.setattr(Client, "send", breaks_on_3)

    async def accept(_request: web.Request) -> web.Response:
        return web.json_response({"interview_request_id": 1})

    async def scenario() -> dict[int, Outcome]:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", accept)
        results: dict[int, Outcome] = {}

        def sink(request: Request, outcome: Outcome) -> None:
            results[request.interview_id] = outcome

        async with TestServer(app, host="127.0.0.1") as server:
            config = SendConfig(str(server.make_url("")), "k", 1000, 1.0, concurrency=1,
                                timeout_s=5.0, policy=RetryPolicy())  # fmt: skip
            await Sender(config, sink, asyncio.Event()).run(ChainQueue(requests(6)))
        return results

    with capture_logs() as logs:
        results = asyncio.run(scenario())
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

    async def accept(_request: web.Request) -> web.Response:
        return web.json_response({"interview_request_id": 1})

    async def scenario() -> dict[int, Outcome]:
        app = web.Application()
        app.router.add_patch("/interviews/{id}", accept)
        results: dict[int, Outcome] = {}

        def sink(request: Request, outcome: Outcome) -> None:
            results[request.interview_id] = outcome

        async with TestServer(app, host="127.0.0.1") as server:
            config = SendConfig(str(server.make_url("")), "k", 1000, 1.0, concurrency=2,
                                timeout_s=5.0, policy=RetryPolicy())  # fmt: skip
            await Sender(config, sink, asyncio.Event()).run(ChainQueue(requests(8)))
        return results

    with capture_logs() as logs:
        results = asyncio.run(scenario())
    assert sorted(results) == list(range(1, 9))  # the other worker, or a new one, sent them all
    assert [e["error"] for e in logs if e["event"] == "worker_error"] == [
        "RuntimeError: a bug in the queue"
    ]
