"""`history` (commands/history_report.py): its arguments and config checked before anything
is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_one_line, run_cli


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), ("exactly one of --email E or --interview N",)),
        (("--email", "a@x.com", "--interview", "1"), ("exactly one of",)),
        (("--email", "a@x.com", "--state", "missing.sqlite"), ("missing.sqlite not found",)),
    ],
    ids=["neither", "both", "no-state"],
)
def test_history_needs_one_subject_and_a_state(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    result = run_cli("history", *args, cwd=tmp_path)
    assert_one_line(result, 2, *words)


def test_history_days_must_be_a_positive_whole_number(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[state]\nhistory_days = 0\n")
    result = run_cli("history", "--email", "a@x.com", "--config", "c.toml", cwd=tmp_path)
    assert_one_line(result, 2, "c.toml", "[state] history_days", "whole number of days from 1")
