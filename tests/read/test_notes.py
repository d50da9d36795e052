"""The notes file (SPEC section 6): the newer of file and state wins, nothing dropped silently."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from helpers import (
    SandboxServer,
    assert_no_traceback,
    assert_one_line,
    cli_env,
    run_args,
    run_cli,
    strict_json,
    write_csv,
    write_parquet,
)

from sync_worker.read.notes import read_notes
from sync_worker.settings.config import Settings

HEADER = ["interview_id", "contact_email", "context.origin", "context.owner"]
DAY = 86_400


def merge_run(tmp_path: Path, server: SandboxServer, ledger: str, *args: str) -> Any:
    return run_cli(
        *run_args(server, "--existing-notes", "notes.csv", *args, ledger=ledger), cwd=tmp_path
    )


def notes_of(server: SandboxServer, interview_id: int) -> Any:
    shown = server.interview(interview_id)
    assert shown is not None
    return shown["contact_context"]


def write_notes(
    tmp_path: Path,
    rows: list[list[str]],
    age_s: float = 0,
    header: tuple[str, ...] = ("contact_email", "notes"),
) -> None:
    path = write_csv(tmp_path / "notes.csv", list(header), rows)
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))


def test_a_stale_file_copied_afresh_never_drops_what_earlier_nights_added(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_notes(tmp_path, [["ana@x.com", '{"stage": "Demo"}']], age_s=2 * DAY)
    write_csv(tmp_path / "in.csv", HEADER, [[1, "ana@x.com", "SaaStr", ""]])
    assert merge_run(tmp_path, sandbox, "night1.csv").code == 0
    assert notes_of(sandbox, 1) == {"stage": "Demo", "origin": "SaaStr"}

    write_notes(tmp_path, [["ana@x.com", '{"stage": "Demo"}']])  # the same export, copied today
    write_csv(tmp_path / "in.csv", HEADER, [[1, "ana@x.com", "", "Ann"]])
    night2 = merge_run(tmp_path, sandbox, "night2.csv")
    assert night2.code == 0, night2.stderr
    assert notes_of(sandbox, 1) == {"stage": "Demo", "origin": "SaaStr", "owner": "Ann"}


def test_a_fresh_export_wins_and_a_stale_row_does_not(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(
        tmp_path / "in.csv", HEADER, [[1, "ana@x.com", "SaaStr", ""], [2, "bo@x.com", "Web", ""]]
    )
    write_notes(tmp_path, [["ana@x.com", "Old"], ["bo@x.com", "Old"]], age_s=2 * DAY)
    assert merge_run(tmp_path, sandbox, "night1.csv").code == 0

    edited = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - DAY))
    write_notes(
        tmp_path,
        [
            ["ana@x.com", '{"stage": "Won"}', edited],  # edited in the app
            ["bo@x.com", '{"stage": "Lost"}', stale],
        ],  # older than our send
        header=("contact_email", "notes", "updated_at"),
    )
    write_csv(
        tmp_path / "in.csv", HEADER, [[1, "ana@x.com", "", "Ann"], [2, "bo@x.com", "", "Ann"]]
    )
    assert merge_run(tmp_path, sandbox, "night2.csv").code == 0
    assert notes_of(sandbox, 1) == {"stage": "Won", "owner": "Ann"}  # the file was newer
    assert notes_of(sandbox, 2) == {"notes": "Old", "origin": "Web", "owner": "Ann"}  # the state


def test_rows_of_one_contact_are_combined_not_first_wins(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_notes(
        tmp_path,
        [
            ["ana@x.com", "", '{"a": "by email"}'],
            ["", "1", '{"b": "by id"}'],
            ["", "2", '{"c": "other interview"}'],
        ],
        header=("contact_email", "interview_id", "notes"),
    )
    (tmp_path / "in.csv").write_text(
        "interview_id,contact_email,context.origin\n1,ana@x.com,SaaStr\n2,ana@x.com,SaaStr\n"
    )
    sandbox.link({2: 1})
    assert merge_run(tmp_path, sandbox, "l.csv").code == 0
    combined = {"a": "by email", "b": "by id", "c": "other interview", "origin": "SaaStr"}
    assert notes_of(sandbox, 1) == combined and notes_of(sandbox, 2) == combined


def test_unusable_notes_rows_are_reported_not_fatal(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_notes(
        tmp_path,
        [["", "4.0", "Excel id"], ["", "5", "{not json"], ["", "", "nobody"], ["", "6", "kept"]],
        header=("contact_email", "interview_id", "notes"),
    )
    (tmp_path / "in.csv").write_text("interview_id,contact_context\n6,new\n")
    result = merge_run(tmp_path, sandbox, "l.csv")
    assert result.code == 0, result.stderr
    problems = [e["message"] for e in result.events() if e["event"] == "notes_row_unusable"]
    assert [p.split(":")[0] for p in problems] == [
        "notes.csv row 1",
        "notes.csv row 2",
        "notes.csv row 3",
    ]
    assert "'4.0' is not a positive whole number" in problems[0]
    assert "not valid JSON" in problems[1] and "neither" in problems[2]
    assert notes_of(sandbox, 6) == "kept\n\nnew"

    checked = run_cli(
        "validate",
        "in.csv",
        "--existing-notes",
        "notes.csv",
        cwd=tmp_path,
        env=cli_env(HINDSIGHT_API_KEY=""),
    )
    assert checked.code == 1
    listed = [line for line in checked.stdout.splitlines() if "[notes_row_unusable]" in line]
    assert len(listed) == 3 and "notes.csv row 1" in listed[0]
    assert "3 unusable notes rows" in checked.stdout


def test_a_cp1252_notes_file_gets_the_input_warning(tmp_path: Path, sandbox: SandboxServer) -> None:
    (tmp_path / "notes.csv").write_bytes("interview_id,notes\n1,Caf\xe9 owner\n".encode("cp1252"))
    (tmp_path / "in.csv").write_text("interview_id,contact_context\n1,new\n")
    result = merge_run(tmp_path, sandbox, "l.csv")
    assert result.code == 0, result.stderr
    warning = result.event("input_warning")["message"]
    assert "notes.csv" in warning and "cp1252" in warning
    assert notes_of(sandbox, 1) == "Café owner\n\nnew"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2026-11-05", "2026-11-05T00:00:00.000Z"),
        ("2026-11-05T10:00:00+02:00", "2026-11-05T08:00:00.000Z"),
        ("2026-11-05 10:00:00.250", "2026-11-05T10:00:00.250Z"),
    ],
    ids=["date", "offset", "millis"],
)
def test_updated_at_cells_become_state_times(tmp_path: Path, cell: str, expected: str) -> None:
    write_notes(
        tmp_path, [["ana@x.com", "x", cell]], header=("contact_email", "notes", "updated_at")
    )
    notes = read_notes(tmp_path / "notes.csv", Settings())
    assert [n.time for n in notes.by_email["ana@x.com"]] == [expected]


def test_a_row_seen_before_keeps_its_first_time(tmp_path: Path) -> None:
    write_notes(tmp_path, [["ana@x.com", '{"stage": "Demo"}']])
    first = read_notes(tmp_path / "notes.csv", Settings())
    [(digest, _when)] = first.sightings
    again = read_notes(tmp_path / "notes.csv", Settings(), {digest: "2020-01-01T00:00:00.000Z"})
    assert again.sightings == []
    assert again.by_email["ana@x.com"][0].time == "2020-01-01T00:00:00.000Z"
    assert json.dumps(again.by_email["ana@x.com"][0].context) == '{"stage": "Demo"}'


def _notes_parquet(path: Path, notes: str) -> Path:
    return write_parquet(
        path,
        {
            "contact_email": pa.array(["a@x.com"]),
            "notes": pa.array([notes]),
            "tags": pa.array([[1, 2]]),  # a list column the notes file does not use
        },
    )


def test_existing_notes_parquet_with_a_list_column_is_read(tmp_path: Path) -> None:
    _notes_parquet(tmp_path / "notes.parquet", "old")
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.com", "new"]],
    )
    result = run_cli(
        "plan",
        "in.csv",
        "--existing-notes",
        "notes.parquet",
        "--state",
        "state.sqlite",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    [planned] = [strict_json(line) for line in result.stdout.splitlines()]
    assert planned["body"] == {"contact_context": "old\n\nnew"}


def test_an_existing_notes_file_with_two_notes_columns_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("contact_email,Notes,notes \na@x.com,1,2\n")
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.com", "new"]],
    )
    result = run_cli("validate", "in.csv", "--existing-notes", "notes.csv", cwd=tmp_path)
    assert_one_line(result, 2, "notes.csv", "'Notes'", "'notes '", "both give notes")


def test_a_notes_row_that_is_not_strict_json_is_named_and_left_out(tmp_path: Path) -> None:
    """SPEC 6: an unusable notes row is reported with file, row and reason; the others go on."""
    _notes_parquet(tmp_path / "notes.parquet", '{"a": "\\ud800"}')
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.com", "new"]],
    )
    result = run_cli("validate", "in.csv", "--existing-notes", "notes.parquet", cwd=tmp_path)
    assert_no_traceback(result, 1)
    assert "notes.parquet row 1: column notes: not valid JSON (lone surrogate" in result.stdout


def test_existing_notes_id_in_unicode_digits_is_not_an_id(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("interview_id,notes\n\u00b2,old\n")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_context"], [[2, "new"]])
    result = run_cli(
        "plan", "in.csv", "--existing-notes", "notes.csv", "--state", "state.sqlite", cwd=tmp_path
    )
    assert_no_traceback(result, 0)
    [planned] = [strict_json(line) for line in result.stdout.splitlines()]
    assert planned["body"] == {"contact_context": "new"}


def test_notes_file_rows_of_one_contact_are_combined_and_bad_rows_named(
    tmp_path: Path,
) -> None:
    """A contact with two rows in the notes export (by email, and by id) kept only the last;
    a row with an id like 4821.0, or with neither key, was dropped without a word."""
    (tmp_path / "notes.csv").write_text(
        "interview_id,contact_email,notes\n11,ana@x.com,by id and email\n,ANA@x.com,by email\n"
        "12,,by id alone\n4821.0,,excel id\n,,no key\n"
    )
    (tmp_path / "in.csv").write_text(
        "interview_id,contact_email,contact_context,objective\n"
        "11,Ana@X.com,new,\n12,ana@x.com,,win\n"
    )
    result = run_cli(
        "plan", "in.csv", "--existing-notes", "notes.csv", "--state", "state.sqlite", cwd=tmp_path
    )
    assert_no_traceback(result, 0)
    bodies = [strict_json(line)["body"] for line in result.stdout.splitlines()]
    combined = "by id and email\n\nby email\n\nby id alone\n\nnew"
    assert bodies == [{"contact_context": combined}, {"objective": "win"}]  # the notes once
    named = [e["message"] for e in result.events() if e["event"] == "notes_row_unusable"]
    assert named == [
        "notes.csv row 4: column interview_id: '4821.0' is not a positive whole number; the row "
        "is not used",
        "notes.csv row 5: neither contact_email nor interview_id is filled; the row is not used",
    ]
