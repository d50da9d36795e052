"""Which contact an interview belongs to (SPEC sections 6, 8 and 12): known, not guessed.

The command line in-process (CliRunner) against the sandbox, as a demanding user tries it: a trial
on the sandbox beside the real API, exports that lose or change emails, one interview under two
emails, interviews the server links to one contact, reverts and history across all of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import API_KEY, SandboxServer, assert_no_key, read_ledger, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.cli.main import main
from sync_worker.merger import MergeRules
from sync_worker.plan import Memory, PlanOptions, build_plan
from sync_worker.read.reader import ReadOptions, read_batch
from sync_worker.settings.config import default_state
from sync_worker.store.remembered import Links, Remembered
from sync_worker.store.state import State, Success

HEADER = ["interview_id", "contact_email", "contact_name", "objective", "contact_context"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test in its own folder: default states and ledgers land there."""
    monkeypatch.chdir(tmp_path)
    yield


def cli(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env={"HINDSIGHT_API_KEY": API_KEY})
    assert_no_key(result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def sync(server: SandboxServer, source: str, ledger: str, *args: str) -> Result:
    """`run` at the sandbox's pace, with the sandbox's own default state unless one is given."""
    return cli(
        "run",
        source,
        "--base-url",
        server.base_url,
        "--ledger",
        ledger,
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        "--log-format",
        "json",
        *args,
    )


def revert(server: SandboxServer, run_id: str, ledger: str, *args: str) -> Result:
    return cli(
        "revert",
        run_id,
        "--base-url",
        server.base_url,
        "--ledger",
        ledger,
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        "--log-format",
        "json",
        *args,
    )


def run_id_of(ledger: str) -> str:
    return str(json.loads(Path(f"{ledger}.summary.json").read_text())["run_id"])


def lines(ledger: str) -> list[dict[str, str]]:
    return read_ledger(Path(ledger))


def notes(server: SandboxServer, interview_id: int) -> Any:
    held = server.interview(interview_id)
    assert held is not None
    return held["contact_context"]


def held(server: SandboxServer, interview_id: int, field: str) -> Any:
    found = server.interview(interview_id)
    assert found is not None
    return found[field]


def patches(server: SandboxServer) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r.get("method") != "GET"]


def gets(server: SandboxServer) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r.get("method") == "GET"]


def link(server: SandboxServer, links: dict[str, int]) -> None:
    """Interviews not yet seen share a contact on the sandbox."""
    request = urllib.request.Request(
        server.root + "/_sandbox/contacts", data=json.dumps(links).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def events(result: Result, name: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == name]


def one_line_error(result: Result) -> str:
    """The one line an expected error is, whether the logs are JSON or console lines."""
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1, text
    return json.loads(text)["message"] if text.startswith("{") else text


# 1. A state belongs to one API -----------------------------------------------------------------


def test_a_trial_on_the_sandbox_keeps_its_own_state(sandbox: SandboxServer) -> None:
    write_csv(Path("in.csv"), HEADER, [[1, "a@x.com", "Ana", "Intro", "first"]])
    trial = sync(sandbox, "in.csv", "trial.csv")
    assert trial.exit_code == 0, trial.output
    own = Path(default_state(sandbox.base_url))
    port = sandbox.root.rsplit(":", 1)[1]
    assert own == Path(f"state/sync-state-127.0.0.1-{port}.sqlite") and own.is_file()
    assert not Path("state/sync-state.sqlite").exists()  # the real API's state is untouched
    planned = cli("plan", "in.csv", "--base-url", sandbox.base_url)
    assert planned.exit_code == 0 and planned.stdout == ""  # plan reads the sandbox's state too
    assert cli("plan", "in.csv").stdout.count("interview_id") == 1  # the API's: all to send


def test_another_apis_state_is_refused_naming_both_urls(sandbox: SandboxServer) -> None:
    write_csv(Path("in.csv"), HEADER, [[1, "a@x.com", "Ana", "Intro", "first"]])
    assert sync(sandbox, "in.csv", "one.csv", "--state", "s.sqlite").exit_code == 0
    other = sandbox.root + "/"  # the sandbox answers here too: another base URL all the same
    for command in (
        ["run", "in.csv", "--base-url", other, "--state", "s.sqlite", "--log-format", "json"],
        ["plan", "in.csv", "--base-url", other, "--state", "s.sqlite", "--log-format", "json"],
        ["revert", run_id_of("one.csv"), "--base-url", other, "--state", "s.sqlite"],
    ):
        result = cli(*command)
        assert result.exit_code == 2, result.output
        message = one_line_error(result)
        assert sandbox.base_url in message and sandbox.root in message and "--state" in message
    assert len(patches(sandbox)) == 1  # nothing sent by the refused ones


# 2, 3. A known interview keeps its contact; revert judges on the contact --------------------------


@pytest.mark.parametrize("email", ["", "a.new@y.com"], ids=["no-email", "another-email"])
def test_a_later_export_without_or_with_another_email_keeps_known_notes(
    sandbox: SandboxServer, email: str
) -> None:
    write_csv(Path("notes.csv"), ["contact_email", "notes"], [["a@x.com", '{"base": "kept"}']])
    write_csv(
        Path("one.csv"), ["interview_id", "contact_email", "context.k1"], [[100, "a@x.com", "1"]]
    )
    write_csv(Path("two.csv"), ["interview_id", "contact_email", "context.k2"], [[100, email, "2"]])
    assert sync(sandbox, "one.csv", "one.l.csv", "--existing-notes", "notes.csv").exit_code == 0
    assert notes(sandbox, 100) == {"base": "kept", "k1": "1"}
    second = sync(sandbox, "two.csv", "two.l.csv", "--merge")
    assert second.exit_code == 0, second.output
    assert notes(sandbox, 100) == {"base": "kept", "k1": "1", "k2": "2"}
    assert [line["merge"] for line in lines("two.l.csv")] == ["merged"]
    warned = events(second, "emails_changed")
    assert len(warned) == (1 if email else 0)
    summary = json.loads(Path("two.l.csv.summary.json").read_text())
    assert summary["emails_changed"] == (1 if email else 0)
    again = sync(sandbox, "two.csv", "again.l.csv", "--merge")  # an unchanged re-run
    assert [line["status"] for line in lines("again.l.csv")] == ["skipped_unchanged"]
    assert len(patches(sandbox)) == 2 and again.exit_code == 0

    # 3: reverting the first run would destroy the second's k2: a conflict, left alone
    undone = revert(sandbox, run_id_of("one.l.csv"), "revert.l.csv")
    assert undone.exit_code == 1, undone.output
    assert [line["status"] for line in lines("revert.l.csv")] == ["conflict"]
    assert notes(sandbox, 100) == {"base": "kept", "k1": "1", "k2": "2"}
    report = cli("report", "revert.l.csv")
    assert "--force" in report.stdout and "nothing to do" not in report.stdout  # 11


# 4. One interview under two emails --------------------------------------------------------------


def test_rows_of_one_interview_with_two_emails_are_invalid(sandbox: SandboxServer) -> None:
    rows = [[7001, "p@x.com", "", "", "about P"], [7001, "Q@x.com", "", "", "about Q"]]
    write_csv(Path("in.csv"), HEADER, [*rows, [7002, "q@x.com", "", "", "Q again"]])
    checked = cli("validate", "in.csv", "--merge")
    assert checked.exit_code == 1
    flagged = [line for line in checked.stdout.splitlines() if "[conflicting_contact]" in line]
    assert len(flagged) == 2 and all("p@x.com" in f and "q@x.com" in f for f in flagged)
    assert "1 requests to send, 2 invalid rows" in checked.stdout
    result = sync(sandbox, "in.csv", "l.csv", "--merge")
    assert result.exit_code == 1
    assert [
        (line["interview_id"], line["status"], line["error_code"]) for line in lines("l.csv")
    ] == [
        ("7001", "invalid", "conflicting_contact"),
        ("7001", "invalid", "conflicting_contact"),
        ("7002", "ok", ""),
    ]
    assert sandbox.interview(7001) is None and notes(sandbox, 7002) == "Q again"


# 5, 6. Revert goes through every interview the run sent to; history from any of them -----------


def test_revert_puts_a_shared_contact_back_through_each_interview(sandbox: SandboxServer) -> None:
    """The export says 501 and 502 are one contact; the sandbox keeps them apart. Sent with
    each interview (`--no-coalesce`), the name reaches both, and the revert goes back through
    both."""
    write_csv(
        Path("one.csv"),
        HEADER,
        [[501, "j@x.com", "Jane", "", ""], [502, "j@x.com", "Jane", "", ""]],
    )
    write_csv(
        Path("two.csv"),
        HEADER,
        [[501, "j@x.com", "WRONG", "", ""], [502, "j@x.com", "WRONG", "", ""]],
    )
    assert sync(sandbox, "one.csv", "one.l.csv", "--no-coalesce").exit_code == 0
    assert sync(sandbox, "two.csv", "two.l.csv", "--no-coalesce").exit_code == 0
    assert [held(sandbox, i, "contact_name") for i in (501, 502)] == ["WRONG", "WRONG"]
    undone = revert(sandbox, run_id_of("two.l.csv"), "revert.l.csv")
    assert undone.exit_code == 0, undone.output
    assert [(line["interview_id"], line["status"]) for line in lines("revert.l.csv")] == [
        ("501", "ok"),
        ("502", "ok"),
    ]
    assert [held(sandbox, i, "contact_name") for i in (501, 502)] == ["Jane", "Jane"]

    # 6: any interview of the contact shows its history
    state = default_state(sandbox.base_url)
    for interview in ("501", "502"):
        shown = cli("history", "--interview", interview, "--state", state, "--json")
        assert shown.exit_code == 0, shown.output
        assert [v["sent"] for v in json.loads(shown.stdout)] == ["Jane", "WRONG", "Jane"]


# 7. A notes row dated in the future ------------------------------------------------------------


def test_a_notes_row_dated_in_the_future_never_beats_later_sends(sandbox: SandboxServer) -> None:
    ahead = (datetime.now(UTC) + timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S")  # no zone
    write_csv(
        Path("notes.csv"), ["interview_id", "notes", "updated_at"], [[9, "Met at a fair", ahead]]
    )
    hour_ago = time.time() - 3600
    os.utime("notes.csv", (hour_ago, hour_ago))  # the export was written before the runs
    write_csv(Path("one.csv"), HEADER, [[9, "", "", "", "Called on Monday"]])
    write_csv(Path("two.csv"), HEADER, [[9, "", "", "", "Asked for a discount"]])
    assert sync(sandbox, "one.csv", "one.l.csv", "--existing-notes", "notes.csv").exit_code == 0
    after_one = notes(sandbox, 9)
    assert after_one == "Met at a fair\n\nCalled on Monday"
    assert sync(sandbox, "two.csv", "two.l.csv", "--existing-notes", "notes.csv").exit_code == 0
    assert notes(sandbox, 9) == "Met at a fair\n\nCalled on Monday\n\nAsked for a discount"
    # reverting the second run restores what the worker had written, not the file's text
    assert revert(sandbox, run_id_of("two.l.csv"), "revert.l.csv").exit_code == 0
    assert notes(sandbox, 9) == after_one


# 8. Revert of a pruned run, of a dry run -------------------------------------------------------


def test_revert_of_a_pruned_run_or_a_dry_run_is_refused_with_the_reason(
    sandbox: SandboxServer,
) -> None:
    write_csv(Path("in.csv"), HEADER, [[1, "a@x.com", "Ana", "Intro", "first"]])
    assert sync(sandbox, "in.csv", "one.l.csv").exit_code == 0
    dry = sync(sandbox, "in.csv", "dry.l.csv", "--dry-run", "--force")
    assert dry.exit_code == 0
    refused = revert(sandbox, run_id_of("dry.l.csv"), "r.csv")
    assert refused.exit_code == 2 and "was a dry run" in one_line_error(refused)
    state = State.open(Path(default_state(sandbox.base_url)))  # a nightly with history_days 1,
    state.prune_history(1, now=datetime.now(UTC) + timedelta(days=3))  # three days on
    state.close()
    refused = revert(sandbox, run_id_of("one.l.csv"), "r.csv")
    assert refused.exit_code == 2 and "pruned" in one_line_error(refused)
    assert not Path("r.csv").exists()


# 9. Bounds: one line, never a traceback ---------------------------------------------------------


def test_an_absurd_interview_id_is_one_line() -> None:
    result = cli("history", "--interview", "99999999999999999999")
    assert result.exit_code == 2 and "--interview" in result.output


@pytest.mark.parametrize("days", [0, 3651, 740000], ids=["zero", "just-over", "absurd"])
def test_history_days_out_of_bounds_is_one_line(days: int) -> None:
    Path("sync.toml").write_text(f"[state]\nhistory_days = {days}\n")
    write_csv(Path("in.csv"), HEADER, [[1, "a@x.com", "Ana", "Intro", "first"]])
    result = cli("validate", "in.csv", "--config", "sync.toml")
    assert result.exit_code == 2
    assert "[state] history_days must be a whole number of days from 1 to 3650" in result.output


# 10. History ties in write order ----------------------------------------------------------------


def test_history_is_newest_first_where_times_tie() -> None:
    from sync_worker.store.history import Change

    state = State.open(Path("s.sqlite"))
    at = "2026-12-01T10:00:00.000Z"  # both sends confirmed in one millisecond
    for run_id, before, sent in (("r1", None, '"one"'), ("r2", '"one"', '"two"')):
        state.run_started(run_id, at)
        change = Change("interview", "5", 5, "objective", before, sent, "earlier_send", 1, False)
        state.plan_history(run_id, {5: (change,)})
        state.add([Success(5, "", "interview:5", None, run_id, at)])
        state.close()
        state = State.open(Path("s.sqlite"))
    state.close()
    shown = cli("history", "--interview", "5", "--state", "s.sqlite", "--json")
    assert [v["run_id"] for v in json.loads(shown.stdout)] == ["r2", "r1"]


# 11. Messages ----------------------------------------------------------------------------------


def test_no_merge_with_a_notes_file_is_a_usage_error() -> None:
    write_csv(Path("in.csv"), HEADER, [[1, "a@x.com", "Ana", "Intro", "first"]])
    write_csv(Path("notes.csv"), ["interview_id", "notes"], [[1, "old"]])
    result = cli("plan", "in.csv", "--no-merge", "--existing-notes", "notes.csv")
    assert result.exit_code == 2
    assert "--no-merge" in result.output and "--existing-notes" in result.output


# [merge] resolve_contacts: the API names the contact -------------------------------------------

RESOLVE = "[merge]\nresolve_contacts = true\n"


def test_resolved_contacts_are_grouped_by_the_apis_contact(sandbox: SandboxServer) -> None:
    """The export gives 501 and 502 two emails; the API links them to one contact."""
    link(sandbox, {"502": 501})
    Path("sync.toml").write_text(RESOLVE)
    rows = [[501, "jane@x.com", "", "", '{"a": "1"}'], [502, "jane@work.com", "", "", '{"b": "2"}']]
    write_csv(Path("in.csv"), HEADER, rows)
    first = sync(sandbox, "in.csv", "one.l.csv", "--merge", "--config", "sync.toml")
    assert first.exit_code == 0, first.output
    assert sorted(int(r["id"]) for r in gets(sandbox)) == [501, 502]  # once each
    assert notes(sandbox, 501) == notes(sandbox, 502) == {"a": "1", "b": "2"}
    assert [line["sent_with"] for line in lines("one.l.csv")] == ["", "501"]  # the notes once
    again = sync(sandbox, "in.csv", "two.l.csv", "--merge", "--config", "sync.toml")
    assert again.exit_code == 0
    assert len(gets(sandbox)) == 2 and len(patches(sandbox)) == 1  # remembered; nothing sent
    assert {line["status"] for line in lines("two.l.csv")} == {"skipped_unchanged"}
    # a new interview of the same contact is resolved once, and merges onto what it holds
    link(sandbox, {"503": 501})
    write_csv(Path("new.csv"), HEADER, [[503, "", "", "", '{"c": "3"}']])
    third = sync(sandbox, "new.csv", "three.l.csv", "--merge", "--config", "sync.toml")
    assert third.exit_code == 0 and len(gets(sandbox)) == 3
    assert notes(sandbox, 501) == {"a": "1", "b": "2", "c": "3"}
    assert [line["merge"] for line in lines("three.l.csv")] == ["merged"]
    # a revert of it names no contact:<id> as an email
    undone = revert(sandbox, run_id_of("three.l.csv"), "revert.l.csv", "--config", "sync.toml")
    assert undone.exit_code == 0, undone.output
    assert [(x["interview_id"], x["contact_email"]) for x in lines("revert.l.csv")] == [("503", "")]
    assert notes(sandbox, 501) == {"a": "1", "b": "2"}


def test_resolving_an_interview_never_sent_keeps_what_its_email_was_sent(
    sandbox: SandboxServer,
) -> None:
    """912 was sent as m5@x.com before contacts were resolved; 911, never sent, comes with the
    same email once they are: the API names its own contact (912 is not asked: not in the
    export), and the contact starts from what the state knows under the email, not from
    nothing."""
    link(sandbox, {"912": 911})
    write_csv(Path("one.csv"), HEADER, [[912, "m5@x.com", "", "", '{"k": "a", "p": "1"}']])
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    Path("sync.toml").write_text(RESOLVE)
    write_csv(Path("two.csv"), HEADER, [[911, "m5@x.com", "", "", '{"r": "3"}']])
    second = sync(sandbox, "two.csv", "two.l.csv", "--merge", "--config", "sync.toml")
    assert second.exit_code == 0, second.output
    assert notes(sandbox, 911) == {"k": "a", "p": "1", "r": "3"}
    assert [line["merge"] for line in lines("two.l.csv")] == ["merged"]


def test_plan_says_when_it_cannot_group_as_run_would(sandbox: SandboxServer) -> None:
    """`plan` asks the API nothing: before the interviews are resolved it says its grouping is
    the emails'; once a run resolved them, it plans what that run would send, and says nothing."""
    link(sandbox, {"502": 501})
    Path("sync.toml").write_text(RESOLVE)
    rows = [[501, "jane@x.com", "", "", '{"a": "1"}'], [502, "jane@work.com", "", "", '{"b": "2"}']]
    write_csv(Path("in.csv"), HEADER, rows)
    args = ("--merge", "--config", "sync.toml", "--base-url", sandbox.base_url)
    before = cli("plan", "in.csv", *args, "--log-format", "json")
    assert before.exit_code == 0, before.output
    warned = [json.loads(x) for x in before.stderr.splitlines() if "contacts_not_resolved" in x]
    assert warned and warned[0]["interviews"] == 2 and "`run` first asks" in warned[0]["message"]
    assert sync(sandbox, "in.csv", "one.l.csv", "--merge", "--config", "sync.toml").exit_code == 0
    write_csv(Path("in.csv"), HEADER, [*rows, [501, "jane@x.com", "", "", '{"c": "3"}']])
    after = cli("plan", "in.csv", *args, "--log-format", "json")
    assert after.exit_code == 0 and "contacts_not_resolved" not in after.stderr
    bodies = [json.loads(x)["body"]["contact_context"] for x in after.stdout.splitlines()]
    assert bodies and all(body == {"a": "1", "b": "2", "c": "3"} for body in bodies)


def test_resolving_keeps_the_runs_window(sandbox_factory: Any) -> None:
    """GETs and PATCHes together never exceed the limit in a window."""
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "1")
    Path("sync.toml").write_text(RESOLVE)
    write_csv(Path("in.csv"), HEADER, [[i, "", "", "", f"c{i}"] for i in range(1, 7)])
    result = cli(
        "run", "in.csv", "--base-url", server.base_url, "--rate-limit", "5", "--rate-period",
        "1", "--merge", "--config", "sync.toml", "--log-format", "json", "--ledger", "l.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    log = server.requests()
    assert len(log) == 12 and not [r for r in log if r["status"] == 429]


def test_a_refused_key_costs_one_get_and_ends_as_a_refused_run(sandbox: SandboxServer) -> None:
    Path("sync.toml").write_text(RESOLVE)
    write_csv(Path("in.csv"), HEADER, [[i, "", "", "", f"c{i}"] for i in range(1, 6)])
    wrong = "sk-wrong-0123456789abcdef"
    result = CliRunner().invoke(
        main,
        [
            *("run", "in.csv", "--base-url", sandbox.base_url, "--config", "sync.toml"),
            *("--merge", "--ledger", "l.csv", "--log-format", "json"),
        ],
        env={"HINDSIGHT_API_KEY": wrong},
    )
    assert result.exit_code == 3, result.output
    assert wrong not in result.output and "Traceback" not in result.output
    assert len(gets(sandbox)) == 1 and len(patches(sandbox)) == 1  # one of each, then stop
    assert len(lines("l.csv")) == 5  # every row its ledger line


def test_revert_after_resolving_judges_the_contact_the_api_named(sandbox: SandboxServer) -> None:
    """Run 1 trusts the export; run 2 resolves 601 and 602 into one contact (the export gave
    them two emails) and merges onto what 601 held; reverting run 1 must not undo run 2
    through the other key."""
    link(sandbox, {"602": 601})
    write_csv(Path("zero.csv"), HEADER, [[601, "a@x.com", "", "", "zero"]])
    write_csv(Path("one.csv"), HEADER, [[601, "a@x.com", "", "", "one"]])
    rows = [[601, "a@x.com", "", "Call", ""], [602, "b@x.com", "", "", "two"]]
    write_csv(Path("two.csv"), HEADER, rows)
    Path("sync.toml").write_text(RESOLVE)
    assert sync(sandbox, "zero.csv", "zero.l.csv", "--merge").exit_code == 0
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    assert sync(sandbox, "two.csv", "two.l.csv", "--merge", "--config", "sync.toml").exit_code == 0
    assert notes(sandbox, 601) == "zero\n\none\n\ntwo"  # merged onto what 601's contact held
    undone = revert(sandbox, run_id_of("one.l.csv"), "revert.l.csv")
    assert undone.exit_code == 1
    assert [line["status"] for line in lines("revert.l.csv")] == ["conflict"]
    assert notes(sandbox, 601) == "zero\n\none\n\ntwo"
    history = cli("history", "--email", "a@x.com", "--state", default_state(sandbox.base_url))
    assert "contact contact:601" in history.stdout  # the contact under the API's name too


# Edges: two CRMs on one state, contacts that split or merge between nights -----------------------


def test_exports_from_two_crms_on_one_state(sandbox: SandboxServer) -> None:
    """Salesforce knows 100 as a@x; HubSpot exports it with its own email the next night."""
    write_csv(
        Path("sf.csv"),
        ["interview_id", "contact_email", "context.owner"],
        [[100, "a@x.com", "Sam"]],
    )
    write_csv(
        Path("hs.csv"),
        ["interview_id", "contact_email", "context.stage"],
        [[100, "ana@hs.io", "Won"]],
    )
    assert sync(sandbox, "sf.csv", "sf.l.csv", "--merge").exit_code == 0
    second = sync(sandbox, "hs.csv", "hs.l.csv", "--merge")
    assert second.exit_code == 0
    assert notes(sandbox, 100) == {"owner": "Sam", "stage": "Won"}
    assert events(second, "emails_changed")[0]["interviews"] == 1
    # both exports again, as the nightly gives them: nothing new to send
    assert sync(sandbox, "sf.csv", "sf2.l.csv", "--merge").exit_code == 0
    assert sync(sandbox, "hs.csv", "hs2.l.csv", "--merge").exit_code == 0
    assert len(patches(sandbox)) == 2


def test_an_interview_that_gains_an_email_brings_its_notes(sandbox: SandboxServer) -> None:
    """First exported without an email (its own contact), then with one it shares with another
    interview: the contact starts from what the state knew under the interview's old key."""
    write_csv(Path("one.csv"), ["interview_id", "contact_email", "context.k1"], [[300, "", "1"]])
    rows = [[300, "c@x.com", "2", ""], [301, "c@x.com", "", "Renewal"]]
    write_csv(Path("two.csv"), ["interview_id", "contact_email", "context.k2", "objective"], rows)
    link(sandbox, {"301": 300})
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    assert sync(sandbox, "two.csv", "two.l.csv", "--merge").exit_code == 0
    assert notes(sandbox, 300) == {"k1": "1", "k2": "2"}
    assert notes(sandbox, 301) == {"k1": "1", "k2": "2"}  # one contact, both interviews
    assert [line["merge"] for line in lines("two.l.csv")] == ["merged", "merged"]


@pytest.mark.parametrize("email_first", [True, False], ids=["email-sent-first", "id-sent-first"])
def test_an_interview_that_gains_a_known_email_keeps_what_both_were_sent(
    sandbox: SandboxServer, email_first: bool
) -> None:
    """An interview sent without an email, then given one the state knows from another
    interview: the contact starts from both contexts, in the order they were sent, so neither
    is lost (where the email's was kept alone, the interview's own notes were wiped)."""
    email = [[912, "e@x.com", "", "", "n912"]]
    alone = [[911, "", "", "", "n911"]]
    order = (email, alone) if email_first else (alone, email)
    for name, rows in zip(("one", "two"), order, strict=True):
        write_csv(Path(f"{name}.csv"), HEADER, rows)
        assert sync(sandbox, f"{name}.csv", f"{name}.l.csv", "--merge").exit_code == 0
    write_csv(Path("three.csv"), HEADER, [[911, "e@x.com", "", "", "n911b"]])
    assert sync(sandbox, "three.csv", "three.l.csv", "--merge").exit_code == 0
    found = sandbox.interview(911)
    assert found is not None
    first, second = ("n912", "n911") if email_first else ("n911", "n912")
    assert found["contact_context"] == f"{first}\n\n{second}\n\nn911b"


@pytest.mark.parametrize("by_id_first", [True, False], ids=["id-then-email", "email-then-id"])
def test_a_stale_notes_file_keyed_another_way_is_still_stale(
    sandbox: SandboxServer, by_id_first: bool
) -> None:
    """The same stale notes, keyed by the interview's id one night and by its email the next
    (or the other way round): still as old as their first sighting, so the state's newer
    notes are kept, not overwritten by the stale export copied afresh."""
    by_id = (["interview_id", "notes"], [[1901, "stale export"]])
    by_email = (["contact_email", "notes"], [["o@x.com", "stale export"]])
    first, second = (by_id, by_email) if by_id_first else (by_email, by_id)
    for night, (header, rows), context in ((1, first, "night one"), (2, second, "night two")):
        write_csv(Path(f"notes{night}.csv"), header, rows)
        later = time.time() + 60  # read as the moment it is read: newer than night one's send
        os.utime(f"notes{night}.csv", (later, later))
        write_csv(Path(f"in{night}.csv"), HEADER, [[1901, "o@x.com", "", "", context]])
        done = sync(
            sandbox, f"in{night}.csv", f"l{night}.csv", "--existing-notes", f"notes{night}.csv"
        )
        assert done.exit_code == 0
    assert notes(sandbox, 1901) == "stale export\n\nnight one\n\nnight two"


def test_interviews_joining_known_and_unknown_emails_in_one_night(
    sandbox: SandboxServer,
) -> None:
    """One night, 911 (sent without an email) joins e@x.com, whose notes the state knows too,
    and 921 (also sent without one) joins f@x.com, which the state knows nothing of: each
    contact starts from its own notes, merged for the first, as they are for the second."""
    write_csv(Path("one.csv"), HEADER, [[912, "e@x.com", "", "", "n912"]])
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    rows = [[911, "", "", "", "n911"], [921, "", "", "", "n921"]]
    write_csv(Path("two.csv"), HEADER, rows)
    assert sync(sandbox, "two.csv", "two.l.csv", "--merge").exit_code == 0
    rows = [[911, "e@x.com", "", "", "b911"], [921, "f@x.com", "", "", "b921"]]
    write_csv(Path("three.csv"), HEADER, rows)
    assert sync(sandbox, "three.csv", "three.l.csv", "--merge").exit_code == 0
    assert notes(sandbox, 911) == "n912\n\nn911\n\nb911"
    assert notes(sandbox, 921) == "n921\n\nb921"


@pytest.mark.parametrize(
    ("first_email", "first_notes"),
    [
        ("", (["interview_id", "notes"], [[1301, "stale"]])),
        ("s@x.com", (["interview_id", "contact_email", "notes"], [[1301, "zz@x.com", "stale"]])),
    ],
    ids=["sent-without-an-email-then-keyed-by-email", "keyed-by-both-then-by-id-alone"],
)
def test_stale_notes_stay_stale_under_every_key_of_their_contact(
    sandbox: SandboxServer, first_email: str, first_notes: tuple[list[str], list[list[Any]]]
) -> None:
    """Night one: the interview is sent (without an email, or with one while the notes row
    names both its id and another email). Night two: the same stale notes, keyed by the email
    the interview now has, or by its id alone: still stale, so night one's context is kept."""
    header, rows = first_notes
    second = (
        (["contact_email", "notes"], [["s@x.com", "stale"]])
        if not first_email
        else (["interview_id", "notes"], [[1301, "stale"]])
    )
    for night, (names, notes_rows), email, context in (
        (1, (header, rows), first_email, "ctx1"),
        (2, second, "s@x.com", "ctx2"),
    ):
        write_csv(Path(f"notes{night}.csv"), names, notes_rows)
        later = time.time() + 60  # read as the moment it is read: newer than night one's send
        os.utime(f"notes{night}.csv", (later, later))
        write_csv(Path(f"in{night}.csv"), HEADER, [[1301, email, "", "", context]])
        notes_file = ("--existing-notes", f"notes{night}.csv")
        assert sync(sandbox, f"in{night}.csv", f"l{night}.csv", *notes_file).exit_code == 0
    assert notes(sandbox, 1301) == "stale\n\nctx1\n\nctx2"


@pytest.mark.parametrize("tonight", ["", "k@x.com"], ids=["no-email", "another-email"])
def test_a_fresh_edit_keyed_by_the_email_the_state_knows_wins(
    sandbox: SandboxServer, tonight: str
) -> None:
    """7001 was sent as h@x.com; tonight's export gives it no email (or another one), and a
    fresh notes file gives the person's edit under h@x.com: the contact is still h@x.com's,
    and the edit is its notes."""
    write_csv(Path("one.csv"), HEADER, [[7001, "h@x.com", "", "", "h1"]])
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    write_csv(Path("notes.csv"), ["contact_email", "notes"], [["h@x.com", "EDIT"]])
    later = time.time() + 60
    os.utime("notes.csv", (later, later))
    write_csv(Path("two.csv"), HEADER, [[7001, tonight, "", "", "h4"]])
    assert sync(sandbox, "two.csv", "two.l.csv", "--existing-notes", "notes.csv").exit_code == 0
    assert notes(sandbox, 7001) == "EDIT\n\nh4"


def test_a_notes_row_by_the_id_of_an_interview_not_in_the_export_counts_for_its_contact(
    sandbox: SandboxServer,
) -> None:
    """The state sent 1001 as n@x.com; tonight's export has only 1002 of that contact, and a
    fresh notes file gives the person's edit by 1001's id: the edit is the contact's notes."""
    write_csv(Path("one.csv"), HEADER, [[1001, "n@x.com", "", "", "ctx1"]])
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    write_csv(Path("notes.csv"), ["interview_id", "notes"], [[1001, "person edit"]])
    later = time.time() + 60
    os.utime("notes.csv", (later, later))
    write_csv(Path("two.csv"), HEADER, [[1002, "n@x.com", "", "", "ctx2"]])
    assert sync(sandbox, "two.csv", "two.l.csv", "--existing-notes", "notes.csv").exit_code == 0
    assert notes(sandbox, 1002) == "person edit\n\nctx2"


def test_a_contact_the_export_splits_stays_one_contact(sandbox: SandboxServer) -> None:
    """Night 1 gives 501 and 502 one email; night 2 gives 502 another: 502 still merges onto
    the contact it was sent as, and the next nights send nothing new."""
    rows = [[501, "j@x.com", "", "", '{"a": "1"}'], [502, "j@x.com", "", "Intro", ""]]
    write_csv(Path("one.csv"), HEADER, rows)
    write_csv(Path("two.csv"), HEADER, [[502, "k@y.com", "", "", '{"b": "2"}']])
    assert sync(sandbox, "one.csv", "one.l.csv", "--merge").exit_code == 0
    second = sync(sandbox, "two.csv", "two.l.csv", "--merge")
    assert second.exit_code == 0
    assert notes(sandbox, 502) == {"a": "1", "b": "2"}
    assert [line["merge"] for line in lines("two.l.csv")] == ["merged"]
    assert sync(sandbox, "two.csv", "three.l.csv", "--merge").exit_code == 0
    assert [line["status"] for line in lines("three.l.csv")] == ["skipped_unchanged"]


# The roads agree with the state's contacts and the API's ----------------------------------------

EMAILS = ["", "a@x.com", "b@x.com", "A@x.com"]
KNOWN = st.dictionaries(
    st.integers(1, 6), st.sampled_from(["a@x.com", "c@x.com", "interview:3", "contact:9"])
)
RESOLVED = st.dictionaries(st.integers(1, 6), st.sampled_from(["contact:9", "contact:8"]))
STATE = st.dictionaries(
    st.sampled_from(["a@x.com", "b@x.com", "c@x.com", "interview:3", "contact:9", "contact:8"]),
    st.sampled_from(["old", {"k": "v"}, {"title": "CEO"}]),
)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(1, 6),
            st.sampled_from(EMAILS),
            st.sampled_from(["", "", "x", '{"k": "w"}']),
            st.sampled_from(["", "CTO"]),
        ),
        min_size=1,
        max_size=10,
    ),
    known=KNOWN,
    resolved=RESOLVED,
    state=STATE,
    chunk_rows=st.integers(1, 4),
    merge=st.booleans(),
)
def test_both_roads_key_contacts_alike_with_what_the_state_knows(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, str, str, str]],
    known: dict[int, str],
    resolved: dict[int, str],
    state: dict[str, Any],
    chunk_rows: int,
    merge: bool,
) -> None:
    path = tmp_path_factory.mktemp("roads") / "in.csv"
    write_csv(path, ["interview_id", "contact_email", "contact_context", "context.title"], rows)
    batch = read_batch([str(path)], ReadOptions())
    times = {contact: f"2026-01-0{1 + len(contact) % 5}T00:00:00.000Z" for contact in state}
    memory = Memory(
        state=Remembered.of(state, times),
        links=Links.of(known),
        resolved=Links.of(resolved),
    )
    options = PlanOptions(merge=merge, rules=MergeRules.build(" | ", ()), chunk_rows=chunk_rows)
    fast = build_plan(batch, options, memory)
    reference = build_plan(batch, dataclasses.replace(options, vectorise=False), memory)
    assert fast.table.body_json.to_pylist() == reference.table.body_json.to_pylist()
    assert fast.table.contact.to_pylist() == reference.table.contact.to_pylist()
    assert fast.table.merge.to_pylist() == reference.table.merge.to_pylist()
    assert fast.email_changes == reference.email_changes
    assert dict(fast.settled.items()) == dict(reference.settled.items())
    for request_id, contact in zip(
        fast.table.interview_id.tolist(), fast.table.contact.to_pylist(), strict=True
    ):
        if request_id in resolved:
            assert contact == resolved[request_id]  # the API's word wins
        elif request_id in known and not known[request_id].startswith("interview:"):
            assert contact == known[request_id]  # then the state's
