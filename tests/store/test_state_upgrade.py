"""A state file written by release 0.1.0 keeps working: read, skipped by, and written to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sync_worker.cli import main

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
