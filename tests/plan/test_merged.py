"""Merging end to end: the real CLI against the sandbox's notes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from helpers import SandboxServer, cli_env, read_ledger, run_cli, write_csv

from sync_worker.store.state import State

HEADER = ["interview_id", "contact_email", "contact_context", "context.stage"]


def merge_run(tmp_path: Path, server: SandboxServer, *args: str) -> object:
    return run_cli(
        "run",
        "in.csv",
        "--merge",
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
        cwd=tmp_path,
    )


def notes(server: SandboxServer, interview_id: int) -> object:
    shown = server.interview(interview_id)
    assert shown is not None
    return shown["contact_context"]


def test_merge_keeps_old_and_new_and_is_stable(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(
        tmp_path / "notes.csv",
        ["contact_email", "interview_id", "notes"],
        [
            ["ana@x.com", "", '{"relationship": "Met at SaaStr", "stage": "Demo"}'],
            ["", "3", "Prefers email."],
        ],
    )
    write_csv(
        tmp_path / "in.csv",
        HEADER,
        [
            [1, "ana@x.com", "POC done", "Closed Lost"],
            [2, "ana@x.com", "Pricing was the blocker", ""],
            [3, "", "Renewal in March", ""],
            [4, "", "No notes known", ""],
        ],
    )
    sandbox.link({2: 1})  # one email, one contact, as on the API
    first = merge_run(tmp_path, sandbox, "--existing-notes", "notes.csv")
    assert first.code == 0, first.stderr  # type: ignore[attr-defined]
    ana = {
        "relationship": "Met at SaaStr",
        "stage": "Closed Lost",
        "notes": "POC done\n\nPricing was the blocker",
    }
    assert notes(sandbox, 1) == ana and notes(sandbox, 2) == ana  # both rows' contexts kept
    assert notes(sandbox, 3) == "Prefers email.\n\nRenewal in March"
    assert notes(sandbox, 4) == "No notes known"
    merges = {line["interview_id"]: line["merge"] for line in read_ledger(tmp_path / "ledger.csv")}
    assert merges == {"1": "merged", "2": "merged", "3": "merged", "4": "no_existing"}
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    assert (summary["contacts_merged"], summary["contacts_no_existing"]) == (2, 1)
    ana_ids = [r["id"] for r in sandbox.requests() if r["id"] in ("1", "2")]
    assert ana_ids == ["1"]  # a contact's notes travel once, with its first interview
    carried = {
        line["interview_id"]: line["sent_with"] for line in read_ledger(tmp_path / "ledger.csv")
    }
    assert carried == {"1": "", "2": "1", "3": "", "4": ""}

    sent = len(sandbox.requests())
    assert merge_run(tmp_path, sandbox, "--ledger", "second.csv").code == 0  # type: ignore[attr-defined]
    assert len(sandbox.requests()) == sent  # unchanged re-run sends nothing
    assert {x["status"] for x in read_ledger(tmp_path / "second.csv")} == {"skipped_unchanged"}

    before = {i: json.dumps(notes(sandbox, i), sort_keys=True) for i in (1, 2, 3, 4)}
    forced = merge_run(tmp_path, sandbox, "--force", "--ledger", "third.csv")
    assert forced.code == 0  # type: ignore[attr-defined]
    assert len(sandbox.requests()) == sent + 3  # every field, still once per contact
    after = {i: json.dumps(notes(sandbox, i), sort_keys=True) for i in (1, 2, 3, 4)}
    assert after == before  # a forced re-run leaves every contact's notes byte-identical

    write_csv(tmp_path / "in.csv", HEADER, [[3, "", "Signed in April", ""]])
    assert merge_run(tmp_path, sandbox, "--ledger", "fourth.csv").code == 0  # type: ignore[attr-defined]
    assert notes(sandbox, 3) == "Prefers email.\n\nRenewal in March\n\nSigned in April"


def test_plan_shows_the_merged_body(tmp_path: Path) -> None:
    write_csv(tmp_path / "notes.csv", ["interview_id", "notes"], [["9", "Old note"]])
    write_csv(tmp_path / "in.csv", HEADER, [[9, "", "", "Won"]])
    result = run_cli(
        "plan",
        "in.csv",
        "--existing-notes",
        "notes.csv",
        cwd=tmp_path,
        env=cli_env(HINDSIGHT_API_KEY=""),
    )
    assert result.code == 0, result.stderr
    [line] = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["body"] == {"contact_context": {"stage": "Won", "notes": "Old note"}}
    assert line["merge"] == "merged"


def test_without_merge_last_context_wins_with_a_warning(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(
        tmp_path / "in.csv", HEADER, [[1, "bo@x.com", "first", ""], [2, "bo@x.com", "second", ""]]
    )
    sandbox.link({2: 1})
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
        "1000",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
    assert result.code == 0
    assert [r["id"] for r in sandbox.requests()] == ["1"]  # carrying the last row's context
    assert notes(sandbox, 1) == notes(sandbox, 2) == "second"
    assert result.event("several_contexts_per_contact")["contacts"] == 1
    assert {x["merge"] for x in read_ledger(tmp_path / "l.csv")} == {"off"}


def test_a_merged_run_writes_one_ledger_line_per_row_and_a_rerun_skips_them(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Both merge roads in one run (flat contacts by columns; text contexts, an interview of
    several rows, bad JSON by rows): every input row gets exactly one ledger line, and the
    nightly re-run finds every sent row unchanged (its notes remembered by the state)."""
    write_csv(
        tmp_path / "in.csv",
        HEADER,
        [
            [1, "ana@x.com", "", "Demo"],
            [2, "bo@x.com", "", "Won"],
            [3, "ANA@x.com", "", "Lost"],
            [4, "cy@x.com", "met at SaaStr", ""],
            [4, "cy@x.com", "", "Demo"],
            [5, "", '{"bad', "Won"],
            [6, "", "", ""],
            [7, "dee@x.com", "", "Demo"],
        ],
    )
    sandbox.link({3: 1})
    assert merge_run(tmp_path, sandbox).code == 1  # type: ignore[attr-defined]
    lines = read_ledger(tmp_path / "ledger.csv")
    assert sorted(int(line["source_row"]) for line in lines) == list(range(1, 9))
    statuses = {int(line["source_row"]): line["status"] for line in lines}
    assert statuses == {
        1: "ok",
        2: "ok",
        3: "ok",
        4: "ok",
        5: "ok",
        6: "invalid",
        7: "invalid",
        8: "ok",
    }
    assert notes(sandbox, 1) == notes(sandbox, 3) == {"stage": "Lost"}
    assert notes(sandbox, 4) == {"notes": "met at SaaStr", "stage": "Demo"}
    assert merge_run(tmp_path, sandbox, "--ledger", "again.csv").code == 1  # type: ignore[attr-defined]
    again = {
        int(line["source_row"]): line["status"] for line in read_ledger(tmp_path / "again.csv")
    }
    assert again == {
        **dict.fromkeys([1, 2, 3, 4, 5, 8], "skipped_unchanged"),
        6: "invalid",
        7: "invalid",
    }


def test_a_remembered_context_that_is_not_json_is_one_line_naming_the_state(
    tmp_path: Path,
) -> None:
    """Remembered contexts are parsed only when merging needs one: a damaged one stops the
    command there, exit 2, naming the state file (never a traceback)."""
    State.open(tmp_path / "state.sqlite").close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("INSERT INTO contacts VALUES ('ana@x.com', '{oops', 'r', 't')")
    db.commit()
    db.close()
    write_csv(tmp_path / "in.csv", HEADER, [[1, "ana@x.com", "", "Demo"]])
    result = run_cli(
        "plan",
        "in.csv",
        "--merge",
        "--state",
        "state.sqlite",
        cwd=tmp_path,
        env=cli_env(HINDSIGHT_API_KEY=""),
    )
    assert result.code == 2, result.stderr
    assert "state.sqlite" in result.stderr and "a context that is not JSON" in result.stderr
    assert "Traceback" not in result.stderr
