"""The API not answering, or something else answering in its place: a run-level pause shared
by every worker, not a row failure.

The API is gone when a connection cannot be opened (nothing listens: no request of the row went
out, so no retry of its is spent), or when a few requests in a row get no answer (dropped, timed
out) with no answer in between; one dropped connection among many answers is not an outage, and
its row just retries. A load balancer or proxy in trouble answers instead, with 5xx or pages
that are not the API's: every answer like that from the start of the run, or many in a row
later, is an outage too (a random 5xx among good answers is not). While the API is gone nothing
is sent but one probe at a time, each a row's own request, after a capped exponential backoff.
The first good answer ends the outage and every worker goes on, no row the worse for it.

The outage is timed from the moment the first request of it left, not from when it showed: a
request that hangs counts from the start of its wait, so `max_s` bounds the run's wait, not
max_s on top of a timeout or three (`watch` gives up while requests still hang).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from sync_worker.logs import get_logger
from sync_worker.send.limiter import Stopped, sleep_unless_stopped, unless_stopped

OUTAGE_AFTER = 3  # requests in a row that went out and got no answer that make an outage
BAD_ANSWERS_AFTER = 10  # 5xx or answers not the API's in a row that make one, once the API
# answered well (a 25% random 5xx rate gives ten in a row once in a million); before that,
# OUTAGE_AFTER of them do: nothing has shown that the API is there
WATCH_EVERY_S = 0.1  # how often `watch` looks at how long the API has been silent
PROBE_BASE_S = 0.2  # the first probe's backoff; doubled for each probe that got no answer
PROBE_CAP_S = 10.0  # the longest wait between two probes


def probe_delay(probes: int) -> float:
    """Backoff before the next probe, after `probes` probes got no answer: half fixed, half
    random, so many workers restarted together do not probe in step."""
    ceiling = min(PROBE_CAP_S, PROBE_BASE_S * 2.0**probes)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Outage:
    """Shared by every worker of a run: `turn()` before each send while `down_since` is set."""

    __slots__ = (
        "_bad",
        "_changed",
        "_give_up",
        "_good_seen",
        "_loop",
        "_probe_out",
        "_probes",
        "_stop",
        "_streak",
        "down_since",
        "last_error",
        "max_s",
        "since",
        "watching",
    )

    def __init__(
        self, max_s: float, stop: asyncio.Event, give_up: Callable[[float], None] | None = None
    ) -> None:
        self.max_s = max_s  # the longest outage the run waits out
        self.watching = False  # off while the first request goes alone: it is judged by itself
        self.down_since: float | None = None  # loop time the outage began; None: API answering
        self._streak = 0  # requests in a row that got no answer
        self._bad = 0  # requests in a row that got no answer, a 5xx or an answer not the API's
        self._good_seen = False  # the API has answered well in this run
        # loop time the first request left that has had no good answer since (None: the last
        # request to end got one): an outage, if this becomes one, is timed from here
        self.since: float | None = None
        self.last_error = ""  # what the last request without a good answer got, for messages
        self._probe_out = False  # a probe holds the turn (waiting for its time, or in flight)
        self._probes = 0  # probes of this outage that got no answer: the backoff grows with them
        self._changed = asyncio.Event()  # set, then replaced, when the outage ends or a probe fails
        self._stop = stop  # set: every wait ends (raises Stopped)
        self._give_up = give_up  # called with the outage's length when it outlasts max_s
        self._loop: asyncio.AbstractEventLoop | None = None

    def _now(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def sending(self) -> None:
        """A request leaves: if no good answer comes, the silence counts from now."""
        if self.since is None:
            self.since = self._now()

    def answered(self) -> None:
        """The API answered well (its answer or its error, even a 429; or garbage, which a
        retry clears): the API is there."""
        self._streak = self._bad = 0
        self._good_seen = True
        self.since = None
        if self.down_since is not None:
            self._end()

    def no_answer(self, probe: bool, sent: bool, error: str) -> bool:
        """Count a request that got no answer (`sent`: it went out; else no connection opened).
        True while an outage is on: the row waits it out and is not charged a retry."""
        if not self.watching and not sent:  # the first request, refused: judged by itself
            return False
        self._streak += 1
        self._bad += 1
        return self._count(probe, error, not sent or self._streak >= OUTAGE_AFTER or self._worn())

    def bad_answer(self, probe: bool, error: str) -> bool:
        """Count a 5xx or an answer that is not the API's (`error` names it). True while an
        outage is on."""
        self._streak = 0
        self._bad += 1
        return self._count(probe, error, self._worn())

    def _worn(self) -> bool:
        """Enough requests in a row without a good answer, of any kind, to call it an outage."""
        return self._bad >= (BAD_ANSWERS_AFTER if self._good_seen else OUTAGE_AFTER)

    def _count(self, probe: bool, error: str, begins: bool) -> bool:
        self.last_error = error
        if probe:  # the next waiter probes, after a longer backoff
            self._probe_out = False
            self._probes += 1
            self._log_probe(error)
            self._wake()
        elif self.down_since is None and begins:
            self._begin(error)
        return self.down_since is not None

    async def watch(self) -> None:
        """Give the run up once no good answer has come for max_s since a request left, even
        while requests still wait for theirs (a hang). Runs until the run stops."""
        while not self._stop.is_set():
            since = self.since
            if since is not None and self._now() - since >= self.max_s:
                self._gave_up(self._now() - since)
                return
            wait = WATCH_EVERY_S if since is None else since + self.max_s - self._now()
            await sleep_unless_stopped(self._stop, min(max(wait, 0.0), WATCH_EVERY_S))

    def _gave_up(self, down_s: float) -> None:
        if self._give_up is not None:
            self._give_up(down_s)
        self._stop.set()

    async def turn(self) -> bool:
        """Wait while the API is gone; True if this request is the probe (send it, then report
        `answered` or `no_answer(probe=True)`). Raises Stopped on a stop or a given-up run."""
        while self.down_since is not None:
            if self._stop.is_set():
                raise Stopped
            if not self._probe_out:
                self._probe_out = True
                await self._wait_to_probe()
                if self.down_since is None:  # an answer came while waiting: no probe needed
                    self._probe_out = False
                    return False
                return True
            await unless_stopped(self._stop, self._changed.wait())
        return False

    async def _wait_to_probe(self) -> None:
        """Sleep the backoff, but not past the outage limit; past it, give up the run."""
        assert self.down_since is not None
        give_up_at = self.down_since + self.max_s
        wait = min(probe_delay(self._probes), give_up_at - self._now())
        await sleep_unless_stopped(self._stop, max(wait, 0.0))
        if self._stop.is_set():
            raise Stopped
        if self.down_since is not None and self._now() >= give_up_at:
            self._gave_up(self._now() - self.down_since)
            raise Stopped

    def _begin(self, error: str) -> None:
        self.down_since = self.since if self.since is not None else self._now()
        self._probes = 0
        self._probe_out = False
        get_logger().warning(
            "api_unreachable",
            error=error,
            max_outage_s=self.max_s,
            message="the API does not answer, or not as the API: sending paused, one probe at "
            f"a time until it answers (giving up {self.max_s:g} s after the first request "
            "without an answer left)",
        )

    def _end(self) -> None:
        assert self.down_since is not None
        down_s = self._now() - self.down_since
        self.down_since = None
        self._probe_out = False
        get_logger().info(
            "api_reachable",
            down_s=round(down_s, 2),
            unanswered_probes=self._probes,
            message="the API answers again: sending goes on",
        )
        self._wake()

    def _log_probe(self, error: str) -> None:
        down_s = self._now() - self.down_since if self.down_since is not None else 0.0
        get_logger().info(
            "api_probe_unanswered", error=error, down_s=round(down_s, 2), probes=self._probes
        )

    def _wake(self) -> None:
        """Every waiter looks again: one becomes the next probe, or all go on."""
        self._changed.set()
        self._changed = asyncio.Event()
