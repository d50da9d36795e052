"""The pacer: on the real event loop with shrunk windows (fractions of a second, marked
`timing`), and learning the server's limit on a virtual clock (no sleeping)."""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from collections import deque

import pytest
from helpers import StrictWindow

from sync_worker.send.limiter import BUCKET_ROOM, Pacer, Stopped, Window, window_margin


def most_in_any_window(times: list[float], span: float) -> int:
    return max(sum(1 for t in times if start <= t < start + span) for start in times)


def test_window_holds_the_send_past_the_limit() -> None:
    window = Window(limit=2, span=1.0)
    window.record(10.0)
    assert window.wait_time(10.1) == 0
    window.record(10.1)
    assert window.wait_time(10.5) == pytest.approx(0.5)
    assert window.wait_time(11.0) == 0  # the first send has left the window


async def _send(pacer: Pacer, count: int, workers: int) -> list[float]:
    times: list[float] = []
    queue = deque(range(count))

    async def worker() -> None:
        while queue:
            queue.popleft()
            times.append(await pacer.acquire())

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sorted(times)


@pytest.mark.timing
def test_strict_from_the_first_window_and_close_to_the_limit() -> None:
    limit, period = 25, 0.5
    times = asyncio.run(_send(Pacer(limit, period), count=100, workers=8))
    assert most_in_any_window(times, period) <= limit
    assert times[: BUCKET_ROOM + 1][-1] - times[0] > 0  # no whole-window burst at the start
    assert most_in_any_window(times, period / 5) <= limit / 5 + BUCKET_ROOM
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert achieved >= 0.9 * limit / period  # loose here; `make bench` measures the 0.995


@pytest.mark.timing
def test_a_429_pauses_everyone_then_resumes_at_the_pace() -> None:
    async def scenario() -> tuple[float, list[float]]:
        pacer = Pacer(100, 1.0)
        await pacer.acquire()
        paused_at = asyncio.get_running_loop().time()
        pacer.rate_limited(0.3, paused_at)
        return paused_at, await _send(pacer, count=10, workers=10)

    paused_at, times = asyncio.run(scenario())
    assert times[0] >= paused_at + 0.3
    assert most_in_any_window(times, 0.01) <= BUCKET_ROOM  # not all ten at once


@pytest.mark.timing
@pytest.mark.parametrize(
    ("server_limit", "server_span"),
    [(10, 0.5), (20, 1.0)],
    ids=["lower-limit", "longer-window"],
)
def test_learns_the_servers_limit(server_limit: int, server_span: float) -> None:
    count = 50

    async def scenario() -> tuple[Pacer, StrictWindow, float]:
        pacer, server = Pacer(40, 0.5), StrictWindow(server_limit, server_span)
        loop = asyncio.get_running_loop()
        start = loop.time()
        remaining = count
        while remaining:
            sent_at = await pacer.acquire()
            reset = server.answer(sent_at)
            if reset is None:
                pacer.accepted(sent_at)
                remaining -= 1
            else:
                pacer.rate_limited(reset - sent_at, sent_at)
        return pacer, server, loop.time() - start

    pacer, server, elapsed = asyncio.run(scenario())
    assert pacer.learned is not None
    assert pacer.learned.limit == server_limit
    assert pacer.learned.window_s == pytest.approx(server_span, abs=0.05)
    assert len(server.pauses) <= 3  # learned after the second pause; no wall every window
    windows = math.ceil(count / server_limit)
    least = (windows - 1) * server_span
    assert elapsed <= 1.2 * least + window_margin(server_span) * windows


@pytest.mark.timing
def test_does_not_learn_from_a_few_samples() -> None:
    async def scenario() -> Pacer:
        pacer = Pacer(40, 0.5)
        for _ in range(3):  # a window still full of an earlier run's requests: 429 at once
            sent_at = await pacer.acquire()
            pacer.accepted(sent_at)
        pacer.rate_limited(0.05, await pacer.acquire())
        await asyncio.sleep(0.06)
        sent_at = await pacer.acquire()
        pacer.accepted(sent_at)
        pacer.rate_limited(0.05, await pacer.acquire())
        return pacer

    assert asyncio.run(scenario()).learned is None


@pytest.mark.timing
@pytest.mark.parametrize("waiting_for", ["bucket", "bucket-after-429"])
def test_a_stop_ends_a_wait_for_a_slot_at_once(waiting_for: str) -> None:
    """aiolimiter's wait cannot be told to stop: it is raced against the stop event."""

    async def scenario() -> float:
        stop = asyncio.Event()
        pacer = Pacer(2, 20.0, stop)  # past its room, the bucket lets one out every 10 s
        loop = asyncio.get_running_loop()
        if waiting_for == "bucket":
            for _ in range(BUCKET_ROOM):
                await pacer.acquire()
        else:  # the first send after a pause takes the whole bucket: ~10 s from here
            pacer.rate_limited(0.01, await pacer.acquire())
        loop.call_later(0.05, stop.set)
        begin = loop.time()
        with pytest.raises(Stopped):
            await pacer.acquire()
        return loop.time() - begin

    assert asyncio.run(scenario()) < 1.0  # not the bucket's 10 s


@pytest.mark.timing
def test_no_slot_is_granted_past_the_deadline() -> None:
    async def scenario() -> tuple[list[float], float, bool]:
        stop = asyncio.Event()
        pacer = Pacer(10, 1.0, stop)  # a slot every 0.1 s
        pacer.deadline = asyncio.get_running_loop().time() + 0.25
        granted = []
        with pytest.raises(Stopped):
            while True:
                granted.append(await pacer.acquire())
        return granted, pacer.deadline, stop.is_set()

    granted, deadline, stopped = asyncio.run(scenario())
    assert granted and all(t < deadline for t in granted)
    assert stopped  # the others stop too, without waiting for the deadline's timer


class VirtualClock(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer instead of sleeping: seconds of
    pacing in milliseconds, the same answers on any machine. Time also moves a microsecond at
    every turn, as on a real loop (aiolimiter's float checks can disagree by a rounding error
    until it does)."""

    def __init__(self) -> None:
        loop = self

        class Selector(selectors.DefaultSelector):
            def select(self, timeout: float | None = None) -> list[tuple[object, int]]:
                loop.now += max(timeout or 0.0, 1e-6)
                return list(super().select(0))

        super().__init__(Selector())
        self.now = 1000.0

    def time(self) -> float:
        return self.now


async def _sync(pacer: Pacer, server: StrictWindow, rows: int, workers: int, jitter: float) -> int:
    """Every row through the pacer to the server, retried after its 429s; how many sends."""
    loop, rng = asyncio.get_running_loop(), random.Random(3)
    pacer.unix_clock = lambda: loop.time() + server.clock_offset
    queue, sends = deque(range(rows)), [0]

    async def worker() -> None:
        while queue:
            row = queue.popleft()
            sent_at = await pacer.acquire()
            sends[0] += 1
            await asyncio.sleep(rng.uniform(0, jitter))  # on its way to the server
            now = loop.time()
            reset = server.answer(now)
            if reset is None:
                pacer.accepted(sent_at)
            else:
                pacer.rate_limited(reset - now, sent_at)
                queue.appendleft(row)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sends[0]


@pytest.mark.parametrize(
    ("limit", "window", "whole_seconds", "told", "jitter"),
    [
        (20, 2.0, False, (40, 1.0), 0.0),
        (20, 2.0, True, (20, 1.0), 0.0),
        (25, 1.0, False, (50, 1.0), 0.0),
        (25, 3.0, True, (25, 1.0), 0.0),
        (20, 2.0, True, (40, 1.0), 0.0),
        (20, 2.0, True, (40, 1.0), 0.015),
    ],
    ids=[
        "fractional-resets",
        "whole-second-resets",
        "lower-limit",
        "longer-window",
        "both",
        "jitter",
    ],
)
def test_learns_and_converges_on_a_virtual_clock(
    limit: int, window: float, whole_seconds: bool, told: tuple[int, float], jitter: float
) -> None:
    """Told more than the server allows: every row arrives, nothing is sent while a 429's
    reset holds, a few 429s in all (none at every window), and the window learned ends within
    5% of the truth, never under it."""
    loop = VirtualClock()
    server = StrictWindow(limit, window, whole_seconds, clock_offset=1_764_000_000.37)
    pacer = Pacer(*told)
    try:
        loop.run_until_complete(_sync(pacer, server, 12 * limit, workers=8, jitter=jitter))
    finally:
        loop.close()
    assert not [t for t in server.arrivals for at, reset in server.pauses if at < t < reset]
    assert len(server.pauses) <= 6
    assert pacer.learned is not None and pacer.learned.limit == limit
    assert window <= pacer.learned.window_s <= 1.05 * window
