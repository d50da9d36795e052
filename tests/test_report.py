from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_line

from sync_worker.ledger import Ledger
from sync_worker.report import render

BASE = {"run_id": "r1", "source_file": "in.csv", "contact_email": "", "merge": "off",
        "attempts": 1}  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_report_on_a_known_ledger(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ledger{suffix}"
    ledger = Ledger(path)
    for row in range(1, 6):
        write_line(ledger, {**BASE, "source_row": row, "interview_id": str(row), "status": "ok"})
    write_line(ledger, {**BASE, "source_row": 6, "interview_id": "6", "status": "failed",
                  "http_status": 404, "error_code": "not_found",
                  "error_message": "Interview request not found"})  # fmt: skip
    write_line(ledger, {**BASE, "source_row": 7, "interview_id": "x", "status": "invalid",
                  "error_code": "invalid_interview_id", "error_message": "bad id"})  # fmt: skip
    write_line(ledger, {**BASE, "source_row": 8, "interview_id": "8", "status": "not_attempted"})
    ledger.close()
    summary = {"requests_sent": 6, "retries": 0, "rate_limited_429": 0,
               "effective_requests_per_minute": 299.1, "exit_code": 1}  # fmt: skip
    (tmp_path / f"ledger{suffix}.summary.json").write_text(json.dumps(summary))
    text = render(path)
    lines = text.splitlines()
    assert lines[0] == f"ledger {path}: 8 rows"
    assert "  failed                    1" in lines and "  ok                        5" in lines
    assert "  not_found                       1" in lines
    assert (
        "  in.csv row 6 (interview 6): failed HTTP 404 not_found: Interview request not found"
        in lines
    )
    assert "  in.csv row 7 (interview x): invalid invalid_interview_id: bad id" in lines
    assert "effective rate: 299.1 requests/minute" in text
    assert "re-run the same command to retry the 1 failed and 1 not attempted rows" in text
    assert "fix the 1 invalid rows" in text
