from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_no_traceback, assert_one_line, run_cli, write_line

from sync_worker.commands.report import render
from sync_worker.errors import InputError
from sync_worker.record.ledger import COLUMNS, REQUIRED, Ledger

BASE = {"run_id": "r1", "source_file": "in.csv", "contact_email": "", "merge": "off", "attempts": 1}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_report_on_a_known_ledger(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ledger{suffix}"
    ledger = Ledger(path)
    for row in range(1, 6):
        write_line(ledger, {**BASE, "source_row": row, "interview_id": str(row), "status": "ok"})
    write_line(
        ledger,
        {
            **BASE,
            "source_row": 6,
            "interview_id": "6",
            "status": "failed",
            "http_status": 404,
            "error_code": "not_found",
            "error_message": "Interview request not found",
        },
    )
    write_line(
        ledger,
        {
            **BASE,
            "source_row": 7,
            "interview_id": "x",
            "status": "invalid",
            "error_code": "invalid_interview_id",
            "error_message": "bad id",
        },
    )
    write_line(ledger, {**BASE, "source_row": 8, "interview_id": "8", "status": "not_attempted"})
    ledger.close()
    summary = {
        "requests_sent": 6,
        "retries": 0,
        "rate_limited_429": 0,
        "effective_requests_per_minute": 299.1,
        "exit_code": 1,
    }
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


def test_a_ledger_without_its_summary_is_of_a_run_that_did_not_finish(tmp_path: Path) -> None:
    """A killed run leaves its ledger with no summary: never "nothing to do"."""
    path = tmp_path / "ledger.csv"
    _ledger_with_rows(path, 3)
    text = render(path)
    assert "the run did not finish" in text
    assert "next: a re-run of the same command resumes" in text
    assert "nothing to do" not in text


def test_an_aborted_run_says_why_and_not_to_just_run_it_again(tmp_path: Path) -> None:
    """A refused key fails the rows alike: the next step is the fix the run named."""
    path = tmp_path / "ledger.csv"
    ledger = Ledger(path)
    write_line(ledger, {**BASE, "source_row": 1, "interview_id": "1", "status": "failed"})
    write_line(ledger, {**BASE, "source_row": 2, "interview_id": "2", "status": "not_attempted"})
    ledger.close()
    why = "the API refused the key (HTTP 401 unauthorized): check the key in the variable"
    summary = {"exit_code": 3, "aborted_because": why, "requests_sent": 1}
    (tmp_path / "ledger.csv.summary.json").write_text(json.dumps(summary))
    text = render(path)
    assert f"the run was aborted: {why}" in text
    assert "next: fix that first; then a re-run of the same command resumes" in text
    assert "re-run the same command to retry" not in text


def test_a_row_is_shown_as_written_not_as_escaped_for_a_spreadsheet(tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    ledger = Ledger(path)
    row = {**BASE, "source_row": 1, "interview_id": "-5", "status": "invalid"}
    write_line(ledger, {**row, "error_code": "invalid_interview_id", "error_message": "=bad"})
    ledger.close()
    assert "'-5" in path.read_text()  # escaped in the file
    assert "(interview -5): invalid invalid_interview_id: =bad" in render(path)


def _ledger_with_rows(path: Path, rows: int) -> None:
    ledger = Ledger(path)
    for row in range(1, rows + 1):
        write_line(ledger, {**BASE, "source_row": row, "interview_id": str(row), "status": "ok"})
    ledger.close()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_last_line_cut_short_is_left_out_and_said(tmp_path: Path, suffix: str) -> None:
    """A run killed while writing leaves half a line: the rest of the ledger still reports."""
    path = tmp_path / f"ledger{suffix}"
    _ledger_with_rows(path, 3)
    path.write_bytes(path.read_bytes()[:-9])
    text = render(path)
    assert text.splitlines()[0] == f"ledger {path}: 2 rows"
    assert "last line was cut short" in text


@pytest.mark.parametrize(
    "summary",
    [b"{not json", b"\xff\xfe", b"[1, 2]", b""],
    ids=["bad-json", "not-utf8", "not-an-object", "empty"],
)
def test_a_summary_that_cannot_be_read_is_said_and_the_report_goes_on(
    tmp_path: Path, summary: bytes
) -> None:
    path = tmp_path / "ledger.csv"
    _ledger_with_rows(path, 2)
    (tmp_path / "ledger.csv.summary.json").write_bytes(summary)
    text = render(path)
    assert "  ok                        2" in text.splitlines()
    assert f"summary {path}.summary.json: " in text and "figures are left out" in text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "the file is empty"),
        (b"\x00\x01PK\x03\x04", "a binary file"),
        (b"caf\xe9,x\n", "not UTF-8"),
        (b"interview_id,name\n1,a\n", "no column run_id"),
        (b'{"status": "ok"}\nnot json\n{"status": "ok"}\n', "line 1 is not a ledger line"),
        (",".join(COLUMNS).encode() + b"\nr1,in.csv\nr1\n", "record 2 has 2 cells"),
    ],
    ids=["empty", "binary", "not-utf8", "another-csv", "jsonl-without-columns", "short-row"],
)
def test_what_is_not_a_ledger_is_one_input_error(
    tmp_path: Path, content: bytes, words: str
) -> None:
    path = tmp_path / "ledger.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=words) as error:
        render(path)
    assert error.value.exit_code == 2 and str(path) in str(error.value)


JSONL_LINE = (json.dumps(dict.fromkeys(COLUMNS, "")) + "\n").encode()


def _ledger_text(rows: int) -> str:
    lines = [",".join(REQUIRED)]  # the columns a ledger of every release has
    lines += [f"r1,in.csv,{row},{row},,ok,200,,,1,off,,," for row in range(1, rows + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("in.csv", b"interview_id,contact_name\n1,Ana\n", "no column run_id"),
        ("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file"),
        ("ledger.jsonl", JSONL_LINE + b"{oops\n" + JSONL_LINE, "line 2 is not JSON"),
        ("other.jsonl", b'{"id": 1}\n', "line 1 is not a ledger line (no run_id)"),
        ("empty.csv", b"", "the file is empty"),
        ("missing.csv", None, "no such file"),
        ("folder.csv", "folder", "it is a folder"),
    ],
    ids=["another-csv", "binary", "jsonl-bad-line", "other-jsonl", "empty", "missing", "folder"],
)
def test_report_on_what_is_not_a_ledger(
    tmp_path: Path, name: str, content: bytes | str | None, words: str
) -> None:
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content == "folder":
        (tmp_path / name).mkdir()
    assert_one_line(run_cli("report", name, cwd=tmp_path), 2, name, words)


def test_report_reads_past_a_corrupt_summary_and_a_cut_line(tmp_path: Path) -> None:
    (tmp_path / "ledger.csv").write_text(_ledger_text(3) + "r1,in.csv,4,4,,o")  # killed mid-line
    (tmp_path / "ledger.csv.summary.json").write_text('{"requests_sent": 3, "retr')
    result = run_cli("report", "ledger.csv", cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert result.stdout.startswith("ledger ledger.csv: 3 rows")
    assert "last line was cut short" in result.stdout
    assert "summary ledger.csv.summary.json: cannot be read" in result.stdout
