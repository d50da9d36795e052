"""The row road (plan/rows.py) end to end: contexts that are not strict JSON are invalid rows,
named in `validate`, never printed by `plan`, settled in the ledger by `run`."""

from __future__ import annotations

from pathlib import Path

from helpers import (
    SandboxServer,
    assert_ledger_rows,
    assert_no_traceback,
    run_cli,
    strict_json,
    write_csv,
)

BAD_CONTEXTS = {  # source row -> contact_context that json.loads takes but strict JSON does not
    1: '{"a": "\\ud800"}',
    2: '{"a": NaN}',
    3: '{"a": Infinity}',
    4: '{"a": -Infinity}',
    5: '{"a": 1e400}',
}
BAD_CONTEXT_WORDS = {1: "lone surrogate", 2: "NaN", 3: "Infinity", 4: "-Infinity", 5: "1e400"}


def _bad_contexts_csv(tmp_path: Path) -> Path:
    """Rows 1-5: contexts that are not strict JSON; 6: the plain text NaN; 7: good JSON."""
    rows = [[row, text] for row, text in BAD_CONTEXTS.items()]
    rows += [[6, "NaN"], [7, '{"title": "CTO"}']]
    return write_csv(tmp_path / "in.csv", ["interview_id", "contact_context"], rows)


def test_bad_json_contexts_are_invalid_rows_in_validate(tmp_path: Path) -> None:
    _bad_contexts_csv(tmp_path)
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 1)
    lines = result.stdout.splitlines()
    assert lines[-1] == "7 rows in 1 file(s): 2 requests to send, 5 invalid rows"
    for row, word in BAD_CONTEXT_WORDS.items():
        line = lines[row - 1]
        assert line.startswith(f"in.csv row {row}, column contact_context: not valid JSON"), line
        assert word in line and line.endswith("[invalid_json]"), line


def test_plan_never_prints_a_body_that_is_not_strict_json(tmp_path: Path) -> None:
    _bad_contexts_csv(tmp_path)
    result = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(result, 0)
    planned = [strict_json(line) for line in result.stdout.splitlines()]
    assert [(p["interview_id"], p["body"]) for p in planned] == [
        (6, {"contact_context": "NaN"}),  # plain text NaN stays the text "NaN"
        (7, {"contact_context": {"title": "CTO"}}),
    ]


def test_run_sends_the_good_rows_and_settles_bad_json_as_invalid(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    _bad_contexts_csv(tmp_path)
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "ledger.csv",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 1)
    by_row = {
        int(line["source_row"]): line for line in assert_ledger_rows(tmp_path / "ledger.csv", 7)
    }
    for row, word in BAD_CONTEXT_WORDS.items():
        assert (by_row[row]["status"], by_row[row]["error_code"]) == ("invalid", "invalid_json")
        assert f"in.csv row {row}, column contact_context" in by_row[row]["error_message"]
        assert word in by_row[row]["error_message"]
    assert by_row[6]["status"] == by_row[7]["status"] == "ok"
    assert [r["status"] for r in sandbox.requests()] == [200, 200]  # nothing the API refuses
    assert (sandbox.interview(6) or {})["contact_context"] == "NaN"
