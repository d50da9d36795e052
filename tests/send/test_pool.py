"""The adaptive pool (pool.py, sender.py) and sends that leave late (connector.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import (
    Result,
    SandboxServer,
    read_ledger,
    run_cli,
    set_latency,
    start_run,
    wait_for_arrivals,
    write_csv,
)

from sync_worker.send.connector import PacedConnector
from sync_worker.send.limiter import SLOT, Pacer, Window, window_margin
from sync_worker.send.pool import HEADROOM, MAX_AGE_S, RECENT, SPARE, Latencies, PoolSize, needed

# --- sizing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "latency", "workers"),
    [
        (1000 / 60, 2.0, math.ceil(1000 / 60 * 2.0 * HEADROOM) + SPARE),
        (1000 / 60, 0.001, 1 + SPARE),
        (1 / 60, 0.2, 1 + SPARE),
        (0.0, 5.0, SPARE),
    ],
    ids=["enterprise-slow-api", "loopback", "one-a-minute", "no-rate"],
)
def test_needed_is_rate_times_latency_with_headroom(
    rate: float, latency: float, workers: int
) -> None:
    assert needed(rate, latency) == workers
    assert needed(rate, latency) >= rate * latency  # Little's law: enough to fill the rate


def test_needed_stays_a_number_for_an_absurd_rate() -> None:
    assert needed(1000 / 1e-300, 1.0) == 10**9 + SPARE  # a window of 1e-300 s is allowed


@pytest.mark.parametrize(
    ("samples", "share", "expected"),
    [
        ([0.1] * 19 + [2.0], 0.95, 0.1),
        ([0.1] * 18 + [2.0] * 2, 0.95, 2.0),
        ([0.3], 0.5, 0.3),
        ([0.1, 0.2, 0.3, 0.4], 0.5, 0.2),
    ],
    ids=["one-slow-in-20-is-the-5pct-tail", "two-slow-in-20", "one-sample", "median"],
)
def test_latency_quantile(samples: list[float], share: float, expected: float) -> None:
    latencies = Latencies()
    for sample in samples:
        latencies.observe(100.0, sample)
    assert latencies.quantile(share, 100.0) == expected


def test_latency_quantile_is_of_the_last_hundred_answers_of_the_last_minute() -> None:
    latencies = Latencies()
    latencies.observe(0.0, 9.0)
    latencies.observe(5.0, 0.1)
    assert latencies.quantile(0.95, 5.0) == 9.0
    assert latencies.quantile(0.95, MAX_AGE_S + 1.0) == 0.1  # the 9 s answer is too old
    assert latencies.quantile(0.95, MAX_AGE_S + 6.0) is None
    for _ in range(RECENT - 1):
        latencies.observe(6.0, 0.1)
    assert latencies.quantile(1.0, 6.0) == 0.1  # the 9 s answer is more than a hundred ago


def _feed(size: PoolSize, now: float, latency: float, count: int = 50) -> None:
    for _ in range(count):
        size.latencies.observe(now, latency)


def test_pool_grows_at_once_when_latency_rises_and_says_so() -> None:
    size = PoolSize(None, maximum=256, initial=2)
    _feed(size, 1.0, 2.0)
    change = size.update(20.0, now=1.0)
    assert size.target == needed(20.0, 2.0) == 52
    assert change is not None and (change.previous, change.workers) == (2, 52)
    assert change.latency_s == 2.0 and not size.capped


def test_pool_shrinks_only_when_the_need_falls_well_below_it() -> None:
    size = PoolSize(None, maximum=256, initial=2)
    _feed(size, 0.0, 2.0)
    size.update(20.0, now=0.0)
    _feed(size, 4.0, 1.6, count=RECENT)  # need 42 of 52: not worth shrinking for
    size.update(20.0, now=4.0)
    assert size.latency == 1.6 and size.target == 52
    _feed(size, 30.0, 0.05, count=RECENT)  # need 4
    change = size.update(20.0, now=30.0)
    assert size.target == needed(20.0, 0.05) == 4
    assert change is not None and change.previous == 52


def test_pool_remembers_a_slow_spell_for_a_hundred_answers() -> None:
    size = PoolSize(None, maximum=256, initial=2)
    _feed(size, 0.0, 2.0, count=10)
    size.update(20.0, now=0.0)
    _feed(size, 1.0, 0.05, count=RECENT - 10)  # the ten slow ones are still the 5% tail
    size.update(20.0, now=1.0)
    assert size.target == 52
    _feed(size, 2.0, 0.05, count=10)
    size.update(20.0, now=2.0)
    assert size.target == 4


def test_a_latency_step_moves_the_pool_once_not_back_and_forth() -> None:
    """A window of answers that depended on the latency it measured flapped 190 -> 3 -> 190."""
    size = PoolSize(None, maximum=256, initial=2)
    targets = []
    for tick in range(200):  # 50 s at 40 answers a second: 10 ms, then 3 s from the 20th s
        now = tick * 0.25
        _feed(size, now, 0.01 if now < 20 else 3.0, count=10)
        size.update(100 / 2, now)
        targets.append(size.target)
    changes = [b for a, b in itertools.pairwise(targets) if a != b]
    assert changes == [needed(50, 3.0)]


def test_pool_never_exceeds_its_maximum_and_knows_it_is_capped() -> None:
    size = PoolSize(None, maximum=16, initial=2)
    _feed(size, 0.0, 3.0)
    size.update(1000 / 60, now=0.0)
    assert size.target == 16 and size.capped  # 16 at 3 s: 320 a minute of the 1,000


def test_a_maximum_that_reaches_the_rate_is_not_capped() -> None:
    """Capped means the maximum cannot keep the rate, not that it is below the headroom."""
    size = PoolSize(2, maximum=256, initial=2)
    _feed(size, 0.0, 0.017)
    size.update(10.0, now=0.0)  # 2 in flight at 17 ms: 117 a second, 10 needed
    assert not size.capped


def test_fixed_pool_never_moves_but_knows_when_it_is_too_small() -> None:
    size = PoolSize(4, maximum=256, initial=2)
    assert (size.target, size.maximum) == (4, 4)
    _feed(size, 0.0, 2.0)
    assert size.update(20.0, now=0.0) is None
    assert size.target == 4 and size.capped


def test_small_moves_are_not_logged() -> None:
    size = PoolSize(None, maximum=256, initial=50)
    _feed(size, 0.0, 2.0)
    assert size.update(20.0, now=0.0) is None  # 50 -> 52: not news
    assert size.target == 52


# --- sends that leave late -----------------------------------------------------------------


def test_a_late_send_counts_in_the_window_from_when_it_left() -> None:
    window = Window(limit=2, span=1.0)
    window.record(0.0)
    window.record(0.1)
    assert window.wait_time(0.5) == pytest.approx(0.5)
    window.move(0.0, 0.4)  # the send of 0.0 left at 0.4 (a new connection first)
    assert window.wait_time(0.5) == pytest.approx(0.6)  # the 0.1 send frees the first slot
    window.move(0.1, 0.45)
    assert window.wait_time(0.5) == pytest.approx(0.9)


def test_moving_a_send_already_out_of_the_window_counts_it_anew() -> None:
    window = Window(limit=1, span=1.0)
    window.record(0.0)
    assert window.wait_time(1.5) == 0.0  # drops the 0.0 send
    window.move(0.0, 1.5)
    assert window.wait_time(1.6) == pytest.approx(0.9)


@pytest.mark.timing
def test_connector_tells_the_pacer_when_a_new_connection_delays_a_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handshake of 100 ms between slot and send: the next slot of a one-a-period window is a
    period after the send left, not after its slot."""
    handshake = 0.1
    original = aiohttp.TCPConnector._create_connection

    async def slow_handshake(self: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(handshake)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", slow_handshake)

    async def accept(request: web.Request) -> web.Response:
        return web.json_response({})

    async def scenario() -> tuple[float, float, float]:
        app = web.Application()
        app.router.add_patch("/x", accept)
        period = 0.2
        pacer = Pacer(1, period)
        async with (
            TestServer(app, host="127.0.0.1") as server,
            aiohttp.ClientSession(connector=PacedConnector(pacer)) as session,
        ):
            slot = await pacer.acquire()
            SLOT.set(slot)
            async with session.patch(server.make_url("/x")) as response:
                await response.read()
            left = SLOT.get()
            second = await pacer.acquire()  # the connection is open now: no delay
        return slot, left, second - left - period - window_margin(period)

    slot, left, early = asyncio.run(scenario())
    assert left - slot >= handshake
    assert early >= -0.005  # not granted before a whole window after the send left


# --- through the command line, against the sandbox ------------------------------------------

HEADER = ["interview_id", "contact_name"]


def _rows(folder: Path, count: int) -> None:
    write_csv(folder / "in.csv", HEADER, [[i, f"N{i}"] for i in range(1, count + 1)])


def _args(server: SandboxServer, limit: int, *extra: str) -> list[str]:
    return [
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "ledger.csv",
        "--rate-limit",
        str(limit),
        "--rate-period",
        "1",
        *extra,
    ]


def _run(folder: Path, server: SandboxServer, limit: int, *extra: str) -> Result:
    return run_cli(*_args(server, limit, *extra), cwd=folder)


@pytest.mark.timing
@pytest.mark.slow
def test_pool_grows_with_latency_shrinks_after_it_and_the_window_holds(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """40 a second. At 10 ms the pool stays small; at 1 s +- 200 ms Little's law needs 40 in
    flight (the old fixed pool, sized for 500 ms, allowed 31); back at 10 ms it shrinks."""
    server = sandbox_factory("--rate-limit", "40", "--rate-period", "1", "--latency-ms", "10")
    _rows(tmp_path, 400)
    process = start_run(tmp_path, _args(server, 40))
    wait_for_arrivals(server, 40)
    set_latency(server, 1000, 200)
    wait_for_arrivals(server, 160)
    set_latency(server, 10, 5)  # six seconds of rows left: time for three round trips
    out, err = process.communicate(timeout=60)
    result = Result(process.returncode, out, err)
    assert result.code == 0, result.stderr
    log = server.requests()
    assert [r for r in log if r["status"] != 200] == []  # no 429: the window held
    assert len(log) == 400
    assert {row["status"] for row in read_ledger(tmp_path / "ledger.csv")} == {"ok"}
    assert max(r["in_flight"] for r in log) > 31
    sizes = [(e["previous"], e["workers"]) for e in result.events() if e["event"] == "pool_resized"]
    assert max(workers for _previous, workers in sizes) > 31  # the log shows the growth
    assert any(workers < previous for previous, workers in sizes[1:]), sizes
    end = result.event("pool_summary")
    # Little's law at 1 s, on the workers that ran: the log skips moves under 20% (51 -> 61)
    assert end["workers_peak"] >= needed(40, 1.0)
    assert end["latency_p95_ms"] < 100 and not end["fixed"]


def test_max_concurrency_caps_the_pool_and_says_what_to_expect(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    server = sandbox
    set_latency(server, 300, 50)
    (tmp_path / "sync.toml").write_text("[api]\nmax_concurrency = 5\n")
    _rows(tmp_path, 40)
    result = _run(tmp_path, server, 100, "--config", "sync.toml")
    assert result.code == 0, result.stderr
    assert max(r["in_flight"] for r in server.requests()) <= 5
    warning = result.event("pool_at_max")
    assert warning["workers"] == 5 and warning["needed"] > 5
    assert "max_concurrency 5 requests in flight reach about" in warning["message"]
    assert "raise [api] max_concurrency" in warning["message"]
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    assert summary["workers_peak"] == 5 and summary["latency_p95_ms"] >= 200


def test_concurrency_fixes_the_pool(tmp_path: Path, sandbox: SandboxServer) -> None:
    server = sandbox
    set_latency(server, 200)
    _rows(tmp_path, 30)
    result = _run(tmp_path, server, 100, "--concurrency", "3")
    assert result.code == 0, result.stderr
    assert max(r["in_flight"] for r in server.requests()) <= 3
    assert not [e for e in result.events() if e["event"] == "pool_resized"]
    assert "concurrency 3 requests in flight reach" in result.event("pool_at_max")["message"]
    assert result.event("pool_summary")["fixed"] is True
    assert result.event("run_started")["concurrency"] == 3


def test_a_fast_api_keeps_the_pool_small(tmp_path: Path, sandbox: SandboxServer) -> None:
    _rows(tmp_path, 200)
    result = _run(tmp_path, sandbox, 1000)
    assert result.code == 0, result.stderr
    assert not [e for e in result.events() if e["event"] == "pool_at_max"]
    assert result.event("pool_summary")["workers_peak"] <= needed(1000, 0.05)
    assert result.event("run_started")["concurrency"] == "adaptive"
