"""The state file stays near the size of what it holds, however many runs it has seen: a run
writes planned changes only for the requests it sends, and the pages its fold frees go back to
the file system. A state made before (auto_vacuum off) is rewritten once, in place."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import SandboxServer, run_cli, write_csv

ROWS = 1_500
DATA = Path(__file__).parents[1] / "data"


def _export(folder: Path, changed: range = range(0), count: int = ROWS) -> None:
    rows = [
        [i, f"Name {i}" + (" (new)" if i in changed else ""), f"c{i % 600}@x.example", "Demo"]
        for i in range(1, count + 1)
    ]
    header = ["interview_id", "contact_name", "contact_email", "context.stage"]
    write_csv(folder / "in.csv", header, rows)


def _run(folder: Path, server: SandboxServer, *extra: str) -> int:
    args = ["run", "in.csv", "--base-url", server.base_url, "--state", "state.sqlite"]
    args += ["--ledger", "ledger-{run_id}.csv", "--rate-limit", "100000", "--rate-period", "1"]
    return run_cli(*args, *extra, cwd=folder, timeout=120).code


def _sizes(path: Path) -> tuple[int, int, int]:
    """The file's size, the bytes its tables and indexes hold (dbstat), and its auto_vacuum."""
    db = sqlite3.connect(path)
    try:
        (payload,) = db.execute("SELECT sum(payload) FROM dbstat").fetchone()
        (mode,) = db.execute("PRAGMA auto_vacuum").fetchone()
    finally:
        db.close()
    return path.stat().st_size, int(payload), int(mode)


def test_the_state_stays_within_twice_its_data_run_after_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """A backfill, a forced re-send of everything, nightly runs with a few rows changed, and a
    run stopped by its window: after each, the file is at most twice what it holds."""
    _export(tmp_path)
    runs = [
        ((), range(0)),
        (("--force",), range(0)),
        ((), range(1, 40)),
        ((), range(1, 80)),
        (("--force", "--max-duration", "0.01", "--rate-limit", "20"), range(0)),
        ((), range(0)),
    ]
    for extra, changed in runs:
        _export(tmp_path, changed)
        assert _run(tmp_path, sandbox, *extra) in (0, 4)
        size, data, mode = _sizes(tmp_path / "state.sqlite")
        assert mode == 2  # INCREMENTAL
        assert size <= 2 * data, (extra, size, data)


def test_a_stopped_backfill_writes_planned_changes_only_for_what_it_sent(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The first 0.6 s at 10 a second of a 1,500-row backfill: its state holds the few sends
    and their history, in a page or so per table, not 1,500 requests' planned changes (about
    0.2 MB, written before the first send and deleted at the end)."""
    _export(tmp_path)
    assert _run(tmp_path, sandbox, "--max-duration", "0.01", "--rate-limit", "10") == 4
    size, data, _mode = _sizes(tmp_path / "state.sqlite")
    assert size < 100_000, (size, data)


@pytest.fixture
def bloated_old_state(tmp_path: Path) -> Path:
    """The previous release's state (auto_vacuum off), with 8 MB freed inside it."""
    path = tmp_path / "state.sqlite"
    shutil.copyfile(DATA / "state-0.1.0.sqlite", path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("CREATE TABLE scratch (x BLOB)")
        db.executemany("INSERT INTO scratch VALUES (?)", [(b"x" * 2000,) for _ in range(4000)])
        db.execute("DROP TABLE scratch")
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        assert db.execute("PRAGMA freelist_count").fetchone()[0] > 1900
    finally:
        db.close()
    return path


def test_a_state_of_the_previous_release_is_compacted_once_and_stays_so(
    tmp_path: Path, sandbox: SandboxServer, bloated_old_state: Path
) -> None:
    before, _data, _mode = _sizes(bloated_old_state)
    _export(tmp_path, count=50)
    assert _run(tmp_path, sandbox) == 0
    size, data, mode = _sizes(bloated_old_state)
    assert mode == 2 and size < before / 10, (before, size, data)
    _export(tmp_path, range(1, 50), count=50)
    assert _run(tmp_path, sandbox) == 0  # and it goes on working
    assert _sizes(bloated_old_state)[2] == 2
