"""Answers that are not the API's: a catch-all web page, a load balancer's 502, a server that
never answers. No row is ever `ok` on them, none is remembered as sent, and the run ends
within --max-outage, not after every row's retries. The real CLI in-process (CliRunner)
against small local servers."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from helpers import API_KEY, SandboxServer, assert_no_key, read_ledger, write_csv
from local_server import bad_gateway, hang, html_page, serving

from sync_worker.cli.main import main

FAST = "[api]\nbackoff_base_s = 0.02\nmax_retries = 2\n"


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes of an outage a few milliseconds apart, so a 2 s --max-outage sees many of them."""
    monkeypatch.setattr("sync_worker.send.outage.PROBE_BASE_S", 0.02)
    monkeypatch.setattr("sync_worker.send.outage.PROBE_CAP_S", 0.2)


def run(
    tmp_path: Path, base_url: str, *args: str, rows: int = 10, config: str = FAST
) -> tuple[int, str]:
    """`sync-worker run` of `rows` rows in-process; (exit code, stderr)."""
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_name"],
        [[i, f"N{i}"] for i in range(1, rows + 1)],
    )
    (tmp_path / "fast.toml").write_text(config)
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path / "in.csv"),
            "--config",
            str(tmp_path / "fast.toml"),
            "--base-url",
            base_url,
            "--state",
            str(tmp_path / "state.sqlite"),
            "--ledger",
            str(tmp_path / "ledger-{run_id}.csv"),
            "--rate-limit",
            "1000",
            "--rate-period",
            "1",
            "--log-format",
            "json",
            *args,
        ],
        env={"HINDSIGHT_API_KEY": API_KEY},
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.stderr
    assert_no_key(result.stdout, result.stderr)
    return result.exit_code, result.stderr


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def event(stderr: str, name: str) -> dict[str, Any]:
    return next(e for e in events(stderr) if e["event"] == name)


def ledger(tmp_path: Path) -> list[dict[str, str]]:
    [path] = [p for p in tmp_path.glob("ledger-*.csv")]
    return read_ledger(path)


def statuses(tmp_path: Path) -> Counter[tuple[str, str]]:
    return Counter((x["status"], x["error_code"]) for x in ledger(tmp_path))


def test_a_web_page_answering_200_ends_the_run_at_the_first_request(tmp_path: Path) -> None:
    with serving(html_page) as page:
        code, stderr = run(tmp_path, page.base_url)
    assert code == 3
    reason = event(stderr, "run_aborted")["reason"]
    assert "does not answer like the Hindsight API" in reason
    assert "HTTP 200, text/html" in reason and "check --base-url" in reason
    assert len(page.seen) == 1  # one request, not the batch
    assert statuses(tmp_path) == {("failed", "bad_response"): 1, ("not_attempted", ""): 9}
    assert "Authorization" in page.seen[0].headers  # it was a request of the run


def test_rows_answered_by_a_web_page_are_never_remembered_as_sent(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """After a run against a page, a run against the API sends every row: none was `ok`."""
    with serving(html_page) as page:
        assert run(tmp_path, page.base_url, "--state", str(tmp_path / "s.sqlite"))[0] == 3
    for path in tmp_path.glob("ledger-*"):
        path.unlink()
    code, _stderr = run(tmp_path, sandbox.base_url, "--state", str(tmp_path / "s2.sqlite"))
    assert code == 0 and statuses(tmp_path) == {("ok", ""): 10}


def test_some_answers_not_the_apis_mid_run_fail_their_rows_only(tmp_path: Path) -> None:
    """A 200 that names another interview (or none) is `bad_response`: never ok, never in the
    state, so the next run sends those rows again."""

    async def mostly_right(request: web.Request) -> web.Response:
        interview = int(request.match_info["tail"].rsplit("/", 1)[-1])
        if interview in (4, 7):
            return web.json_response({"interview_request_id": interview + 1000})
        return web.json_response({"interview_request_id": interview})

    with serving(mostly_right) as server:
        code, _stderr = run(tmp_path, server.base_url, "--concurrency", "1")
        assert code == 1
        lines = ledger(tmp_path)
        failed = {x["interview_id"]: x for x in lines if x["status"] == "failed"}
        assert set(failed) == {"4", "7"}
        assert failed["4"]["error_code"] == "bad_response"
        assert '"interview_request_id": 4' in failed["4"]["error_message"]
        for path in tmp_path.glob("ledger-*"):
            path.unlink()
        server.seen.clear()
        # the re-run skips the rows confirmed, and sends 4 first: a first answer that is not
        # the API's ends that run too
        assert run(tmp_path, server.base_url)[0] == 3
    assert [s.path for s in server.seen] == ["/api/v1/interviews/4"]
    assert statuses(tmp_path) == {
        ("skipped_unchanged", ""): 8,
        ("failed", "bad_response"): 1,
        ("not_attempted", ""): 1,
    }


@pytest.mark.timing
def test_a_load_balancer_answering_502_to_everything_is_an_outage(tmp_path: Path) -> None:
    with serving(bad_gateway) as balancer:
        began = time.monotonic()
        code, stderr = run(tmp_path, balancer.base_url, "--max-outage", "2", rows=50)
        took = time.monotonic() - began
    assert code == 3
    assert took < 2 + 3  # the outage limit, not 50 rows of retries
    reason = event(stderr, "run_aborted")["reason"]
    assert "did not answer for 2 s, or not as the API" in reason and "HTTP 502, text/html" in reason
    counts = statuses(tmp_path)
    assert counts[("not_attempted", "")] >= 49 and sum(counts.values()) == 50
    assert set(counts) <= {("not_attempted", ""), ("failed", "server_error")}
    assert {s.path for s in balancer.seen} == {"/api/v1/interviews/1"}  # probes: its own request


def answering_then(after: int, then: Any) -> Any:
    """A handler that answers as the API for `after` requests, then as `then`."""
    answered = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal answered
        answered += 1
        if answered > after:
            return await then(request)
        interview = int(request.match_info["tail"].rsplit("/", 1)[-1])
        return web.json_response({"interview_request_id": interview})

    return handler


def test_a_portals_page_mid_run_fails_no_row_the_api_never_saw(tmp_path: Path) -> None:
    """A captive portal answers 200 HTML for a moment mid-run, then the API is back: the
    rows it answered are sent again and end ok (it was an outage, not their answers)."""
    back_at: list[float] = []

    async def portal_a_while(request: web.Request) -> web.StreamResponse:
        if not back_at:
            back_at.append(time.monotonic() + 0.4)
        if time.monotonic() < back_at[0]:
            return await html_page(request)
        interview = int(request.match_info["tail"].rsplit("/", 1)[-1])
        return web.json_response({"interview_request_id": interview})

    retries = "[api]\nbackoff_base_s = 0.02\nmax_retries = 10\n"  # outlast the count to one
    with serving(answering_then(5, portal_a_while)) as server:
        code, stderr = run(tmp_path, server.base_url, "--concurrency", "2", rows=30, config=retries)
    assert code == 0, stderr
    assert statuses(tmp_path) == {("ok", ""): 30}
    assert any(e["event"] == "api_unreachable" for e in events(stderr))


def test_workers_waiting_out_a_backoff_are_replaced(tmp_path: Path) -> None:
    """Rows 2-4 meet a 503 and wait out their backoff: the pool starts other workers meanwhile
    (two requests in flight means two sending, not two waiting), so every other row goes
    before any of their retries, not after."""

    async def three_unavailable(request: web.Request) -> web.StreamResponse:
        interview = int(request.match_info["tail"].rsplit("/", 1)[-1])
        if interview in (2, 3, 4):
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        return web.json_response({"interview_request_id": interview})

    slow_backoff = "[api]\nbackoff_base_s = 0.5\nmax_retries = 1\n"
    with serving(three_unavailable) as server:
        code, stderr = run(
            tmp_path, server.base_url, "--concurrency", "2", rows=23, config=slow_backoff
        )
    assert code == 1, stderr
    order = [int(seen.path.rsplit("/", 1)[-1]) for seen in server.seen]
    first_retry = next(at for at, interview in enumerate(order) if order[:at].count(interview))
    assert set(order[:first_retry]) == set(range(1, 24))


@pytest.mark.timing
def test_502s_in_a_row_mid_run_are_an_outage_too(tmp_path: Path) -> None:
    with serving(answering_then(5, bad_gateway)) as server:
        began = time.monotonic()
        code, stderr = run(
            tmp_path, server.base_url, "--max-outage", "2", "--concurrency", "2", rows=60
        )
        took = time.monotonic() - began
    assert code == 3 and took < 2 + 3, took
    assert "HTTP 502, text/html" in event(stderr, "run_aborted")["reason"]
    assert any(e["event"] == "api_unreachable" for e in events(stderr))
    counts = statuses(tmp_path)
    assert counts[("ok", "")] == 5 and sum(counts.values()) == 60
    assert counts[("not_attempted", "")] >= 40  # waited out, not failed one by one
    assert len(server.seen) < 60


@pytest.mark.timing
def test_a_first_request_that_hangs_ends_near_max_outage(tmp_path: Path) -> None:
    """No answer at all counts from the moment the request left: --max-outage 2 with a 30 s
    timeout ends near 2 s, not after the timeout (or six of them)."""
    with serving(hang) as server:
        began = time.monotonic()
        code, stderr = run(tmp_path, server.base_url, "--max-outage", "2")
        took = time.monotonic() - began
    assert code == 3
    assert took < 2 + 3, took
    assert "did not answer for 2 s" in event(stderr, "run_aborted")["reason"]
    assert len(server.seen) == 1
    assert statuses(tmp_path) == {("failed", "interrupted"): 1, ("not_attempted", ""): 9}


@pytest.mark.timing
def test_a_hang_mid_run_ends_near_max_outage(tmp_path: Path) -> None:
    with serving(answering_then(5, hang)) as server:
        began = time.monotonic()
        code, stderr = run(tmp_path, server.base_url, "--max-outage", "2", "--concurrency", "3")
        took = time.monotonic() - began
    assert code == 3 and took < 2 + 3, took
    assert "did not answer for 2 s" in event(stderr, "run_aborted")["reason"]
    counts = statuses(tmp_path)
    assert counts[("ok", "")] == 5 and sum(counts.values()) == 10
    assert set(counts) <= {("ok", ""), ("failed", "interrupted"), ("not_attempted", "")}
    assert len(server.seen) <= 5 + 3  # the pool's requests in flight, no more
