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
or a longer window) and adds the server's own window as a second guard.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
from collections import deque
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiolimiter import AsyncLimiter

BUCKET_ROOM = 2
MIN_LEARNING_SAMPLES = 10  # learn only from a cycle holding at least this many accepted sends
ACCEPTED_MEMORY = 20_000  # accepted send times kept for learning
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


@dataclass(frozen=True)
class Learned:
    limit: int
    window_s: float

    @property
    def per_minute(self) -> float:
        return self.limit * 60.0 / self.window_s


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
        "_loop",
        "_paused_once",
        "_paused_until",
        "_resuming",
        "_stop",
        "deadline",
        "learned",
        "limit",
        "period",
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
        self._paused_once = False  # a 429 pause has happened: later 429s may teach us
        self._resuming = False  # a pause just ended: its first send must fill the bucket
        self._accepted: list[float] = []  # send times of requests the server accepted
        self.learned: Learned | None = None  # the server's own limit, once learned

    def _now(self) -> float:
        """The event loop's clock: the one aiolimiter and call_later use."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    async def acquire(self) -> float:
        """Wait for a slot and claim it; returns the send time (loop clock).

        Raises Stopped if the run is told to stop while waiting, or is past its deadline."""
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
            wait = max([guard.wait_time(now) for guard in self._guards])
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

    def accepted(self, sent_at: float) -> None:
        """The server took a request sent at `sent_at` (any answer but 429)."""
        bisect.insort(self._accepted, sent_at)
        if len(self._accepted) > ACCEPTED_MEMORY:
            del self._accepted[: ACCEPTED_MEMORY // 2]

    def rate_limited(self, wait_s: float) -> Learned | None:
        """A 429 whose reset is `wait_s` away: pause everyone; maybe learn the server's limit.

        Returns the newly learned limit, if this 429 taught one."""
        now = self._now()
        reset = now + wait_s
        self._paused_until = max(self._paused_until, reset)
        self._resuming = True
        learned = self._learn(now, reset) if self._paused_once else None
        self._paused_once = True
        return learned

    def _learn(self, now: float, reset: float) -> Learned | None:
        """Find the server's window from our own accepted sends.

        At a 429 the server's window is full and frees its oldest entry at `reset`. The oldest
        request still in the window is the first after a gap in our sends at least as long as
        the wait (our previous pause): everything before that gap has left the window. Cycles
        with few samples (a window still holding an earlier run's requests) teach nothing."""
        need = reset - now
        sent = self._accepted
        for j in range(len(sent) - 1, 0, -1):
            if sent[j] - sent[j - 1] >= need:
                count, window = len(sent) - j, reset - sent[j]
                break
        else:
            return None
        if count < MIN_LEARNING_SAMPLES or count / window >= self._allowed_rate():
            return None
        self.learned = Learned(count, window)
        guard = Window(count, window + window_margin(window))
        for sent_at in sent[j:]:  # what the server's window holds now
            guard.record(sent_at)
        self._guards = [self._guards[0], guard]
        return self.learned

    def _allowed_rate(self) -> float:
        if self.learned is not None:
            return self.learned.limit / self.learned.window_s
        return self.limit / self.period

    def now(self) -> float:
        """The clock sends are paced on (the event loop's)."""
        return self._now()

    def rate_per_s(self) -> float:
        """The rate sends are paced to now: the configured one, or the server's once learned."""
        return self._allowed_rate()

    def sent_late(self, slot: float, now: float) -> None:
        """A send granted its slot at `slot` left only `now` (a new connection was opened first,
        a TLS handshake made): the server counts it from its arrival, so the windows do too.
        Without this, a pool growing mid-run would crowd the next window by every handshake."""
        for guard in self._guards:
            guard.move(slot, now)
