"""The run's summary (record/summary.py): its figures hold to what was sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SandboxServer, assert_no_traceback, run_cli, run_ok, write_csv


def test_one_request_has_no_rate_to_report(tmp_path: Path, sandbox: SandboxServer) -> None:
    summary = run_ok(tmp_path, sandbox, "--rate-limit", "20", "--rate-period", "1")
    assert summary["requests_sent"] == 1
    assert summary["effective_requests_per_minute"] is None  # not 30,000 a minute, nor 20


@pytest.mark.timing
def test_a_short_paced_run_reports_the_rate_it_was_paced_at(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """21 requests at 20 a second span 20 intervals: the rate reads about 1,200 a minute (the
    bucket lets its first two go together), not 21 over a whole rate period."""
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[i, "x"] for i in range(1, 22)])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        "--rate-limit",
        "20",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    per_minute = json.loads((tmp_path / "l.csv.summary.json").read_text())[
        "effective_requests_per_minute"
    ]
    assert 0.9 * 1200 <= per_minute <= 1.1 * 1200, per_minute
