"""A state file written by release 0.1.0 keeps working: read, skipped by, and written to; it is
upgraded in place and adopts the first API it is used with."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import API_KEY, SandboxServer, read_ledger

from sync_worker.cli import main
from sync_worker.store.state import SCHEMA_VERSION, State

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    copy = tmp_path / "state.sqlite"
    shutil.copyfile(DATA / "state-0.1.0.sqlite", copy)
    return copy


def test_an_unchanged_export_plans_nothing_on_an_old_state(old_state: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "plan",
            str(DATA / "state-0.1.0-contacts2.csv"),
            "--merge",
            "--state",
            str(old_state),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""  # both rows were sent by the old release: nothing to send


def test_history_of_an_old_state(old_state: Path) -> None:
    result = CliRunner().invoke(
        main, ["history", "--email", "a@x.com", "--state", str(old_state), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"second"' in result.stdout and '"kept"' in result.stdout


def test_an_old_state_adopts_the_first_api_and_keeps_skipping(
    old_state: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """The first run on a state of release 0.1.0 records its base URL (the state is upgraded in
    place) and still skips what the old release sent; another API's run is then refused."""
    common = ["--state", str(old_state), "--rate-limit", "1000", "--rate-period", "1"]
    contacts2 = str(DATA / "state-0.1.0-contacts2.csv")
    ledger = tmp_path / "again.csv"
    result = CliRunner().invoke(
        main,
        [
            "run",
            contacts2,
            "--merge",
            "--base-url",
            sandbox.base_url,
            "--ledger",
            str(ledger),
            *common,
        ],
        env={"HINDSIGHT_API_KEY": API_KEY},
    )
    assert result.exit_code == 0, result.output
    assert {line["status"] for line in read_ledger(ledger)} == {"skipped_unchanged"}
    assert sandbox.requests() == []  # an unchanged re-run sends nothing
    state = State.read_only(old_state)
    assert state.api_url() == sandbox.base_url
    state.close()
    with sqlite3.connect(old_state) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    other = CliRunner().invoke(
        main, ["plan", contacts2, "--base-url", "http://127.0.0.1:8766/api/v1", *common[:2]]
    )
    assert other.exit_code == 2
    assert sandbox.base_url in other.output and "http://127.0.0.1:8766/api/v1" in other.output


def test_an_old_state_remembers_each_interviews_contact(old_state: Path) -> None:
    """Interview 101 was sent as a@x.com by the old release: an export that gives it no email
    still merges onto a@x.com's notes (the plan says `merged`, not `no_existing`)."""
    export = old_state.parent / "no-email.csv"
    export.write_text('interview_id,contact_context\n101,"{""later"": ""yes""}"\n')
    result = CliRunner().invoke(main, ["plan", str(export), "--merge", "--state", str(old_state)])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.stdout)
    assert planned["merge"] == "merged" and planned["body"]["contact_context"]["later"] == "yes"
