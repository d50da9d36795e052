"""The estimator of the server's own limit, fed synthetic answers on a fake clock (no sleeping):
what each observation proves, and that the guard it learns is never looser than the server."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    SandboxServer,
    StrictWindow,
    read_ledger,
    rows_csv,
    run_args,
    run_cli,
    sent_in_pauses,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.send.server_limit import (
    FRACTIONAL_RESOLUTION,
    JITTER_S,
    MIN_LEARNING_SAMPLES,
    Learned,
    Rejection,
    ServerLimit,
    reset_resolution,
)


def feed(
    server: StrictWindow, sends: list[float], jitter: list[float] | None = None
) -> tuple[ServerLimit, list[Learned | None]]:
    """Send at each time (arriving `jitter` later), tell the estimator, estimate at each 429."""
    limits, learned = ServerLimit(), []
    for i, sent in enumerate(sends):
        delay = jitter[i] if jitter else 0.0
        reset = server.answer(sent + delay)
        if reset is None:
            limits.accept(sent)
            continue
        resolution = 1.0 if server.whole_seconds else FRACTIONAL_RESOLUTION
        limits.reject(Rejection(sent, reset, delay, resolution))
        learned.append(limits.estimate())
    return limits, learned


def paced(server: StrictWindow, told: float, count: int, jitter: float = 0.0) -> list[float]:
    """What a worker told `told` requests a second sends: at that pace, none while a 429's
    reset holds. Returns the send times; `server` is left as the sends left it."""
    rng = random.Random(5)
    sends: list[float] = []
    t = 0.0
    while len(sends) < count:
        sends.append(t)
        reset = server.answer(t + rng.uniform(0, jitter))
        t = max(t + 1 / told, reset if reset is not None else 0.0)
    server.held.clear()
    return sends


def never_looser(learned: Learned, limit: int, window: float) -> bool:
    """Any `learned.limit` sends per `learned.window_s` keep the server's window: a span of
    `window` is covered by ceil(window / learned.window_s) learned windows."""
    return math.ceil(window / learned.window_s - 1e-9) * learned.limit <= limit  # float sums


@pytest.mark.parametrize(
    ("limit", "window", "whole_seconds", "told", "jitter", "most_above"),
    [
        (20, 2.0, False, 40.0, 0.0, JITTER_S),
        (20, 2.0, True, 40.0, 0.0, 1.0),
        (25, 1.0, False, 50.0, 0.0, JITTER_S),
        (25, 3.0, True, 25.0, 0.0, 1.0),
        (20, 2.0, True, 40.0, 0.0, 1.0),
        (20, 2.0, True, 40.0, JITTER_S, 1.0 + JITTER_S),
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
def test_learns_the_limit_exactly_and_a_window_never_shorter(
    limit: int,
    window: float,
    whole_seconds: bool,
    told: float,
    jitter: float,
    most_above: float,
) -> None:
    server = StrictWindow(limit, window, whole_seconds, clock_offset=0.37)
    sends = paced(server, told, 6 * limit, jitter)
    delays = [random.Random(i).uniform(0, jitter) for i in range(len(sends))]
    _limits, learned = feed(server, sends, delays)
    assert learned[0] is None  # nothing from the first 429: the window may hold older requests
    final = learned[-1]
    assert final is not None and final.limit == limit
    assert final.window_min_s < window <= final.window_s + 1e-9  # float sums
    assert final.window_s <= window + most_above + 1e-9


@pytest.mark.parametrize(
    ("wait", "unix_now", "resolution"),
    [
        (2.0, 1_764_000_000.25, 1.0),
        (1.75, 1_764_000_000.25, 1.0),
        (1.9871, 1_764_000_000.0129, 1.0),
        (0.5, 1_764_000_000.2, 0.5),
        (0.1, 1_764_000_000.2, 0.1),
        (1.737, 1_764_000_000.2501, FRACTIONAL_RESOLUTION),
    ],
    ids=[
        "whole-seconds-to-wait",
        "integer-unix-time",
        "integer-unix-time-read-later",
        "half-seconds",
        "tenths",
        "milliseconds",
    ],
)
def test_reset_resolution(wait: float, unix_now: float, resolution: float) -> None:
    """Taken as the coarsest rounding the reset fits: a rounded reset taken for an exact one
    would put a lower bound above the truth."""
    assert reset_resolution(wait, unix_now) == resolution


def test_a_few_samples_teach_nothing() -> None:
    """A window still holding an earlier run's requests: 429s after a handful of ours."""
    limits = ServerLimit()
    for t in (0.0, 0.01, 0.02):
        limits.accept(t)
    limits.reject(Rejection(0.03, 0.05, 0.0, FRACTIONAL_RESOLUTION))
    limits.accept(0.06)
    limits.reject(Rejection(0.07, 0.1, 0.0, FRACTIONAL_RESOLUTION))
    assert limits.estimate() is None
    assert MIN_LEARNING_SAMPLES > 4


def test_answers_still_in_flight_only_loosen_the_bounds() -> None:
    """Two sends whose answers had not come back at the 429 may be accepted ones: the window's
    lower bound counts them, so the truth is never ruled out."""
    server = StrictWindow(20, 2.0)
    sends = paced(server, 40.0, 60)
    exact, _ = feed(StrictWindow(20, 2.0), sends)
    limits = ServerLimit()
    for t in sends:
        if (reset := server.answer(t)) is None:
            limits.accept(t)
        else:
            before = tuple(a for a in limits.accepted if a < t)[-2:]
            for a in before:  # as if their answers had not come back yet
                limits.accepted.remove(a)
            limits.reject(Rejection(t, reset, 0.0, FRACTIONAL_RESOLUTION, before))
            for a in before:
                limits.accept(a)
    learned, best = limits.estimate(), exact.estimate()
    assert learned is not None and best is not None and learned.limit == 20
    assert learned.window_min_s <= best.window_min_s < 2.0 <= learned.window_s + 1e-9


def test_pending_matches_answers_as_multisets() -> None:
    limits = ServerLimit()
    limits.accept(1.0)
    limits.reject(Rejection(2.0, 3.0, 0.0, 1.0))
    assert limits.pending((1.0, 1.0, 2.0, 2.5)) == [1.0, 2.5]  # two sends at 1.0, one answered


def test_a_limit_changed_mid_run_is_learned_again() -> None:
    """The server halves its limit: the old evidence contradicts the new 429s, is forgotten,
    and the new limit is learned."""
    server = StrictWindow(20, 2.0)
    sends = paced(server, 40.0, 100)
    limits, learned = feed(server, sends)
    assert learned[-1] is not None and learned[-1].limit == 20
    server.limit, start = 10, sends[-1] + 2.0
    later = paced(StrictWindow(10, 2.0), 40.0, 60)
    estimates = []
    for t in (start + s for s in later):
        if (reset := server.answer(t)) is None:
            limits.accept(t)
        else:
            limits.reject(Rejection(t, reset, 0.0, FRACTIONAL_RESOLUTION))
            estimates.append(limits.estimate())
    final = estimates[-1]
    assert final is not None and final.limit == 10
    assert 2.0 <= final.window_s + 1e-9 <= 2.0 + JITTER_S


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(10, 40),
    window=st.floats(0.2, 5.0),
    whole_seconds=st.booleans(),
    offset=st.floats(0.0, 1.0),
    gaps=st.lists(st.floats(0.0, 0.3), min_size=20, max_size=400),
    seed=st.integers(0, 2**32),
)
def test_the_learned_guard_is_never_looser_than_the_server(
    limit: int, window: float, whole_seconds: bool, offset: float, gaps: list[float], seed: int
) -> None:
    """Random true limits and windows, random sends (random arrival jitter within JITTER_S),
    a strict sliding window with exact or whole-second resets: whatever is learned, any
    learned.limit sends per learned.window_s keep the server's limit; and when the limit
    learned is the true one, the window learned is never shorter than the true one."""
    server = StrictWindow(limit, window, whole_seconds, offset)
    sends = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    rng = random.Random(seed)
    _limits, learned = feed(server, sends, [rng.uniform(0, JITTER_S) for _ in sends])
    for estimate in learned:
        if estimate is None:
            continue
        assert never_looser(estimate, limit, window), (estimate, limit, window)
        if estimate.limit == limit:
            assert estimate.window_min_s < window <= estimate.window_s + 1e-9  # float sums


def _assert_recovers(server: SandboxServer, count: int, limit: int, span: float) -> None:
    log = server.requests()
    assert sorted({int(r["id"]) for r in log if r["status"] == 200}) == list(range(1, count + 1))
    arrivals = [r["t"] for r in log]
    assert sent_in_pauses(log) == [], "a request reached the server while a 429's reset held"
    least = (math.ceil(count / limit) - 1) * span
    took = max(arrivals) - min(arrivals)
    assert took <= 1.2 * least, (took, least)


@pytest.mark.parametrize(
    ("server_limit", "server_period", "count"),
    [("15", "1", 75), ("20", "2", 60)],
    ids=["server-limit-lower", "server-window-longer"],
)
@pytest.mark.timing
def test_server_allowing_less_than_told(
    tmp_path: Path,
    sandbox_factory: Callable[..., SandboxServer],
    server_limit: str,
    server_period: str,
    count: int,
) -> None:
    server = sandbox_factory("--rate-limit", server_limit, "--rate-period", server_period)
    rows_csv(tmp_path, count)
    result = run_cli(*run_args(server, "--rate-limit", "30", "--rate-period", "1"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert {x["status"] for x in read_ledger(tmp_path / "ledger.csv")} == {"ok"}
    _assert_recovers(server, count, int(server_limit), float(server_period))
    learned = result.event("server_limit_learned")
    assert learned["limit"] == int(server_limit)
    assert any(e["event"] == "rate_limit_pause" for e in result.events())


@pytest.mark.timing
@pytest.mark.slow
def test_whole_second_resets_learned_to_within_ten_percent(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """The worker told 20 a second, the server 20 per 2 s and its resets rounded up to whole
    seconds (up to a second late): learned from one cycle, the window was ~3 s;
    refined by the later cycles and probes it ends within 10% of the truth, never under it."""
    server = sandbox_factory("--rate-limit", "20", "--rate-period", "2", "--whole-second-reset")
    rows_csv(tmp_path, 120)  # 6 windows: two pauses, then probes (100 rows: 1 run in 4 short)
    result = run_cli(*run_args(server, "--rate-limit", "20", "--rate-period", "1"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    log = server.requests()
    assert sorted({int(r["id"]) for r in log if r["status"] == 200}) == list(range(1, 121))
    assert all(float(r["reset_at"]).is_integer() for r in log if r["status"] == 429)
    assert sent_in_pauses(log) == [], "a request reached the server while a 429's reset held"
    learned = [e for e in result.events() if e["event"] == "server_limit_learned"]
    assert learned and {e["limit"] for e in learned} == {20}
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    final = 20 * 60 / summary["server_limit_learned_per_minute"]  # moves under 5% not logged
    assert 2.0 <= final <= 2.2, (final, [e["window_s"] for e in learned])
    assert sum(r["status"] == 429 for r in log) <= 6  # a few cycles, not one every window


@pytest.mark.timing
def test_unix_and_seconds_reset_both_honoured(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "1", "--reset-format", "seconds")
    rows_csv(tmp_path, 12)
    result = run_cli(*run_args(server, "--rate-limit", "10", "--rate-period", "1"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    _assert_recovers(server, 12, 5, 1.0)
