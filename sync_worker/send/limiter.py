"""Pacing: never more than the limit in any window, yet within half a percent of it.

Three parts, all on the event loop's clock:
- an aiolimiter bucket with room for two requests paces sends at limit/period; its small room
  absorbs the lateness of each wake-up (a bucket of one loses it, and reaches only ~0.99);
- a sliding-window guard counts the sends of the last period (retries included) and holds a
  send that would make it more than the limit: this is what makes the window strict from the
  very first second, whatever the bucket lets out;
- one shared pause: a 429 stops every worker until the server's reset, after which sends go
  out at the bucket's pace again.
Every wait ends at once when the run is told to stop (Stopped): aiolimiter's own wait can only
be cancelled, so it is raced against the stop event. No slot is granted once the stop is set or
the run's deadline (--max-duration) has passed.
From the 429s the pacer also learns when the server allows less than it was told (a lower limit
or a longer window) and adds the server's own window as a second guard: `server_limit` says
what each answer proves; every later 429 tightens the bounds, and while they are further apart
than PROBE_TOLERANCE the guard probes halfway between them (a bisection: an accepted probe
lowers the proven window to it, a refused one raises the lower bound and costs one pause; a
quarter of the way up needs fewer windows when the lower bound is close to the truth, as after
a pause that ends on a whole Unix second, but more 429s when it is not, as with whole seconds
to wait). The guard never goes below the proven lower bound, and the window reported is the
proven upper one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any

from aiolimiter import AsyncLimiter

from sync_worker.logs import get_logger
from sync_worker.send.server_limit import (
    ACCEPTED_MEMORY,
    JITTER_S,
    Learned,
    Rejection,
    ServerLimit,
    reset_resolution,
)

BUCKET_ROOM = 2
PROBE_TOLERANCE = 0.025  # probe while the learned window's bounds are further apart than this
MATERIAL_CHANGE = 0.05  # log a learned window again when it moves by more than this
LATE_S = 0.002  # a send that leaves this much after its slot is counted from when it left
# The slot of the send this task is making (loop time), for the connector to correct when the
# send leaves late (see Pacer.sent_late); a context variable, since aiohttp's connector is
# shared and only the task tells one send from another.
SLOT: ContextVar[float] = ContextVar("slot")


def window_margin(period: float) -> float:
    """Slack added to a window so jitter between our clock and the server's cannot crowd it."""
    return max(0.002 * period, 0.03)


class Window:
    """At most `limit` sends in any span of `span` seconds."""

    __slots__ = ("_sent", "limit", "span")

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit  # sends allowed per span
        self.span = span  # seconds, margin included
        self._sent: deque[float] = deque()  # send times within the last span, oldest first

    def wait_time(self, now: float) -> float:
        """Seconds until one more send fits (0 when it fits now)."""
        sent = self._sent
        while sent and now - sent[0] >= self.span:
            sent.popleft()
        if len(sent) < self.limit:
            return 0.0
        return sent[len(sent) - self.limit] + self.span - now

    def record(self, now: float) -> None:
        self._sent.append(now)

    def move(self, sent: float, now: float) -> None:
        """A send recorded at `sent` left only `now`: count it from then (`now` is later than
        every send recorded, so the times stay in order)."""
        with contextlib.suppress(ValueError):  # already out of the window: it counts anew
            self._sent.remove(sent)
        self._sent.append(now)

    def sent(self) -> tuple[float, ...]:
        """The send times it holds (within its span as of the last wait), oldest first."""
        return tuple(self._sent)


class PacedWindow(Window):
    """A Window whose sends are also at least `gap` apart: the learned guard. Workers wait for
    it holding their bucket slot, so when its room grows at once (a shorter span: a probe, a
    tighter bound) they would all go in one burst, and a 429 would find them in flight; paced
    at the bucket's own gap they go as the bucket would let them. (Pacing at span / limit
    instead costs up to a window at the end of a run: 11.8 -> 12.7 s of 300 rows at 25/s.)"""

    __slots__ = ("gap",)

    def __init__(self, limit: int, span: float, gap: float) -> None:
        super().__init__(limit, span)
        self.gap = gap  # least time between two sends

    def wait_time(self, now: float) -> float:
        wait = super().wait_time(now)
        sent = self._sent
        return max(wait, sent[-1] + self.gap - now) if sent else wait


def probe_tolerance(window: float) -> float:
    """How close the bounds must be before probing stops. A probe goes at least twice the
    jitter above the lower bound, so that a refused one raises it (by the jitter at least)
    and an accepted one lowers the upper bound (to the probe plus the jitter): each probe
    narrows the bounds, down to about three times the jitter. Four: an exact reset, whose
    bounds are its jitter and the requests in flight apart, is not probed at all."""
    return max(PROBE_TOLERANCE * window, 4 * JITTER_S)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when the run is told to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def unless_stopped(stop: asyncio.Event, awaitable: Awaitable[Any]) -> bool:
    """Await `awaitable` unless the run is told to stop first; the loser is cancelled.

    For waits that cannot be told to stop (aiolimiter's acquire, an event): True if it finished.
    Two tasks a call, so only for waits, never for the path that does not wait."""
    task = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished = task.done()
        task.cancel()
        stopping.cancel()
    if finished:
        task.result()  # its exception, if it ended with one
    return finished


class Stopped(Exception):
    """The run was told to stop while a send waited for its slot."""


class Pacer:
    """Shared by every worker of a run: `await acquire()` before each request."""

    __slots__ = (
        "_accepted",
        "_bucket",
        "_guards",
        "_limits",
        "_log",
        "_loop",
        "_paused_until",
        "_probing",
        "_resuming",
        "_stop",
        "deadline",
        "learned",
        "limit",
        "period",
        "unix_clock",
    )

    def __init__(self, limit: int, period: float, stop: asyncio.Event | None = None) -> None:
        self._stop = stop or asyncio.Event()  # set: waiting sends give up (raise Stopped)
        self.deadline = math.inf  # loop time from which no slot is granted (--max-duration)
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, once known
        self.limit = limit  # requests per period, as configured
        self.period = period  # seconds
        self._bucket = AsyncLimiter(BUCKET_ROOM, BUCKET_ROOM * period / limit)
        self._guards = [Window(limit, period + window_margin(period))]
        self._paused_until = 0.0  # loop time before which nothing is sent
        self._resuming = False  # a pause just ended: its first send must fill the bucket
        self._limits = ServerLimit()  # what the server's answers prove about its own limit
        self._accepted = self._limits.accepted  # send times the server accepted, sorted
        self.learned: Learned | None = None  # the server's own limit, once learned
        self._probing = False  # the learned guard paces between the bounds, to narrow them
        self._log = get_logger()
        self.unix_clock = time.time  # the clock a Unix X-RateLimit-Reset was read against

    def _now(self) -> float:
        """The event loop's clock: the one aiolimiter and call_later use."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    async def acquire(self) -> float:
        """Wait for a slot and claim it; returns the send time (loop clock).

        Raises Stopped if the run is told to stop while waiting, or is past its deadline."""
        bucket = self._bucket
        if bucket.has_capacity(1):  # the hot path, without a coroutine of its own
            await bucket.acquire(1)  # returns without waiting
        else:
            await self._take_bucket(1)
        while True:
            now = self._now()
            if self._stop.is_set() or now >= self.deadline:
                self._stop.set()  # at the deadline, before its timer: no send starts after it
                raise Stopped
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                await self._resume()
                continue
            guards = self._guards
            wait = (
                guards[0].wait_time(now)
                if len(guards) == 1
                else max([guard.wait_time(now) for guard in guards])
            )
            if wait <= 0:
                for guard in self._guards:
                    guard.record(now)
                return now
            await self._sleep(wait)

    async def _take_bucket(self, amount: int) -> None:
        """The bucket's room: at once when it has it (the hot path), else raced against stop."""
        bucket = self._bucket
        if bucket.has_capacity(amount):
            await bucket.acquire(amount)  # returns without waiting
        elif not await unless_stopped(self._stop, bucket.acquire(amount)):
            raise Stopped

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless_stopped(self._stop, seconds)

    async def _resume(self) -> None:
        """After a pause, sends resume at the bucket's pace, one by one: the first takes the
        whole bucket, so the drained room cannot let a burst out at the reset."""
        if self._resuming:
            self._resuming = False
            await self._take_bucket(BUCKET_ROOM)
        else:
            await self._take_bucket(1)

    def already_sent(self, times: tuple[float, ...]) -> None:
        """Requests the run sent before this pacer (loop clock, oldest first): the window holds
        them too."""
        for guard in self._guards:
            for sent in times:
                guard.record(sent)

    def accepted(self, sent_at: float) -> None:
        """The server took a request sent at `sent_at` (any answer but 429)."""
        accepted = self._accepted
        bisect.insort(accepted, sent_at)
        if len(accepted) > ACCEPTED_MEMORY:
            self._limits.trim()
        if self._probing:
            self._probe_answered(sent_at)

    def rate_limited(self, wait_s: float, sent_at: float) -> Learned | None:
        """A 429 for the request sent at `sent_at`, whose reset is `wait_s` away: pause
        everyone, and learn from it.

        Returns the learned limit when this 429 changed it materially (it is logged)."""
        now = self._now()
        reset = now + wait_s
        self._paused_until = max(self._paused_until, reset)
        self._resuming = True
        resolution = reset_resolution(wait_s, self.unix_clock())
        in_flight = tuple(self._limits.pending(self._guards[0].sent()))
        self._limits.reject(Rejection(sent_at, reset, now - sent_at, resolution, in_flight))
        return self._relearn(now)

    def _probe_answered(self, sent_at: float) -> None:
        """An accepted probe proves a shorter window: learn it (cheap check first)."""
        learned, accepted = self.learned, self._accepted
        if learned is None:
            return
        i = bisect.bisect_left(accepted, sent_at)
        if i >= learned.limit and (
            accepted[i] - accepted[i - learned.limit] + JITTER_S < learned.window_s
        ):
            self._relearn(self._now())

    def _relearn(self, now: float) -> Learned | None:
        """Estimate again, set the guard to match; log and return a material change."""
        before, learned = self.learned, self._limits.estimate()
        if learned is not None and not self._stricter(learned):
            learned = None
        if learned is None:  # never back to the configured pace once the server proved slower
            learned = before
        self.learned = learned
        self._set_guard(now)
        if learned is None or not _material(before, learned):
            return None
        self._log.warning(
            "server_limit_learned",
            limit=learned.limit,
            window_s=round(learned.window_s, 3),
            window_at_least_s=round(learned.window_min_s, 3),
            requests_per_minute=round(learned.per_minute, 1),
            probing=self._probing,
            message="the server allows less than configured; pacing to its limit from now on",
        )
        return learned

    def _stricter(self, learned: Learned) -> bool:
        """Pointless unless it holds back something the configured guard lets through."""
        return learned.limit < self.limit or learned.per_minute < self.limit * 60 / self.period

    def _set_guard(self, now: float) -> None:
        """The learned guard: its proven window (and margin), or while the bounds are far
        apart a probe halfway between them; it starts with what the server's window may hold
        now, and keeps the bucket's gap between sends."""
        learned, configured = self.learned, self._guards[0]
        if learned is None:
            self._guards, self._probing = [configured], False
            return
        span = learned.window_s + window_margin(learned.window_s)
        self._probing = learned.window_s - learned.window_min_s > probe_tolerance(span)
        if self._probing:  # no margin: an accepted probe proves the window <= span + jitter
            low = max(learned.window_min_s, 0.0)  # a refused one: the window > span - jitter,
            span = max((low + learned.window_s) / 2, low + 2 * JITTER_S)  # halfway
        guard = PacedWindow(learned.limit, span, gap=self.period / self.limit)
        for sent_at in self._held(now - guard.span):
            guard.record(sent_at)
        self._guards = [configured, guard]

    def now(self) -> float:
        """The clock sends are paced on (the event loop's)."""
        return self._now()

    def rate_per_s(self) -> float:
        """The rate sends are paced to now: the configured one, or the server's once learned."""
        if self.learned is not None:
            return self.learned.limit / self.learned.window_s
        return self.limit / self.period

    def sent_late(self, slot: float, now: float) -> None:
        """A send granted its slot at `slot` left only `now` (a new connection was opened first,
        a TLS handshake made): the server counts it from its arrival, so the windows do too.
        Without this, a pool growing mid-run would crowd the next window by every handshake."""
        for guard in self._guards:
            guard.move(slot, now)

    def _held(self, since: float) -> list[float]:
        """Our sends since `since` the server may count: every send the configured guard holds
        (refused ones too: that only holds back more), and the accepted ones before them."""
        recent = [t for t in self._guards[0].sent() if t >= since]
        horizon = recent[0] if recent else math.inf
        accepted = self._accepted
        older = accepted[
            bisect.bisect_left(accepted, since) : bisect.bisect_left(accepted, horizon)
        ]
        return older + recent


def _material(before: Learned | None, after: Learned) -> bool:
    if before is None or before.limit != after.limit:
        return True
    return abs(after.window_s - before.window_s) > MATERIAL_CHANGE * before.window_s
