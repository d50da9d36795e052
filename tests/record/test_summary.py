"""The run's summary (record/summary.py): its figures hold to what was sent."""

from __future__ import annotations

from pathlib import Path

from helpers import SandboxServer, run_ok


def test_one_request_reports_no_more_than_the_limit(tmp_path: Path, sandbox: SandboxServer) -> None:
    summary = run_ok(tmp_path, sandbox, "--rate-limit", "20", "--rate-period", "1")
    assert summary["requests_sent"] == 1
    per_minute = summary["effective_requests_per_minute"]
    assert isinstance(per_minute, float) and 0 < per_minute <= 20 * 60
