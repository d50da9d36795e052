"""How many requests to keep in flight: enough to fill the allowed rate at the API's latency.

Little's law: a pool of N workers, each waiting `latency` for every answer, sends at most
N / latency requests a second. To reach the allowed rate the pool needs rate x latency workers;
it keeps that for a high percentile of recent latency, with headroom, so that a slot freed by the
pacer always finds a worker waiting for it. The pacer, not the pool, keeps the limit: a worker
too many only waits for its slot, a worker too few leaves the quota unused.

This is not a latency-gradient limiter (Netflix concurrency-limits, Envoy's adaptive
concurrency): those shrink the pool when latency rises, to protect the server. Here the server
protects itself with its quota, and the job is to fill that quota: when latency rises the pool
grows. It grows at once and shrinks slowly (only when the need has fallen well below it, and the
percentile forgets a slow spell only after a hundred answers without one), so a pool that is
right does not flap.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

HEADROOM = 1.25  # workers beyond rate x latency, so a freed slot finds one waiting
SPARE = 2  # and two more: a retry's backoff or a slow chain holds a worker without sending
PERCENTILE = 0.95  # the latency the pool follows: a tail, so slow answers do not starve it
RECENT = 100  # "recent latency": the last hundred answers (2.5 s of them at 40 a second)...
MAX_AGE_S = 60.0  # ...of the last minute. A fixed count, not a span that depends on the latency
# it measures: such a span flapped (a slow spell stretched it, the stretch diluted the spell)
SHRINK_BELOW = 0.7  # shrink only when the need falls under this share of the pool
MATERIAL = 0.2  # a change of at least this share (and of 2 workers) is logged
DEFAULT_MAX = 256  # max_concurrency when the config does not say


def needed(rate_per_s: float, latency_s: float) -> int:
    """Workers that keep `rate_per_s` requests a second going when each takes `latency_s`."""
    return math.ceil(min(rate_per_s * latency_s * HEADROOM, 1e9)) + SPARE  # 1e9: a finite bound


class Latencies:
    """The latency of recent answers (seconds, from the send's slot to its answer)."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=RECENT)  # (answered at, s)

    def observe(self, now: float, seconds: float) -> None:
        self._samples.append((now, seconds))

    def quantile(self, share: float, now: float) -> float | None:
        """The `share` quantile of the recent answers; None without any."""
        ordered = sorted(seconds for at, seconds in self._samples if now - at <= MAX_AGE_S)
        if not ordered:
            return None
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class Resize:
    """A material change of the pool, for the log."""

    workers: int
    previous: int
    latency_s: float
    rate_per_s: float


class PoolSize:
    """The target number of workers: fixed (--concurrency), or following the latency."""

    __slots__ = (
        "capped",
        "fixed",
        "latencies",
        "latency",
        "logged",
        "maximum",
        "target",
    )

    def __init__(self, fixed: int | None, maximum: int, initial: int) -> None:
        self.fixed = fixed  # --concurrency: never changes
        self.maximum = fixed if fixed is not None else maximum
        self.target = fixed if fixed is not None else max(1, min(initial, maximum))
        self.logged = self.target  # the size last logged: smaller moves are not news
        self.capped = False  # at the latency last seen, the maximum cannot reach the rate
        self.latencies = Latencies()
        self.latency = 0.0  # the recent high latency (seconds) the pool last followed

    def recent(self, share: float, now: float) -> float | None:
        """The `share` quantile of recent latency."""
        return self.latencies.quantile(share, now)

    def update(self, rate_per_s: float, now: float) -> Resize | None:
        """Follow the latency seen now; a Resize when the pool moved materially."""
        latency = self.recent(PERCENTILE, now)
        if latency is None:
            return None
        self.latency = latency
        self.capped = self.maximum < rate_per_s * latency  # Little's law: it cannot keep up
        if self.fixed is not None:
            return None
        need = min(needed(rate_per_s, latency), self.maximum)
        if need > self.target or need < self.target * SHRINK_BELOW:
            self.target = need
        moved = abs(self.target - self.logged)
        if moved >= 2 and moved >= MATERIAL * self.logged:
            change = Resize(self.target, self.logged, latency, rate_per_s)
            self.logged = self.target
            return change
        return None
