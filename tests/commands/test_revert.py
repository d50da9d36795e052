"""Revert end to end: the real CLI against the sandbox, as a user who made a mistake would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import (
    Result,
    SandboxServer,
    assert_ledger_rows,
    assert_no_traceback,
    assert_one_line,
    cli_env,
    read_ledger,
    run_against,
    run_args,
    run_cli,
    write_csv,
)

HEADER = ["interview_id", "contact_email", "contact_name", "objective", "contact_context"]
SHOWN = ("contact_name", "objective", "contact_context")
# A wrong mapping: the notes come from the title column, the objective from the stage column.
BAD_MAPPING = '[columns]\ncontact_context = "Title"\nobjective = "Stage"\n'


def sync(tmp_path: Path, server: SandboxServer, source: str, ledger: str, *args: str) -> Any:
    return run_cli(*run_args(server, *args, ledger=ledger, source=source), cwd=tmp_path)


def revert(tmp_path: Path, server: SandboxServer, run_id: str, ledger: str, *args: str) -> Any:
    return run_cli(
        "revert",
        run_id,
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        ledger,
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
        cwd=tmp_path,
    )


def run_id_of(tmp_path: Path, ledger: str) -> str:
    summary = json.loads((tmp_path / f"{ledger}.summary.json").read_text())
    return str(summary["run_id"])


def snapshot(server: SandboxServer, ids: range | list[int]) -> dict[int, Any]:
    """What the sandbox holds for each interview: its fields, as JSON text (byte for byte)."""
    shown = {}
    for interview_id in ids:
        held = server.interview(interview_id)
        shown[interview_id] = (
            None
            if held is None
            else json.dumps({k: held[k] for k in SHOWN}, sort_keys=True, ensure_ascii=False)
        )
    return shown


def statuses(tmp_path: Path, ledger: str) -> dict[str, str]:
    return {line["interview_id"]: line["status"] for line in read_ledger(tmp_path / ledger)}


def write_night_a(tmp_path: Path) -> None:
    """Run A: names, objectives and contexts; notes known for two contacts from a notes file,
    and names and objectives first set by a run before it (so their values before are known)."""
    write_csv(
        tmp_path / "notes.csv",
        ["contact_email", "interview_id", "notes"],
        [
            ["ana@x.com", "", '{"relationship": "Met at SaaStr", "stage": "Demo"}'],
            ["", "3", "Prefers email."],
            ["bo@x.com", "", "Met at a fair"],
        ],
    )
    write_csv(
        tmp_path / "setup.csv",
        HEADER,
        [
            [1, "ana@x.com", "Ana", "Intro call", ""],
            [2, "bo@x.com", "Bo", "Intro call", ""],
            [3, "", "Cy", "Intro call", ""],
        ],
    )
    write_csv(
        tmp_path / "a.csv",
        HEADER,
        [
            [1, "ana@x.com", "Ana Lima", "Discuss pricing", "POC done"],
            [2, "bo@x.com", "Bo", "Renewal", '{"stage": "Won"}'],
            [3, "", "Cy", "Intro", "Renewal in March"],
        ],
    )


def _revert(tmp_path: Path, *args: str, base_url: str = "http://127.0.0.1:9/api/v1") -> Result:
    return run_cli(
        "revert",
        *args,
        "--base-url",
        base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "r.csv",
        cwd=tmp_path,
    )


def _state_with_one_run(tmp_path: Path, server: SandboxServer) -> str:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    assert run_against(tmp_path, server, "--ledger", "first.csv").code == 0
    return str(read_ledger(tmp_path / "first.csv")[0]["run_id"])


def test_revert_of_an_unknown_run_names_it(tmp_path: Path, sandbox: SandboxServer) -> None:
    _state_with_one_run(tmp_path, sandbox)
    result = _revert(tmp_path, "20200101T000000Z-abcdef", base_url=sandbox.base_url)
    assert_one_line(result, 2, "run 20200101T000000Z-abcdef is not in", "--state")
    assert not (tmp_path / "r.csv").exists()


def test_revert_refuses_a_key_on_the_command_line(tmp_path: Path) -> None:
    result = _revert(tmp_path, "x", "--api-key", "sk-live-abcdef123")
    assert_no_traceback(result, 2)  # click's usage error, as for `run`
    assert "never taken on the command line" in result.stderr


def test_revert_without_a_state_names_it(tmp_path: Path) -> None:
    result = _revert(tmp_path, "20200101T000000Z-abcdef")
    assert_one_line(result, 2, "state state.sqlite not found", "--state")
    assert not (tmp_path / "state.sqlite").exists()  # no empty state left behind


def test_revert_of_a_run_that_changed_nothing_is_done_at_once(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    _state_with_one_run(tmp_path, sandbox)
    assert (
        run_against(tmp_path, sandbox, "--ledger", "second.csv").code == 0
    )  # all skipped_unchanged
    second = str(read_ledger(tmp_path / "second.csv")[0]["run_id"])
    result = run_cli(
        "revert",
        second,
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "r.csv",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "r.csv", 0)


def test_revert_a_bad_run_then_the_good_one(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_night_a(tmp_path)
    assert sync(tmp_path, sandbox, "setup.csv", "setup.csv.ledger.csv").code == 0
    first = sync(tmp_path, sandbox, "a.csv", "a.csv.ledger.csv", "--existing-notes", "notes.csv")
    assert first.code == 0, first.stderr
    after_a = snapshot(sandbox, [1, 2, 3])
    assert json.loads(after_a[1])["contact_context"] == {  # type: ignore[arg-type]
        "notes": "POC done",
        "relationship": "Met at SaaStr",
        "stage": "Demo",
    }

    (tmp_path / "bad.toml").write_text(BAD_MAPPING)
    write_csv(
        tmp_path / "b.csv",
        ["interview_id", "contact_email", "Title", "Stage"],
        [
            [1, "ana@x.com", "CTO", "Closed Lost"],
            [3, "", "CFO", "Demo"],
            [7, "new@x.com", "COO", "Demo"],  # contacts run A never touched
            [8, "", "VP", "Won"],
        ],
    )
    bad = sync(tmp_path, sandbox, "b.csv", "b.ledger.csv", "--config", "bad.toml")
    assert bad.code == 0, bad.stderr
    after_b = snapshot(sandbox, [1, 2, 3, 7, 8])
    assert after_b[1] != after_a[1] and after_b[3] != after_a[3]
    run_b = run_id_of(tmp_path, "b.ledger.csv")

    sent = len(sandbox.requests())
    back = revert(tmp_path, sandbox, run_b, "revert-b.csv")
    assert back.code == 1, back.stderr  # B's new contacts cannot be put back
    assert snapshot(sandbox, [1, 2, 3]) == after_a  # A's state back, byte for byte
    assert snapshot(sandbox, [7, 8]) == {7: after_b[7], 8: after_b[8]}  # left alone
    assert statuses(tmp_path, "revert-b.csv") == {
        "1": "ok",
        "3": "ok",
        "7": "not_restorable",
        "8": "not_restorable",
    }
    assert sorted(r["id"] for r in sandbox.requests()[sent:]) == ["1", "3"]
    lines = read_ledger(tmp_path / "revert-b.csv")
    assert {x["source_file"] for x in lines} == {f"revert {run_b}"}
    assert sorted(int(x["source_row"]) for x in lines) == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "revert-b.csv.summary.json").read_text())
    assert summary["exit_code"] == 1 and summary["counts"] == {"not_restorable": 2, "ok": 2}

    run_a = run_id_of(tmp_path, "a.csv.ledger.csv")
    undo_a = revert(tmp_path, sandbox, run_a, "revert-a.csv")
    assert undo_a.code == 0, undo_a.stderr  # every value A wrote had a known value before
    notes_back = {i: sandbox.interview(i)["contact_context"] for i in (1, 2, 3)}  # type: ignore[index]
    assert notes_back == {
        1: {"relationship": "Met at SaaStr", "stage": "Demo"},
        2: "Met at a fair",
        3: "Prefers email.",
    }  # the notes file's
    assert sandbox.interview(1)["objective"] == "Intro call"  # type: ignore[index]

    shown = run_cli(
        "history",
        "--email",
        "ana@x.com",
        "--state",
        "state.sqlite",
        "--json",
        cwd=tmp_path,
        env=cli_env(HINDSIGHT_API_KEY=""),
    )
    assert shown.code == 0, shown.stderr
    notes_runs = [v["run_id"] for v in json.loads(shown.stdout) if v["field"] == "contact_context"]
    revert_b, revert_a = run_id_of(tmp_path, "revert-b.csv"), run_id_of(tmp_path, "revert-a.csv")
    assert notes_runs == [revert_a, revert_b, run_b, run_a]  # every step, newest first


def test_bo_without_known_notes_is_not_restorable(tmp_path: Path, sandbox: SandboxServer) -> None:
    """A field whose value before was never known: nothing is sent for it, exit 1."""
    write_csv(tmp_path / "a.csv", HEADER, [[2, "bo@x.com", "", "", '{"stage": "Won"}']])
    assert sync(tmp_path, sandbox, "a.csv", "a.csv.l.csv").code == 0
    sent = len(sandbox.requests())
    result = revert(tmp_path, sandbox, run_id_of(tmp_path, "a.csv.l.csv"), "r.csv")
    assert result.code == 1
    [line] = read_ledger(tmp_path / "r.csv")
    assert (line["status"], line["error_code"]) == ("not_restorable", "not_restorable")
    assert "contact_context" in line["error_message"]
    assert len(sandbox.requests()) == sent


def test_conflict_unless_forced_and_a_revert_of_a_revert(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "one.csv", HEADER, [[1, "", "Ana", "First", ""]])
    write_csv(tmp_path / "two.csv", HEADER, [[1, "", "Ana", "Second", ""]])
    write_csv(tmp_path / "three.csv", HEADER, [[1, "", "Ana", "Third", ""]])
    for name in ("one", "two", "three"):
        assert sync(tmp_path, sandbox, f"{name}.csv", f"{name}.l.csv").code == 0
    two, three = run_id_of(tmp_path, "two.l.csv"), run_id_of(tmp_path, "three.l.csv")

    refused = revert(tmp_path, sandbox, two, "r1.csv")  # three wrote the objective since
    assert refused.code == 1
    [line] = read_ledger(tmp_path / "r1.csv")
    assert line["status"] == "conflict" and three in line["error_message"]
    assert sandbox.interview(1)["objective"] == "Third"  # type: ignore[index]

    undo_three = revert(tmp_path, sandbox, three, "r2.csv")
    assert undo_three.code == 0 and sandbox.interview(1)["objective"] == "Second"  # type: ignore[index]
    redo_three = revert(tmp_path, sandbox, run_id_of(tmp_path, "r2.csv"), "r3.csv")
    assert redo_three.code == 0 and sandbox.interview(1)["objective"] == "Third"  # type: ignore[index]
    # the revert of the revert wrote back what three wrote: reverting three is no conflict
    again = revert(tmp_path, sandbox, three, "r4.csv")
    assert again.code == 0 and sandbox.interview(1)["objective"] == "Second"  # type: ignore[index]

    forced = revert(tmp_path, sandbox, run_id_of(tmp_path, "one.l.csv"), "r5.csv", "--force")
    assert forced.code == 1  # one's values before were never known: not_restorable, forced or not
    assert statuses(tmp_path, "r5.csv") == {"1": "not_restorable"}
    assert revert(tmp_path, sandbox, two, "r6.csv").code == 0  # two's value is the last again
    assert sandbox.interview(1)["objective"] == "First"  # type: ignore[index]


def test_a_conflict_names_the_later_run_that_wrote_under_another_key(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The later run gave the interview an email, so it wrote the contact's notes under the
    email's key: the conflict names that run, not the reverted one."""
    write_csv(tmp_path / "notes.csv", ["interview_id", "notes"], [[1, "base"]])
    write_csv(tmp_path / "one.csv", HEADER, [[1, "", "", "", "first"]])
    write_csv(tmp_path / "two.csv", HEADER, [[1, "k2@x.com", "", "", "second"]])
    merged = ("--existing-notes", "notes.csv")
    assert sync(tmp_path, sandbox, "one.csv", "one.l.csv", *merged).code == 0
    assert sync(tmp_path, sandbox, "two.csv", "two.l.csv", "--merge").code == 0
    one, two = run_id_of(tmp_path, "one.l.csv"), run_id_of(tmp_path, "two.l.csv")
    assert revert(tmp_path, sandbox, one, "r.csv").code == 1
    [line] = read_ledger(tmp_path / "r.csv")
    assert line["status"] == "conflict"
    assert f"run {two} wrote it after run {one}" in line["error_message"]


def test_a_forced_revert_overrides_a_later_run(tmp_path: Path, sandbox: SandboxServer) -> None:
    for name, objective in (("one", "First"), ("two", "Second"), ("three", "Third")):
        write_csv(tmp_path / f"{name}.csv", HEADER, [[1, "", "", objective, ""]])
        assert sync(tmp_path, sandbox, f"{name}.csv", f"{name}.l.csv").code == 0
    two = run_id_of(tmp_path, "two.l.csv")
    assert revert(tmp_path, sandbox, two, "r1.csv").code == 1
    forced = revert(tmp_path, sandbox, two, "r2.csv", "--force")
    assert forced.code == 0 and statuses(tmp_path, "r2.csv") == {"1": "ok"}
    assert sandbox.interview(1)["objective"] == "First"  # type: ignore[index]


def test_dry_run_writes_the_plan_and_sends_nothing(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "one.csv", HEADER, [[1, "", "Ana", "First", ""], [2, "", "Bo", "", ""]])
    write_csv(tmp_path / "two.csv", HEADER, [[1, "", "Ana", "Second", ""], [2, "", "Bob", "", ""]])
    assert sync(tmp_path, sandbox, "one.csv", "one.l.csv").code == 0
    assert sync(tmp_path, sandbox, "two.csv", "two.l.csv").code == 0
    sent = len(sandbox.requests())
    dry = revert(tmp_path, sandbox, run_id_of(tmp_path, "two.l.csv"), "dry.csv", "--dry-run")
    assert dry.code == 0, dry.stderr
    assert statuses(tmp_path, "dry.csv") == {"1": "dry_run", "2": "dry_run"}
    assert len(sandbox.requests()) == sent
    assert sandbox.interview(1)["objective"] == "Second"  # type: ignore[index]
    real = revert(tmp_path, sandbox, run_id_of(tmp_path, "two.l.csv"), "real.csv")
    assert real.code == 0 and sandbox.interview(2)["contact_name"] == "Bo"  # type: ignore[index]


def test_a_killed_revert_rerun_reaches_the_same_end(tmp_path: Path, sandbox: SandboxServer) -> None:
    count = 60
    write_csv(
        tmp_path / "a.csv",
        HEADER,
        [[i, "", f"N{i}", f"O{i}", f"ctx {i}"] for i in range(1, count + 1)],
    )
    write_csv(
        tmp_path / "b.csv", HEADER, [[i, "", f"BAD{i}", "BAD", "BAD"] for i in range(1, count + 1)]
    )
    assert sync(tmp_path, sandbox, "a.csv", "a.l.csv").code == 0
    expected = snapshot(sandbox, range(1, count + 1))
    assert sync(tmp_path, sandbox, "b.csv", "b.l.csv").code == 0
    run_b = run_id_of(tmp_path, "b.l.csv")

    before = len(sandbox.requests())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sync_worker",
            "revert",
            run_b,
            "--base-url",
            sandbox.base_url,
            "--state",
            "state.sqlite",
            "--ledger",
            "killed.csv",
            "--rate-limit",
            "20",
            "--rate-period",
            "1",
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while len(sandbox.requests()) < before + 10:
        assert time.monotonic() < deadline, "the revert did not get going"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=20)
    assert process.returncode == -signal.SIGKILL
    assert snapshot(sandbox, range(1, count + 1)) != expected  # stopped halfway

    again = revert(tmp_path, sandbox, run_b, "again.csv")
    assert again.code == 0, again.stderr
    assert snapshot(sandbox, range(1, count + 1)) == expected
    counted = Counter(statuses(tmp_path, "again.csv").values())
    assert counted["skipped_unchanged"] >= 5 and counted["ok"] >= 1  # done ones not re-sent
    assert set(counted) == {"ok", "skipped_unchanged"}
