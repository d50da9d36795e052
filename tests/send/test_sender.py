"""The sender on the real event loop against an in-process server: what a worker survives."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import (
    FAST_BACKOFF,
    SandboxServer,
    assert_ledger_rows,
    assert_no_traceback,
    fast_rows,
    fast_run_args,
    read_ledger,
    rows_csv,
    run_against,
    run_args,
    run_cli,
    set_latency,
    start_run,
    wait_for_arrivals,
    write_csv,
)
from structlog.testing import capture_logs

from sync_worker.plan.request_table import ChainQueue, Request, RequestTable
from sync_worker.send.client import RETRIES_LOGGED, Client, Outcome, RetryPolicy
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


def test_max_duration_reached_with_every_row_done_exits_0(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    server = sandbox
    set_latency(server, 2500)
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = run_against(tmp_path, server, "--ledger", "l.csv", "--max-duration", "0.015")  # 0.9 s
    assert_no_traceback(result, 0)  # the deadline came while the only row was in flight
    assert [x["status"] for x in assert_ledger_rows(tmp_path / "l.csv", 1)] == ["ok"]


def test_max_duration_reached_while_a_row_waits_for_its_slot_exits_4(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """The sender ends the waiting row as not_attempted itself: that is still a row left."""
    server = sandbox_factory("--rate-limit", "1", "--rate-period", "30")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    args = ["--ledger", "l.csv", "--rate-limit", "1", "--rate-period", "30"]
    result = run_against(tmp_path, server, *args, "--max-duration", "0.02")  # 1.2 s
    assert_no_traceback(result, 4)
    statuses = [x["status"] for x in assert_ledger_rows(tmp_path / "l.csv", 2)]
    assert statuses == ["ok", "not_attempted"]
    assert result.event("run_finished")["stopped_by"] == "max_duration"


def test_max_duration_stops_with_4_and_rerun_resumes(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    rows_csv(tmp_path, 60)
    args = run_args(sandbox, "--rate-limit", "20", "--rate-period", "1")
    result = run_cli(*args, "--max-duration", "0.02", cwd=tmp_path)  # 1.2 seconds of 3
    assert result.code == 4
    statuses = Counter(x["status"] for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses["not_attempted"] > 0 and statuses["ok"] > 0
    assert sum(statuses.values()) == 60
    assert run_cli(*args, "--ledger", "second.csv", cwd=tmp_path).code == 0
    assert sorted({r["id"] for r in sandbox.requests()}) == sorted(str(i) for i in range(1, 61))
    assert len(sandbox.requests()) == 60


def test_max_duration_while_sends_wait_for_their_slot(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    fast_rows(tmp_path, 20)
    args = fast_run_args(sandbox, "--rate-limit", "2", "--rate-period", "10")
    result = run_cli(*args, "--max-duration", "0.02", cwd=tmp_path, timeout=12)  # 1.2 s
    assert_no_traceback(result, 4)
    statuses = Counter(x["status"] for x in assert_ledger_rows(tmp_path / "ledger.csv", 20))
    assert set(statuses) == {"ok", "not_attempted"}
    assert statuses["ok"] == len(sandbox.requests()) <= 2  # the bucket's room, nothing later


def test_not_http_on_the_first_request_aborts_naming_the_base_url(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--garbage-rate", "1")
    fast_rows(tmp_path, 5)
    result = run_cli(*fast_run_args(server), cwd=tmp_path)
    assert_no_traceback(result, 3)
    aborted = [e for e in result.events() if e["event"] == "run_aborted"]
    assert len(aborted) == 1
    assert "does not answer like the Hindsight API" in aborted[0]["reason"]
    assert "check --base-url" in aborted[0]["reason"]
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 5)
    assert Counter((x["status"], x["error_code"]) for x in ledger) == {
        ("failed", "bad_response"): 1,
        ("not_attempted", ""): 4,
    }
    assert ledger[0]["attempts"] == "3"  # retried like any other error, then given up


def test_not_http_inside_the_pool_is_retried_and_kills_no_worker(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--garbage-rate", "0.3", "--seed", "3")
    fast_rows(tmp_path, 40)
    (tmp_path / "fast.toml").write_text("[api]\nbackoff_base_s = 0.01\nmax_retries = 10\n")
    result = run_cli(*fast_run_args(server, "--concurrency", "4"), cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert {x["status"] for x in assert_ledger_rows(tmp_path / "ledger.csv", 40)} == {"ok"}
    garbled = sum(1 for r in server.requests() if r.get("not_http"))
    retried = [e for e in result.events() if e["event"] == "retry"]
    assert garbled > 0 and {e["error_code"] for e in retried} == {"bad_response"}
    summary = result.event("run_finished")
    assert (summary["requests_sent"], summary["connection_errors"]) == (40, garbled)


def test_retries_past_the_first_few_are_counted_not_logged(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """A flaky API does not flood the terminal (SPEC section 10): the first retries are a line
    each, then one line says the rest are counted; the summary has them all."""
    server = sandbox_factory("--fail-rate", "0.5", "--seed", "2")
    fast_rows(tmp_path, 40)
    (tmp_path / "fast.toml").write_text("[api]\nbackoff_base_s = 0.01\nmax_retries = 10\n")
    result = run_cli(*fast_run_args(server, "--concurrency", "4"), cwd=tmp_path)
    assert_no_traceback(result, 0)
    names = [e["event"] for e in result.events()]
    summary = result.event("run_finished")
    assert summary["retries"] > RETRIES_LOGGED
    assert names.count("retry") == RETRIES_LOGGED and names.count("retries_counted") == 1


def test_garbage_for_every_row_in_the_pool_fails_rows_not_workers(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """Seed 1: the first request gets through within its retries, then most tries do not."""
    server = sandbox_factory("--garbage-rate", "0.8", "--seed", "1")
    fast_rows(tmp_path, 12)
    result = run_cli(*fast_run_args(server, "--concurrency", "3"), cwd=tmp_path)
    assert_no_traceback(result, 1)
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 12)
    statuses = Counter((x["status"], x["error_code"]) for x in ledger)
    assert set(statuses) <= {("ok", ""), ("failed", "bad_response")}
    assert statuses[("failed", "bad_response")] > 0


@pytest.mark.parametrize("stop", ["sigterm", "max-duration"])
def test_stop_during_the_first_request_is_not_an_abort(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer], stop: str
) -> None:
    """Every connection dropped: the first request is in its retries when the stop comes."""
    server = sandbox_factory("--drop-rate", "1")
    fast_rows(tmp_path, 5)
    (tmp_path / "fast.toml").write_text("[api]\nbackoff_base_s = 2\n")
    args = fast_run_args(server)
    if stop == "sigterm":
        process = start_run(tmp_path, args)
        wait_for_arrivals(server, 1)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=10)
        code, events = process.returncode, err
    else:
        result = run_cli(*args, "--max-duration", "0.02", cwd=tmp_path)  # 1.2 s
        code, events = result.code, result.stderr
    assert (code, "Traceback" in events) == ((143 if stop == "sigterm" else 4), False), events
    assert "run_aborted" not in events
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 5)
    assert Counter((x["status"], x["error_code"]) for x in ledger) == {
        ("failed", "connection_error"): 1,
        ("not_attempted", ""): 4,  # the drop reached it
    }


def test_wrong_base_url_costs_one_request(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 20)
    args = run_args(sandbox)
    args[args.index("--base-url") + 1] = sandbox.root + "/wrong/prefix"
    result = run_cli(*args, cwd=tmp_path)
    assert result.code == 3
    assert "does not answer like the Hindsight API" in result.event("run_aborted")["reason"]
    lines = read_ledger(tmp_path / "ledger.csv")
    assert Counter(x["status"] for x in lines) == {"failed": 1, "not_attempted": 19}


def test_unreachable_base_url_aborts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rows_csv(tmp_path, 5)
    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 1\n")
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        f"http://127.0.0.1:{port}/api/v1",
        "--config",
        "fast.toml",
        "--ledger",
        "ledger.csv",
        "--state",
        "s.sqlite",
        cwd=tmp_path,
    )
    assert result.code == 3
    assert "cannot reach the API" in result.event("run_aborted")["reason"]
    lines = read_ledger(tmp_path / "ledger.csv")
    # no connection ever opened: the server never saw a row, so none is failed; no retries
    assert Counter(x["status"] for x in lines) == {"not_attempted": 5}
    assert lines[0]["error_code"] == "connection_error" and lines[0]["attempts"] == "0"
    assert not any(e["event"] == "retry" for e in result.events())
