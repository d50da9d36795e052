"""The run's time limits: `--max-duration` counts from the start of the run (reading and planning
use the window too), a stop while reading or planning ends the run within 2 s with every row's
ledger line, and `plan` / `validate` / the run's start say what the run asks of the API.

Planning a file big enough to take seconds would take seconds in the suite too: these runs plan
slowly instead (a stand-in for the planner that sleeps first, in a real process, so the signals
are real), and write a mark when planning starts so a signal lands in it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import (
    API_KEY,
    SandboxServer,
    assert_no_key,
    cli_env,
    read_ledger,
    write_csv,
)

from sync_worker.cli import main

# `python -c SLOW ARGS`: the CLI, with planning (or reading) slowed by the seconds in the
# environment, the file `planning` written when it starts.
SLOW = """
import os, sys, time
from pathlib import Path
from sync_worker.commands import pipeline
from sync_worker.cli import main

def slowly(real, what):
    def call(*args, **kwargs):
        Path(what).write_text("")
        result = real(*args, **kwargs) if what == "reading" else None
        end = time.monotonic() + float(os.environ[what.upper() + "_S"])
        while time.monotonic() < end:
            time.sleep(0.01)
        return result if what == "reading" else real(*args, **kwargs)
    return call

if "PLANNING_S" in os.environ:
    pipeline.plan_with_notes = slowly(pipeline.plan_with_notes, "planning")
if "READING_S" in os.environ:
    pipeline.read_inputs = slowly(pipeline.read_inputs, "reading")
sys.exit(main(sys.argv[1:]))
"""


def _rows(folder: Path, count: int) -> Path:
    """`count` interviews of 7 contacts, each with an objective of its own: one request each."""
    rows = [[i, f"Name {i}", f"c{i % 7}@x.example", f"Goal {i}"] for i in range(1, count + 1)]
    header = ["interview_id", "contact_name", "contact_email", "objective"]
    return write_csv(folder / "in.csv", header, rows)


def _args(server: SandboxServer, *extra: str) -> list[str]:
    return [
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "ledger.csv",
        "--no-progress",
        *extra,
    ]


def _start(folder: Path, args: list[str], **slow: float) -> subprocess.Popen[str]:
    env = cli_env(**{f"{name.upper()}_S": str(seconds) for name, seconds in slow.items()})
    return subprocess.Popen(
        [sys.executable, "-c", SLOW, *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never started"
        time.sleep(0.01)


def _summary(folder: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((folder / "ledger.csv.summary.json").read_text())
    return summary


def _seconds(summary: dict[str, Any]) -> float:
    started, finished = (
        datetime.fromisoformat(summary[key]) for key in ("started_at", "finished_at")
    )
    return (finished - started).total_seconds()


def _statuses(folder: Path, rows: int) -> Counter[str]:
    lines = read_ledger(folder / "ledger.csv")
    assert sorted(int(line["source_row"]) for line in lines) == list(range(1, rows + 1))
    return Counter(line["status"] for line in lines)


@pytest.mark.timing
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"]
)
def test_a_stop_while_planning_ends_within_2_s_with_every_row_not_attempted(
    tmp_path: Path, sandbox: SandboxServer, sig: signal.Signals, code: int
) -> None:
    _rows(tmp_path, 300)
    process = _start(tmp_path, _args(sandbox), planning=30.0)
    try:
        _wait_for(tmp_path / "planning")
        time.sleep(0.2)  # well inside it
        process.send_signal(sig)
        signalled = time.monotonic()
        _out, err = process.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        process.kill()
    assert_no_key(err)
    assert process.returncode == code, err
    assert took < 2.0, err  # planning was to last 30 s more
    assert _statuses(tmp_path, 300) == {"not_attempted": 300}
    assert sandbox.requests() == []
    summary = _summary(tmp_path)
    assert summary["stopped_by"] == sig.name and summary["exit_code"] == code


@pytest.mark.timing
def test_a_stop_while_reading_is_met_as_soon_as_reading_ends(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    _rows(tmp_path, 50)
    process = _start(tmp_path, _args(sandbox), reading=1.5)
    try:
        _wait_for(tmp_path / "reading")
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _out, err = process.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert took < 1.5 + 2.0, err  # the rows must be known to be given their lines
    assert _statuses(tmp_path, 50) == {"not_attempted": 50}
    assert sandbox.requests() == []


@pytest.mark.timing
def test_max_duration_counts_from_the_start_of_the_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """A 3 s window, 2 s of it planning: about 1 s of sending at 5 a second, not 3 s."""
    _rows(tmp_path, 100)
    args = _args(sandbox, "--rate-limit", "5", "--rate-period", "1", "--max-duration", "0.05")
    process = _start(tmp_path, args, planning=2.0)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 4, err
    summary = _summary(tmp_path)
    assert summary["stopped_by"] == "max_duration"
    assert _seconds(summary) < 3.0 + 1.5, summary
    statuses = _statuses(tmp_path, 100)
    assert 1 <= statuses["ok"] <= 10, statuses  # ~1 s of sending (a 3 s one sends ~15)
    assert statuses["ok"] + statuses["not_attempted"] == 100


@pytest.mark.timing
def test_a_window_used_up_by_planning_sends_nothing(tmp_path: Path, sandbox: SandboxServer) -> None:
    _rows(tmp_path, 40)
    args = _args(sandbox, "--max-duration", "0.02")  # 1.2 s
    process = _start(tmp_path, args, planning=2.0)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 4, err
    assert sandbox.requests() == []
    assert _statuses(tmp_path, 40) == {"not_attempted": 40}
    summary = _summary(tmp_path)
    assert summary["stopped_by"] == "max_duration" and _seconds(summary) < 2.0 + 1.5


# What a run would ask of the API: the summary line of plan and validate, the run's start -----


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _export(folder: Path) -> Path:
    """5 rows, 4 interviews (two rows of interview 3), 3 contacts (one without an email)."""
    return write_csv(
        folder / "in.csv",
        ["interview_id", "contact_name", "contact_email", "contact_context"],
        [
            [1, "Ann", "A@x.example", "first"],
            [2, "Ann", "a@x.example", ""],
            [3, "Bo", "b@x.example", "second"],
            [3, "", "b@x.example", "third"],
            [4, "Cy", "", "solo"],
        ],
    )


@pytest.mark.parametrize("command", ["plan", "validate"])
@pytest.mark.parametrize("merge", [[], ["--merge"]], ids=["replace", "merge"])
def test_plan_and_validate_end_with_what_the_run_asks_of_the_api(
    tmp_path: Path, command: str, merge: list[str]
) -> None:
    path = _export(tmp_path)
    args = [command, str(path), "--state", str(tmp_path / "s.sqlite"), "--log-format", "json"]
    result = CliRunner().invoke(main, [*args, "--tier", "essentials", *merge])
    assert result.exit_code == 0, result.output
    events = _events(result.stderr)
    finished = events[-1]  # the last line
    assert finished["event"] == f"{command}_finished"
    figures = {k: finished[k] for k in ("rows", "requests", "contacts", "contacts_notes_unknown")}
    assert figures == {
        "rows": 5,
        "requests": 3,  # a contact's fields once: 3 contacts, nothing of their own
        "contacts": 3,
        "contacts_notes_unknown": 3 if merge else 0,  # a merged first run knows no notes
    }
    assert finished["requests_per_minute"] == 60 and finished["estimated_minutes"] == 0.05
    assert finished["rows_riding"] == 1  # interview 2 goes with 1, its contact's first
    unknown = " (3 with notes unknown)" if merge else ""
    assert finished["message"] == (
        f"5 rows: 3 requests to 3 contacts{unknown}, about 0m03s at 60 requests a minute"
    )
    if command == "plan":  # stdout is the requests, as ever
        assert [json.loads(line)["interview_id"] for line in result.stdout.splitlines()] == [
            1,
            3,
            4,
        ]  # 2 rides with 1, its contact's


def test_the_summary_line_follows_the_limit_given(tmp_path: Path) -> None:
    path = _export(tmp_path)
    limit = ["--rate-limit", "2", "--rate-period", "1", "--log-format", "json"]
    result = CliRunner().invoke(main, ["validate", str(path), *limit])
    finished = _events(result.stderr)[-1]
    assert finished["requests_per_minute"] == 120 and finished["limit"] == 2
    assert finished["message"].endswith("about 0m02s at 120 requests a minute")


def test_on_a_terminal_the_summary_is_one_readable_line(tmp_path: Path) -> None:
    path = _export(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(path), "--log-format", "console"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[-1] == "5 rows: 3 requests to 3 contacts, about 0m01s at 300 requests a minute"
    assert not any(line.startswith("{") for line in lines)


def test_the_run_starts_saying_the_same(tmp_path: Path, sandbox: SandboxServer) -> None:
    path = _export(tmp_path)
    state = str(tmp_path / "s.sqlite")
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(path),
            "--merge",
            "--base-url",
            sandbox.base_url,
            "--state",
            state,
            "--ledger",
            str(tmp_path / "l.csv"),
            "--log-format",
            "json",
            "--tier",
            "essentials",
        ],
        env={"HINDSIGHT_API_KEY": API_KEY},
    )
    assert result.exit_code in (0, 1), result.output
    started = next(e for e in _events(result.stderr) if e["event"] == "run_started")
    assert (started["rows"], started["requests_to_send"], started["contacts"]) == (5, 3, 3)
    assert started["contacts_notes_unknown"] == 3 and started["estimated_minutes"] == 0.05
    assert started["message"] == "3 requests to 3 contacts take about 0m03s at 60 requests a minute"
