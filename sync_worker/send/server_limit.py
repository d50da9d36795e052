"""What the server's answers prove about its own limit, and the guard that follows from them.

The server allows `L` requests in any `W` seconds (a strict sliding window, api/README) and
counts the requests it accepted, not those it refused. We know neither number: we know our own
send times (the pacer's clock), which answers were 429s, and each 429's reset. Every bound
below holds when:
  1. the server's window holds only this run's requests (a window still holding an earlier
     run's requests is why nothing is learned before a 429 sent after our own first pause),
  2. the announced reset is never earlier than the moment a slot frees, and at most its
     `resolution` later: a second when the reset is a whole number (an integer Unix time, or
     whole seconds to wait, as many servers send it), a millisecond when it has decimals,
  3. the time from our send to the server's arrival differs by at most JITTER_S between two
     requests (a constant offset between the clocks cancels out).

For a candidate limit L, with a(k) the send time of the k-th accepted request before a moment:
- a request sent at t and accepted: the window held at most L-1 others, so the L-th accepted
  before it had left:                                    W <= t - a(L)
- a 429 for a request sent at b, whose reset R arrived rtt after the send: the window held L
  of ours, the oldest o = a(L), and the (L+1)-th had left; the oldest frees its slot at o + W,
  which the server announced as R, at most `resolution` late:
      b - o < W <= b - a(L+1)                  (the window was full, and no fuller)
      R - resolution - rtt - o < W <= R - o    (the reset bounds the window from both sides)
  Sends whose answer had not come back at the 429 may be accepted ones: the lower bounds count
  them (an older o would overstate the bound), the upper bounds do not.
Every comparison of two send times is widened by JITTER_S in the safe direction.

A candidate L stays possible while its lower bound is below its upper bound; the server's own
(L, W) always does. With L* the least possible limit, the guard L* per
    W* = max over possible L of upper(L) / floor(L / L*)
is never looser than the server, whichever candidate it is: any L* sends per W* put at most
floor(L / L*) * L* <= L requests in any W <= upper(L). Usually one L is possible, and W* is its
upper bound: the learned window is never shorter than the true one (the property test checks
this against a simulated strict window with whole-second resets and random sends).

With whole-second resets one cycle leaves up to a second between the bounds (measured: a 2 s
window learned once as 2.998 s, 1.51x the least time; now 2.046 s, 1.11x). Each later 429 adds
bounds with its own rounding; a pause that ends on a whole second locks the next reset's phase
so that its lower bound is close to the truth. The pacer then probes between the bounds
(limiter.Pacer) until they are within PROBE_TOLERANCE.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MIN_LEARNING_SAMPLES = 10  # learn no limit below this: few samples cannot tell windows apart
ACCEPTED_MEMORY = 20_000  # accepted send times kept
SPACING_EVIDENCE = 4096  # the latest accepted sends whose spacing bounds the window
REJECTIONS_KEPT = 64  # the latest 429s kept as evidence (dropping one only loosens bounds)
MAX_CANDIDATE = 4096  # the largest limit considered
JITTER_S = 0.02  # how much send-to-arrival times may differ (measured on loopback: 8-19 ms)
FRACTIONAL_RESOLUTION = 0.001  # a reset with decimals: announced to the millisecond


@dataclass(frozen=True)
class Learned:
    """The server's limit as learned: `limit` per `window_s` is provably no looser."""

    limit: int
    window_s: float  # the least window proven long enough (an upper bound on the server's)
    window_min_s: float = 0.0  # the server's window for this limit is longer than this

    @property
    def per_minute(self) -> float:
        return self.limit * 60.0 / self.window_s


@dataclass(frozen=True, slots=True)
class Rejection:
    """A 429, on the pacer's clock."""

    sent_at: float
    reset_at: float  # receipt time + the announced wait
    rtt: float  # receipt time - sent_at
    resolution: float  # how much later than the truth the announced reset may be
    unanswered: tuple[float, ...] = ()  # sends before it whose answer had not come back


GRANULARITIES = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01)  # roundings a server may apply to its reset


def reset_resolution(wait_s: float, unix_now: float) -> float:
    """How much later than the truth a reset may be: the coarsest rounding it fits (whole
    seconds to wait, or a whole Unix time, first), else a millisecond. A reset with decimals
    that fits a rounding by chance is taken as rounded: that only loosens a lower bound, while
    a rounded reset taken for an exact one would set a lower bound above the truth."""
    for granularity in GRANULARITIES:
        if _multiple(wait_s, granularity, 1e-6) or _multiple(unix_now + wait_s, granularity, 2e-4):
            return granularity
    return FRACTIONAL_RESOLUTION


def _multiple(value: float, granularity: float, tolerance: float) -> bool:
    steps = value / granularity
    return abs(steps - round(steps)) * granularity < tolerance


class ServerLimit:
    """The evidence of a run, and what it proves (see the module's docstring)."""

    __slots__ = ("_first_reset", "_rejected_at", "_rejections", "_since", "_trimmed", "accepted")

    def __init__(self) -> None:
        self.accepted: list[float] = []  # send times of accepted requests, sorted (the pacer adds)
        self._rejections: deque[Rejection] = deque(maxlen=REJECTIONS_KEPT)
        self._rejected_at: Counter[float] = Counter()  # send times answered 429 (two may match)
        self._since = -math.inf  # evidence sent before this is forgotten (it contradicted)
        self._first_reset: float | None = None  # learn from 429s sent after this
        self._trimmed = False  # older accepted sends were dropped: counts before are partial

    def accept(self, sent_at: float) -> None:
        bisect.insort(self.accepted, sent_at)
        if len(self.accepted) > ACCEPTED_MEMORY:
            self.trim()

    def trim(self) -> None:
        del self.accepted[: ACCEPTED_MEMORY // 2]
        self._trimmed = True

    def reject(self, rejection: Rejection) -> None:
        self._rejections.append(rejection)
        self._rejected_at[rejection.sent_at] += 1
        if self._first_reset is None:
            self._first_reset = rejection.reset_at

    def pending(self, sends: tuple[float, ...]) -> list[float]:
        """Those of `sends` (all sent, say the pacer's guard) that no answer matches yet: in
        flight, or never answered. Matched as multisets: two sends may share a time."""
        if not sends:
            return []
        start = bisect.bisect_left(self.accepted, min(sends))
        end = bisect.bisect_right(self.accepted, max(sends))
        left = Counter(sends) - Counter(self.accepted[start:end]) - self._rejected_at
        return sorted(left.elements())

    def estimate(self) -> Learned | None:
        """The tightest guard the evidence proves, or None while it proves none. Evidence that
        contradicts itself (the server changed its limit, or another client shares it) is
        forgotten up to the latest 429, and learning starts again from there."""
        rejections = self._usable()
        if not rejections:
            return None
        possible = self._possible(rejections)
        if possible is None:
            self._since = rejections[-1].sent_at
            possible = self._possible(self._usable())
        return None if possible is None else _guard(*possible)

    def _usable(self) -> list[Rejection]:
        rejections = [r for r in self._rejections if r.sent_at >= self._since]
        first = self._first_reset
        if first is None or not any(r.sent_at >= first for r in rejections):
            return []
        return rejections

    def _possible(
        self, rejections: list[Rejection]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]] | None:
        """The candidate limits still possible with their (lower, upper) window bounds; None
        when none is (the evidence contradicts itself)."""
        import numpy as np  # here: only a run that meets 429s pays for it

        history = [self._before(r) for r in rejections]
        most = MAX_CANDIDATE
        if not self._trimmed:  # all of our requests are known: the window held no more
            most = min([most, *(len(maybe) for maybe, _certain in history)])
        lower = np.full(most, -math.inf)
        upper = np.full(most, math.inf)
        for r, (maybe, certain) in zip(rejections, history, strict=True):
            _bound_by_rejection(r, maybe, certain, lower, upper)
        self._bound_by_spacing(upper)
        limits = np.arange(1, most + 1)
        ok = lower < upper
        if not ok.any():
            return None
        return limits[ok], lower[ok], upper[ok]

    def _before(self, r: Rejection) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Our requests the server may have accepted before `r` (newest first), and those it
        surely did."""
        import numpy as np

        accepted = self.accepted
        end = bisect.bisect_left(accepted, r.sent_at + JITTER_S)
        sure = bisect.bisect_left(accepted, r.sent_at - JITTER_S)
        extra = [t for t in self.pending(r.unanswered) if t < r.sent_at + JITTER_S]
        tail = accepted[max(0, end - MAX_CANDIDATE - 1) : end]
        maybe = np.sort(np.array(tail + extra, dtype=float))[::-1]
        certain = np.array(accepted[max(0, sure - MAX_CANDIDATE - 1) : sure], dtype=float)[::-1]
        return maybe, certain

    def _bound_by_spacing(self, upper: NDArray[np.float64]) -> None:
        """An accepted request: the L-th accepted before it had left the window."""
        import numpy as np

        start = bisect.bisect_left(self.accepted, self._since)
        sent = np.array(self.accepted[-SPACING_EVIDENCE:], dtype=float)
        first = max(0, start - (len(self.accepted) - len(sent)))  # first index at or after since
        for limit in range(1, min(len(upper), len(sent) - 1) + 1):
            begin = max(first, limit)
            if begin < len(sent):
                spacing = float((sent[begin:] - sent[begin - limit : len(sent) - limit]).min())
                upper[limit - 1] = min(upper[limit - 1], spacing + JITTER_S)


def _bound_by_rejection(
    r: Rejection,
    maybe: NDArray[np.float64],
    certain: NDArray[np.float64],
    lower: NDArray[np.float64],
    upper: NDArray[np.float64],
) -> None:
    """A 429: the window held L of ours (lower bounds), no more, and its oldest left at the
    announced reset (both sides). Index L-1 holds candidate limit L."""
    import numpy as np

    n = min(len(maybe), len(lower))  # past n: our history before it is partial, no bound
    oldest = maybe[:n]
    full = r.sent_at - JITTER_S - oldest
    reset = r.reset_at - r.resolution - r.rtt - JITTER_S - oldest
    lower[:n] = np.maximum(lower[:n], np.maximum(full, reset))
    m = min(len(certain), len(upper))
    upper[:m] = np.minimum(upper[:m], r.reset_at - certain[:m])
    m = min(len(certain) - 1, len(upper))
    if m > 0:
        upper[:m] = np.minimum(upper[:m], r.sent_at + JITTER_S - certain[1 : m + 1])


def _guard(
    limits: NDArray[np.int64], lower: NDArray[np.float64], upper: NDArray[np.float64]
) -> Learned | None:
    """L* per W*: never looser than any possible (L, W) (module docstring)."""
    least = int(limits[0])
    if least < MIN_LEARNING_SAMPLES or not bool((upper < math.inf).all()):
        return None
    window = float((upper / (limits // least)).max())
    return Learned(least, window, float(lower[0]))
