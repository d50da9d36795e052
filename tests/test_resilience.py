"""Surviving the real API: retries, 429 pauses, learning the server's limit, kills, signals,
one run at a time, run limits. The real CLI process against the real sandbox."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from conftest import (
    SandboxServer,
    cli_env,
    read_ledger,
    run_cli,
    sent_in_pauses,
    start_run,
    wait_for_arrivals,
    write_csv,
)
from local_server import serving

HEADER = ["interview_id", "contact_name"]
FAST_BACKOFF = "[api]\nbackoff_base_s = 0.02\n"


def rows_csv(tmp_path: Path, count: int, name: str = "in.csv", tag: str = "N") -> Path:
    return write_csv(tmp_path / name, HEADER, [[i, f"{tag}{i}"] for i in range(1, count + 1)])


def sandbox_at(base_url: str) -> SandboxServer:
    """Another server, addressed as run_args addresses a sandbox."""
    return SandboxServer(None, base_url.removesuffix("/api/v1"))  # type: ignore[arg-type]


def run_args(server: SandboxServer, *args: str) -> list[str]:
    """A run at 1000 a second unless ARGS say otherwise (the last value of an option wins)."""
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
        "1000",
        "--rate-period",
        "1",
        *args,
    ]


def test_transient_failures_are_retried_to_success(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory(
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        "--fail-rate",
        "0.25",
        "--drop-rate",
        "0.1",
        "--seed",
        "7",
    )
    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 8\n")
    rows_csv(tmp_path, 40)
    result = run_cli(*run_args(server, "--config", "fast.toml"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    ledger = read_ledger(tmp_path / "ledger.csv")
    assert {line["status"] for line in ledger} == {"ok"}
    arrivals = Counter(r["id"] for r in server.requests())
    answers: dict[str, list[int]] = {}
    for r in server.requests():
        answers.setdefault(r["id"], []).append(r["status"])
    for line in ledger:
        assert int(line["attempts"]) == arrivals[line["interview_id"]]  # attempts are real sends
        if answers[line["interview_id"]] == [200]:
            assert line["attempts"] == "1"  # healthy rows take one attempt
    assert any(n > 1 for n in arrivals.values())
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    assert summary["retries"] == sum(arrivals.values()) - 40
    assert any(e["event"] == "retry" for e in result.events())


def test_retries_run_out_as_failed(tmp_path: Path) -> None:
    """One row the server keeps failing (503) among rows it takes: that row ends `failed`
    after its retries; the others are sent."""

    async def fails_row_2(request: web.Request) -> web.Response:
        interview = int(request.match_info["tail"].rsplit("/", 1)[-1])
        if interview == 2:
            return web.json_response(
                {"error": {"code": "server_error", "message": "m"}}, status=503
            )
        return web.json_response({"interview_request_id": interview})

    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 2\n")
    rows_csv(tmp_path, 3)
    with serving(fails_row_2) as server:
        args = run_args(sandbox_at(server.base_url), "--config", "fast.toml", "--concurrency", "1")
        result = run_cli(*args, cwd=tmp_path)
    assert result.code == 1
    lines = read_ledger(tmp_path / "ledger.csv")
    assert [(x["status"], x["error_code"], x["attempts"]) for x in lines] == [
        ("ok", "", "1"),
        ("failed", "server_error", "3"),
        ("ok", "", "1"),
    ]


def test_503_to_every_request_from_the_start_is_an_outage(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """An API that fails every request is waited out as a whole, not row by row: exit 3 at
    --max-outage, the rows never sent `not_attempted`."""
    server = sandbox_factory("--rate-limit", "1000", "--rate-period", "1", "--fail-rate", "1")
    (tmp_path / "fast.toml").write_text(FAST_BACKOFF + "max_retries = 2\n")
    rows_csv(tmp_path, 30)
    result = run_cli(*run_args(server, "--config", "fast.toml", "--max-outage", "1"), cwd=tmp_path)
    assert result.code == 3
    assert "did not answer for 1 s" in result.event("run_aborted")["reason"]
    statuses = Counter((x["status"], x["error_code"]) for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses == {("failed", "server_error"): 1, ("not_attempted", ""): 29}
    assert {r["id"] for r in server.requests()} == {"1"}  # every try the first row's own


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


def test_kill_9_then_rerun_resumes(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "1000", "--rate-period", "1", "--latency-ms", "20")
    rows_csv(tmp_path, 60)
    args = run_args(server, "--rate-limit", "20", "--rate-period", "1", "--concurrency", "4")
    killed = start_run(tmp_path, args)
    wait_for_arrivals(server, 25)
    killed.kill()
    killed.wait()
    before = Counter(r["id"] for r in server.requests())
    finished = {x["interview_id"] for x in read_ledger(tmp_path / "ledger.csv")}
    assert finished and finished <= set(before)  # every finished result is on disk
    assert run_cli(*args, "--ledger", "second.csv", cwd=tmp_path).code == 0
    after = Counter(r["id"] for r in server.requests())
    assert set(after) == {str(i) for i in range(1, 61)}
    sent_twice = [i for i, n in after.items() if n > 1]
    assert len(sent_twice) <= 4  # at most what was in flight at the kill
    assert run_cli(*args, "--ledger", "third.csv", cwd=tmp_path).code == 0
    assert Counter(r["id"] for r in server.requests()) == after  # a third run sends nothing


def test_sigterm_stops_cleanly(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 60)
    process = start_run(tmp_path, run_args(sandbox, "--rate-limit", "20", "--rate-period", "1"))
    wait_for_arrivals(sandbox, 10)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=20)
    exited = time.time()
    assert process.returncode == 143, err
    lines = read_ledger(tmp_path / "ledger.csv")
    assert sorted(int(x["source_row"]) for x in lines) == list(range(1, 61))
    statuses = Counter(x["status"] for x in lines)
    assert statuses["not_attempted"] > 0 and statuses["ok"] >= 10
    assert set(statuses) <= {"ok", "not_attempted"}
    time.sleep(0.3)
    assert all(r["t"] < exited for r in sandbox.requests())
    assert statuses["ok"] == len(sandbox.requests())


def test_second_run_on_same_state_refused(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 40)
    first = start_run(tmp_path, run_args(sandbox, "--rate-limit", "10", "--rate-period", "1"))
    try:
        wait_for_arrivals(sandbox, 2)
        second = run_cli(*run_args(sandbox, "--ledger", "second.csv"), cwd=tmp_path)
        assert second.code == 75
        assert f"pid {first.pid}" in second.event("error")["message"]
    finally:
        first.kill()
        first.wait()
    third = run_args(sandbox, "--ledger", "third.csv")
    assert run_cli(*third, cwd=tmp_path).code == 0  # the stale lock is taken over


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


def test_max_rows_and_dry_run(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 10)
    dry = run_cli(*run_args(sandbox, "--dry-run"), cwd=tmp_path, env=cli_env(HINDSIGHT_API_KEY=""))
    assert dry.code == 0
    assert {x["status"] for x in read_ledger(tmp_path / "ledger.csv")} == {"dry_run"}
    assert sandbox.requests() == []
    (tmp_path / "ledger.csv").unlink()
    trial = run_cli(*run_args(sandbox, "--max-rows", "3"), cwd=tmp_path)
    assert trial.code == 0
    statuses = Counter(x["status"] for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses == {"ok": 3, "not_attempted": 7}
    assert len(sandbox.requests()) == 3
    started = trial.event("run_started")
    assert started["requests_to_send"] == 3 and "estimated_minutes" in started


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


@pytest.mark.timing
def test_sigterm_during_a_429_pause_stops_at_once(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "60")  # a minute-long pause
    rows_csv(tmp_path, 20)
    process = start_run(tmp_path, run_args(server, "--rate-limit", "50", "--rate-period", "1"))
    wait_for_arrivals(server, 6)  # five accepted, then a 429 whose reset is ~60 s away
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=20)
    assert process.returncode == 143, err
    assert time.monotonic() - signalled < 5  # not the pause, not the 10 s grace
    statuses = Counter(x["status"] for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses["ok"] == 5 and sum(statuses.values()) == 20
    assert statuses["not_attempted"] >= 13  # never sent: not "interrupted in flight"
    assert len(server.requests()) <= 7
    refused = [x for x in read_ledger(tmp_path / "ledger.csv") if x["http_status"] == "429"]
    assert refused and {(x["status"], x["error_code"]) for x in refused} == {
        ("not_attempted", "interrupted")  # the server refused it; it was never tried again
    }


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
