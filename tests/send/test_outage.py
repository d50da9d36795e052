"""The outage gate on the real event loop: when the API counts as gone, one probe at a time,
everyone going on at the first answer, and giving up past the limit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import SandboxServer, read_ledger, rows_csv, run_args, start_run, wait_for_arrivals

from sync_worker.send.limiter import Stopped
from sync_worker.send.outage import (
    BAD_ANSWERS_AFTER,
    OUTAGE_AFTER,
    PROBE_BASE_S,
    Outage,
    probe_delay,
)


def watching(max_s: float = 60.0) -> tuple[Outage, asyncio.Event, list[float]]:
    stop, gave_up = asyncio.Event(), []
    outage = Outage(max_s, stop, gave_up.append)
    outage.watching = True
    return outage, stop, gave_up


@pytest.mark.timing  # real loop, shrunk windows: run alone (make test)
@pytest.mark.parametrize(
    ("tries", "down"),
    [
        ("d" * OUTAGE_AFTER, True),
        ("d" * (OUTAGE_AFTER - 1), False),
        ("dd.dd.dd", False),
        ("r", True),
        ("..r", True),
        ("b" * OUTAGE_AFTER, True),
        ("b" * (OUTAGE_AFTER - 1), False),
        ("." + "b" * (BAD_ANSWERS_AFTER - 1), False),
        ("." + "b" * BAD_ANSWERS_AFTER, True),
        (".bbbbb.bbbbb.bbbbb", False),
        (".bdbdbdbdbd", True),
    ],
    ids=[
        "drops-in-a-row",
        "too-few-drops",
        "drops-between-answers",
        "refused",
        "refused-late",
        "bad-answers-from-the-start",
        "too-few-bad-answers-from-the-start",
        "bad-answers-after-a-good-one-need-more",
        "many-bad-answers-in-a-row",
        "bad-answers-between-good-ones",
        "bad-answers-and-drops-together",
    ],
)
def test_when_the_api_counts_as_gone(tries: str, down: bool) -> None:
    """d: dropped (the request went out), r: refused (no connection opened), b: a 5xx or an
    answer not the API's, .: a good answer."""

    async def scenario() -> bool:
        outage, _stop, _gave_up = watching()
        for kind in tries:
            outage.sending()
            if kind == ".":
                outage.answered()
            elif kind == "b":
                outage.bad_answer(probe=False, error="HTTP 502, text/html")
            else:
                outage.no_answer(probe=False, sent=kind == "d", error="connection_error")
        return outage.down_since is not None

    assert asyncio.run(scenario()) is down


@pytest.mark.timing
def test_the_first_request_alone_is_not_watched() -> None:
    async def scenario() -> bool:
        outage = Outage(60.0, asyncio.Event())
        return any(outage.no_answer(False, False, "connection_error") for _ in range(5))

    assert asyncio.run(scenario()) is False


@pytest.mark.timing
def test_one_probe_at_a_time_then_everyone_goes_on() -> None:
    async def scenario() -> tuple[list[bool], list[bool], list[bool]]:
        outage, _stop, _gave_up = watching()
        outage.no_answer(False, False, "connection_error")
        waiters = [asyncio.ensure_future(outage.turn()) for _ in range(5)]
        await asyncio.sleep(PROBE_BASE_S + 0.05)  # past the first probe's backoff
        first = [w.done() for w in waiters]
        outage.no_answer(True, False, "connection_error")  # the probe got no answer either
        await asyncio.sleep(2 * PROBE_BASE_S + 0.05)
        second = [w.done() for w in waiters]
        outage.answered()  # the second probe got through
        await asyncio.wait(waiters, timeout=1.0)
        return first, second, [w.result() for w in waiters]

    first, second, probes = asyncio.run(scenario())
    assert sum(first) == 1 and sum(second) == 2  # one more probe for each failed one
    assert sum(probes) == 2  # the other three go on as plain sends


@pytest.mark.timing
def test_gives_up_past_the_limit() -> None:
    async def scenario() -> tuple[float, list[float], bool]:
        outage, stop, gave_up = watching(max_s=0.5)
        loop = asyncio.get_running_loop()
        outage.no_answer(False, False, "connection_error")
        began = loop.time()
        with pytest.raises(Stopped):
            while await outage.turn():
                outage.no_answer(True, False, "connection_error")
        return loop.time() - began, gave_up, stop.is_set()

    took, gave_up, stopped = asyncio.run(scenario())
    assert stopped and len(gave_up) == 1 and gave_up[0] >= 0.5
    assert took < 0.5 + 0.3  # at the limit, not at the next probe's backoff


@pytest.mark.timing
def test_a_stop_ends_every_wait_at_once() -> None:
    async def scenario() -> list[bool]:
        outage, stop, _gave_up = watching()
        outage.no_answer(False, False, "connection_error")
        waiters = [asyncio.ensure_future(outage.turn()) for _ in range(3)]
        await asyncio.sleep(0.01)
        stop.set()
        done, _pending = await asyncio.wait(waiters, timeout=0.5)
        return [isinstance(w.exception(), Stopped) for w in done]

    assert asyncio.run(scenario()) == [True, True, True]


@pytest.mark.timing
@pytest.mark.parametrize("probes", [0, 1, 3, 10, 40])
def test_probe_backoff_grows_with_jitter_and_a_cap(probes: int) -> None:
    delays = {probe_delay(probes) for _ in range(50)}
    ceiling = min(10.0, PROBE_BASE_S * 2**probes)
    assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1


@pytest.mark.timing
def test_an_outage_is_timed_from_when_its_first_request_left() -> None:
    """Three requests time out after 0.3 s each: the outage began when the first left, so the
    run gives up at max_s from then, not max_s after the third timeout."""

    async def scenario() -> tuple[float, float]:
        outage, _stop, gave_up = watching(max_s=0.5)
        loop = asyncio.get_running_loop()
        began = loop.time()
        for _ in range(OUTAGE_AFTER):
            outage.sending()
        await asyncio.sleep(0.3)  # all three hang, then time out together
        for _ in range(OUTAGE_AFTER):
            outage.no_answer(probe=False, sent=True, error="timeout")
        assert outage.down_since == pytest.approx(began, abs=0.01)
        with pytest.raises(Stopped):
            while await outage.turn():
                outage.no_answer(True, True, "timeout")
        return loop.time() - began, gave_up[0]

    took, down_s = asyncio.run(scenario())
    assert down_s >= 0.5 and took < 0.5 + 0.2


@pytest.mark.timing
def test_watch_gives_up_while_a_request_still_hangs() -> None:
    async def scenario() -> tuple[float, bool]:
        outage, stop, gave_up = watching(max_s=0.3)
        outage.watching = False  # the first request, alone: a hang counts all the same
        loop = asyncio.get_running_loop()
        began = loop.time()
        outage.sending()  # ... and never an answer
        await asyncio.wait_for(outage.watch(), timeout=2)
        return loop.time() - began, stop.is_set() and len(gave_up) == 1

    took, stopped = asyncio.run(scenario())
    assert stopped and 0.3 <= took < 0.3 + 0.15


@pytest.mark.timing
def test_watch_lets_a_run_that_answers_go_on() -> None:
    async def scenario() -> bool:
        outage, stop, gave_up = watching(max_s=0.2)
        watcher = asyncio.ensure_future(outage.watch())
        for _ in range(8):  # answers keep coming, each within the limit
            outage.sending()
            await asyncio.sleep(0.1)
            outage.answered()
        watcher.cancel()
        return stop.is_set() or bool(gave_up)

    assert asyncio.run(scenario()) is False


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _outage_run(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer], *args: str
) -> tuple[SandboxServer, subprocess.Popen[str], list[str]]:
    """A sandbox on a known port, killed (-9) mid-run: the run sees the API go away."""
    port = _free_port()
    server = sandbox_factory("--port", str(port), "--rate-limit", "1000", "--rate-period", "1")
    rows_csv(tmp_path, 30)
    process = start_run(
        tmp_path,
        run_args(server, "--rate-limit", "40", "--rate-period", "1", "--concurrency", "4", *args),
    )
    wait_for_arrivals(server, 8)
    server.process.kill()
    server.process.wait()
    return server, process, ["--port", str(port), "--rate-limit", "1000", "--rate-period", "1"]


def test_api_away_then_back_loses_no_row(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    _gone, process, same_port = _outage_run(tmp_path, sandbox_factory)
    time.sleep(0.5)  # and the sandbox takes a second or two to start again
    back = sandbox_factory(*same_port)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "api_unreachable" in names and "api_reachable" in names
    assert names.count("retry") <= 4  # no retry storm: the outage is waited out, not retried
    lines = read_ledger(tmp_path / "ledger.csv")
    assert sorted(int(x["source_row"]) for x in lines) == list(range(1, 31))
    assert {x["status"] for x in lines} == {"ok"}  # no row failed for the outage
    assert {r["status"] for r in back.requests()} == {200} and len(back.requests()) >= 15
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    assert summary["connection_errors"] > 0 and summary["exit_code"] == 0


@pytest.mark.timing
def test_api_away_past_max_outage_stops_with_3(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    _gone, process, _port = _outage_run(tmp_path, sandbox_factory, "--max-outage", "2")
    killed = time.monotonic()
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 3, err
    assert time.monotonic() - killed < 2 + 5  # the limit, not every row's retries
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    aborted = next(e for e in events if e["event"] == "run_aborted")
    assert "did not answer for 2 s" in aborted["reason"] and "re-run resumes" in aborted["reason"]
    assert [e["event"] for e in events].count("retry") <= 4
    lines = read_ledger(tmp_path / "ledger.csv")
    assert sorted(int(x["source_row"]) for x in lines) == list(range(1, 31))
    statuses = Counter((x["status"], x["error_code"]) for x in lines)
    assert statuses[("ok", "")] >= 8 and statuses[("not_attempted", "")] > 0
    # failed only what a dropped connection may have delivered (at most one a worker)
    assert statuses[("failed", "connection_error")] <= 4
    assert set(statuses) <= {
        ("ok", ""),
        ("not_attempted", ""),
        ("not_attempted", "connection_error"),
        ("failed", "connection_error"),
    }
