"""Guards for unattended runs (SPEC section 14): first rejections, unknown notes, --max-changes;
what `plan` and `validate` say of them, and `--dry-run`. The CLI in-process against the sandbox.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import API_KEY, SandboxServer, assert_no_key, read_ledger, write_csv

from sync_worker.cli.main import main
from sync_worker.settings.checks import MaxChanges, max_changes

UNKNOWN = 900_000_000  # the sandbox answers 404 for ids from here up


def invoke(tmp_path: Path, *args: str, config: str = "") -> Result:
    (tmp_path / "sync.toml").write_text(config)
    result = CliRunner().invoke(
        main,
        [*args, "--config", str(tmp_path / "sync.toml"), "--log-format", "json"],
        env={"HINDSIGHT_API_KEY": API_KEY},
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.stderr
    assert_no_key(result.stdout, result.stderr)
    return result


def run(
    tmp_path: Path, server: SandboxServer, *args: str, ledger: str = "l.csv", config: str = ""
) -> Result:
    return invoke(
        tmp_path,
        "run",
        str(tmp_path / "in.csv"),
        "--base-url",
        server.base_url,
        "--state",
        str(tmp_path / "state.sqlite"),
        "--ledger",
        str(tmp_path / ledger),
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
        config=config,
    )


def events(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def error_line(result: Result) -> str:
    """The one error event of a run refused before sending."""
    [error] = [e for e in events(result) if e["event"] == "error"]
    return str(error["message"])


def statuses(path: Path) -> Counter[tuple[str, str]]:
    return Counter((x["status"], x["error_code"]) for x in read_ledger(path))


def rows(tmp_path: Path, ids: list[int]) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[i, f"N{i}"] for i in ids])


def contacts(tmp_path: Path, count: int, tag: str = "new") -> None:
    """`count` contacts, one interview each, with a context to merge."""
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[i, f"c{i}@x.com", f"{tag} {i}"] for i in range(1, count + 1)],
    )


# --- first rejections ---------------------------------------------------------------------


def test_the_first_answers_all_refused_alike_stop_the_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """A key of another organisation, or a wrong id column: 404 for every row. The run stops
    after the first 20 answers (and those in flight), not after all 300."""
    rows(tmp_path, [UNKNOWN + i for i in range(300)])
    result = run(tmp_path, sandbox, "--concurrency", "4")
    assert result.exit_code == 3
    [aborted] = [e for e in events(result) if e["event"] == "run_aborted"]
    reason = aborted["reason"]
    assert "the first 20 requests the API answered were all refused with HTTP 404 not_found" in (
        reason
    )
    assert "another organisation" in reason and "[columns] interview_id" in reason
    sent = len(sandbox.requests())
    assert 20 <= sent <= 20 + 4  # and those in flight
    counts = statuses(tmp_path / "l.csv")
    assert counts[("failed", "not_found")] == sent
    assert counts[("not_attempted", "")] == 300 - sent


def test_one_answer_that_differs_turns_the_guard_off(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Rejections later in a run, or among accepted rows, only fail their rows."""
    rows(tmp_path, [1] + [UNKNOWN + i for i in range(40)])
    result = run(tmp_path, sandbox, "--concurrency", "1")
    assert result.exit_code == 1
    assert statuses(tmp_path / "l.csv") == {("ok", ""): 1, ("failed", "not_found"): 40}


@pytest.mark.parametrize(
    ("config", "stops"),
    [("[guard]\nfirst_rejections = 0\n", False), ("[guard]\nfirst_rejections = 5\n", True)],
    ids=["off", "five"],
)
def test_first_rejections_is_configurable(
    tmp_path: Path, sandbox: SandboxServer, config: str, stops: bool
) -> None:
    rows(tmp_path, [UNKNOWN + i for i in range(30)])
    result = run(tmp_path, sandbox, "--concurrency", "1", config=config)
    assert result.exit_code == (3 if stops else 1)
    assert len(sandbox.requests()) == (5 if stops else 30)


# --- unknown notes ------------------------------------------------------------------------


def test_a_merged_run_over_unknown_notes_is_refused_before_sending(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    contacts(tmp_path, 101)
    result = run(tmp_path, sandbox, "--merge")
    assert result.exit_code == 2
    line = error_line(result)
    assert "would overwrite the notes of 101 contacts" in line
    assert "--existing-notes" in line and "--allow-unknown-notes" in line
    assert sandbox.requests() == [] and not (tmp_path / "l.csv").exists()


def test_unknown_notes_allowed_then_known_on_the_next_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """--allow-unknown-notes lets the first backfill through; afterwards the state knows what
    it sent, and the next merged run passes without it."""
    contacts(tmp_path, 101)
    assert run(tmp_path, sandbox, "--merge", "--allow-unknown-notes").exit_code == 0
    contacts(tmp_path, 101, tag="newer")
    assert run(tmp_path, sandbox, "--merge", ledger="l2.csv").exit_code == 0
    assert statuses(tmp_path / "l2.csv") == {("ok", ""): 101}
    assert sandbox.interview(5)["contact_context"] == "new 5\n\nnewer 5"  # type: ignore[index]


def test_the_unknown_notes_limit_is_a_setting(tmp_path: Path, sandbox: SandboxServer) -> None:
    contacts(tmp_path, 30)
    result = run(tmp_path, sandbox, "--merge", config="[guard]\nmax_unknown_notes = 29\n")
    assert result.exit_code == 2 and "more than [guard] max_unknown_notes 29" in error_line(result)
    assert run(tmp_path, sandbox, "--merge").exit_code == 0  # 30: within the default 100


def test_a_notes_export_makes_the_notes_known(tmp_path: Path, sandbox: SandboxServer) -> None:
    contacts(tmp_path, 120)
    write_csv(
        tmp_path / "notes.csv",
        ["contact_email", "notes"],
        [[f"c{i}@x.com", f"old {i}"] for i in range(1, 121)],
    )
    result = run(tmp_path, sandbox, "--existing-notes", str(tmp_path / "notes.csv"))
    assert result.exit_code == 0, result.stderr


# --- max changes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "words"),
    [
        ("5", "would send 10 requests, more than --max-changes 5 allows (5)"),
        ("40%", "more than --max-changes 40% allows (4, 40% of 10 input rows)"),
    ],
    ids=["count", "share"],
)
def test_max_changes_refuses_before_sending(
    tmp_path: Path, sandbox: SandboxServer, limit: str, words: str
) -> None:
    rows(tmp_path, list(range(1, 11)))
    result = run(tmp_path, sandbox, "--max-changes", limit)
    assert result.exit_code == 2
    assert words in error_line(result)
    assert sandbox.requests() == []


def test_max_changes_counts_requests_not_rows_left_unchanged(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    rows(tmp_path, list(range(1, 11)))
    assert run(tmp_path, sandbox, "--max-changes", "100%").exit_code == 0
    rows(tmp_path, [*range(1, 10), 99])  # one row changed since
    config = '[guard]\nmax_changes = "10%"\n'
    assert run(tmp_path, sandbox, ledger="l2.csv", config=config).exit_code == 0
    assert statuses(tmp_path / "l2.csv")[("ok", "")] == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", MaxChanges(count=12)),
        (0, MaxChanges(count=0)),
        ("2.5%", MaxChanges(percent=2.5)),
        (" 100% ", MaxChanges(percent=100.0)),
    ],
    ids=["text", "number", "share", "spaces"],
)
def test_max_changes_values(value: Any, expected: MaxChanges) -> None:
    assert max_changes(value) == expected


@pytest.mark.parametrize("value", ["", "-1", "ten", "150%", "nan%", "1.5", True, 2.5])
def test_bad_max_changes_values_are_refused_naming_the_option(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ValueError, match="number of requests"):
        max_changes(value)
    rows(tmp_path, [1])
    result = invoke(tmp_path, "plan", str(tmp_path / "in.csv"), "--max-changes", str(value))
    assert result.exit_code == 2 and "--max-changes" in result.stderr


def test_max_changes_in_the_config_is_checked(tmp_path: Path) -> None:
    rows(tmp_path, [1])
    result = invoke(
        tmp_path, "validate", str(tmp_path / "in.csv"), config="[guard]\nmax_changes = 'x'\n"
    )
    assert result.exit_code == 2 and "[guard] max_changes" in result.stderr


# --- what plan, validate and --dry-run say ------------------------------------------------


def test_plan_and_validate_say_what_each_guard_would(tmp_path: Path) -> None:
    contacts(tmp_path, 120)
    args = ["--merge", "--max-changes", "50"]
    for command in ("plan", "validate"):
        result = invoke(tmp_path, command, str(tmp_path / "in.csv"), *args)
        assert result.exit_code == 0, result.stderr
        guards = [e["message"] for e in events(result) if e["event"] == "guard"]
        assert [x.split(":")[0] for x in guards] == [
            "guard unknown_notes",
            "guard max_changes",
            "guard first_rejections",
        ], command
        assert "REFUSES" in guards[0] and "120 contacts" in guards[0]
        assert "REFUSES" in guards[1] and "120 requests" in guards[1]
        assert "passes" in guards[2] and "first 20 answers" in guards[2]
    passing = invoke(tmp_path, "plan", str(tmp_path / "in.csv"), "--allow-unknown-notes")
    said = [e for e in events(passing) if e["event"] == "guard"]
    assert [(e["message"].split(": ")[1], e["level"]) for e in said] == [("passes", "info")] * 3


def test_validate_returns_what_the_guards_say(tmp_path: Path) -> None:
    import sync_worker

    contacts(tmp_path, 120)
    checked = sync_worker.validate(tmp_path / "in.csv", merge=True, config=os.devnull)
    assert len(checked.guards) == 3 and "REFUSES" in checked.guards[0]
    assert "validate reads no state" in checked.guards[0]


def test_a_dry_run_reports_the_guards_and_goes_on(tmp_path: Path, sandbox: SandboxServer) -> None:
    contacts(tmp_path, 120)
    result = run(tmp_path, sandbox, "--merge", "--max-changes", "10", "--dry-run")
    assert result.exit_code == 0
    warned = [e for e in events(result) if e["event"] == "guard_would_refuse"]
    assert [e["guard"] for e in warned] == ["unknown_notes", "max_changes"]
    assert statuses(tmp_path / "l.csv") == {("dry_run", ""): 120}
    assert sandbox.requests() == []
