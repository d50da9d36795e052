from __future__ import annotations

import ast
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sync_worker.clock import now_iso
from sync_worker.errors import ConfigError, LockedError
from sync_worker.store.state import (
    SCHEMA,
    SCHEMA_VERSION,
    RunLock,
    State,
    StateWriteError,
    Success,
    read_holder,
)

PACKAGE = Path(__file__).resolve().parent.parent / "sync_worker"
SQL_CALLS = frozenset({"execute", "executemany", "executescript"})


def test_remembers_confirmed_sends(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.sqlite"
    state = State.open(path)
    state.add([Success(1, "h1", "a@x.com", json.dumps({"k": "v"}), "r1", "t")])
    state.add([Success(2, "h2", "interview:2", None, "r1", "t")])
    assert State.read_only(path).sent_hashes() == {}  # queued, not yet committed
    state.flush()
    state.add([Success(1, "h1b", "a@x.com", json.dumps("text"), "r2", "t")])
    state.close()
    again = State.read_only(path)
    assert again.sent_hashes() == {1: "h1b", 2: "h2"}
    assert again.contexts() == {"a@x.com": "text"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_journal_of_a_killed_run_is_read_and_folded(tmp_path: Path) -> None:
    """Sends committed but never folded (the run was killed): a reader sees them, and the next
    open folds them into the keyed tables, the later send of an interview winning."""
    path = tmp_path / "state.sqlite"
    killed = State.open(path)
    killed.add([Success(7, "old", "a@x.com", json.dumps({"k": "old"}), "r1", "t1")])
    killed.add([Success(8, "h8", "b@x.com", None, "r1", "t1")])
    killed.add([Success(7, "new", "a@x.com", json.dumps({"k": "new"}), "r1", "t2")])
    killed.flush()  # committed to the journal; no close, as after a kill -9
    seen = State.read_only(path)
    assert seen.sent_hashes() == {7: "new", 8: "h8"}
    assert seen.contexts() == {"a@x.com": {"k": "new"}}
    reopened = State.open(path)  # folds at once, before the run sends anything
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM journal").fetchone() == (0,)
    assert dict(db.execute("SELECT interview_id, payload_sha256 FROM sent")) == {7: "new", 8: "h8"}
    assert db.execute("SELECT contact, context_json FROM contacts").fetchall() == [
        ("a@x.com", '{"k": "new"}')
    ]
    db.close()
    reopened.close()


def test_planning_reads_the_same_state_as_columns(tmp_path: Path) -> None:
    """`sends` and `remembered` (what planning reads) hold what `sent_hashes` and `contexts`
    hold, the journal of a killed run laid over the keyed tables, the last send winning."""
    path = tmp_path / "state.sqlite"
    state = State.open(path)
    state.add(
        [
            Success(1, "aa" * 32, "a@x.com", json.dumps({"k": "v"}), "r1", "t1"),
            Success(2, "bb" * 32, "b@x.com", json.dumps("text"), "r1", "t1"),
        ]
    )
    state.close()
    killed = State.open(path)
    killed.add(
        [
            Success(2, "cc" * 32, "b@x.com", json.dumps({"k": "new"}), "r2", "t2"),
            Success(3, "dd" * 32, "c@x.com", None, "r2", "t2"),
            Success(2, "ee" * 32, "b@x.com", None, "r2", "t3"),
        ]
    )
    killed.flush()  # no close: as after a kill -9
    seen = State.read_only(path)
    sends = seen.sends()
    assert sends.ids.tolist() == [1, 2, 3]
    assert [h.hex() for h in sends.hashes.to_pylist()] == ["aa" * 32, "ee" * 32, "dd" * 32]
    remembered = seen.remembered(with_times=True)
    rows = zip(
        remembered.contacts.to_pylist(),
        remembered.texts.to_pylist(),
        remembered.times.to_pylist(),
        strict=True,
    )
    assert sorted(rows) == [("a@x.com", '{"k": "v"}', "t1"), ("b@x.com", '{"k": "new"}', "t2")]
    assert {
        k: json.loads(v)
        for k, v in zip(remembered.contacts.to_pylist(), remembered.texts.to_pylist(), strict=True)
    } == seen.contexts()


def test_a_state_value_of_the_wrong_type_is_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    State.open(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO contacts VALUES ('a@x.com', x'00ff', 'r', 't')")  # a blob, not text
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="a value of the wrong type"):
        State.read_only(path).remembered()


def test_state_from_before_the_journal_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS journal")[0])
    db.execute("INSERT INTO sent VALUES (1, 'h1', 'a@x.com', 'r0', 't0')")
    db.commit()
    db.close()
    assert State.read_only(path).sent_hashes() == {1: "h1"}  # read as it is, nothing created
    state = State.open(path)
    state.add([Success(2, "h2", "b@x.com", None, "r1", "t1")])
    state.close()
    assert State.read_only(path).sent_hashes() == {1: "h1", 2: "h2"}


def test_now_iso_is_utc_with_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    for stamp, text in [
        (1_764_431_272.497, "2025-11-29T15:47:52.497Z"),
        (1_764_431_272.0004, "2025-11-29T15:47:52.000Z"),
        (1_764_431_273.9999, "2025-11-29T15:47:53.999Z"),
    ]:
        monkeypatch.setattr(time, "time", lambda stamp=stamp: stamp)
        assert now_iso() == text


def test_read_only_creates_nothing(tmp_path: Path) -> None:
    state = State.read_only(tmp_path / "none.sqlite")
    assert state.sent_hashes() == {} and state.contexts() == {}
    assert not (tmp_path / "none.sqlite").exists()


HOLDER = """
import sys, time
from pathlib import Path
from sync_worker.store.state import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire("holder-run")
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_refused_and_stale_lock_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError) as error:
            RunLock(path).acquire("second")
        message = str(error.value)
        assert f"pid {holder.pid}" in message and "holder-run" in message
        assert str(path) in message and "started 20" in message
        assert error.value.exit_code == 75
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock = RunLock(path)  # the killed holder's sign-in is still there, but its flock went
    lock.acquire("third")
    assert read_holder(path).run_id == "third"
    lock.release()


def test_every_name_of_the_file_meets_the_same_lock(tmp_path: Path) -> None:
    """A lock file beside the name given was one lock per name: two runs through a symlink
    sent rows twice. The flock is on the file itself."""
    path = tmp_path / "state.sqlite"
    (tmp_path / "alias.sqlite").symlink_to(path)
    (tmp_path / "sub").mkdir()
    holder = RunLock(path)
    holder.acquire("holder-run")
    os.link(path, tmp_path / "hard.sqlite")  # refused when free (see State), 75 while held
    try:
        for name in ("alias.sqlite", "sub/../state.sqlite", "hard.sqlite"):
            with pytest.raises(LockedError, match=f"run holder-run, pid {os.getpid()}"):
                RunLock(tmp_path / name).acquire("second")
    finally:
        holder.release()
    (tmp_path / "hard.sqlite").unlink()
    after = RunLock(tmp_path / "alias.sqlite")
    after.acquire("after")  # released: free again
    after.release()


def test_read_only_state_records_no_runs_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    state = State.open(path)
    state.add([Success(1, "h1", "a@x.com", None, "r1", "t")])
    state.close()
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    dry = State.read_only(path)
    dry.run_started("dry", now_iso())
    dry.run_finished("dry", 0, {})
    assert dry.sent_hashes() == {1: "h1"}
    dry.close()
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    db.close()


def _future(path: Path) -> None:
    State.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()


def _old_columns(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sent (interview_id INTEGER, hash TEXT)")
    db.close()


def _hard_link(path: Path) -> None:
    State.open(path).close()
    os.link(path, path.with_name("second-name.sqlite"))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_garbage, "mv "),
        (_foreign, "another program's SQLite database (tables: customers)"),
        (_future, "written by a newer sync-worker"),
        (_old_columns, "table sent has no column"),
        (_hard_link, "2 names (hard links)"),
    ],
    ids=["garbage", "foreign-database", "future-schema", "missing-columns", "hard-link"],
)
@pytest.mark.parametrize("opener", [State.open, State.read_only], ids=["open", "read-only"])
def test_a_file_that_is_no_usable_state_is_one_config_error(
    tmp_path: Path, make: Callable[[Path], None], words: str, opener: Callable[[Path], State]
) -> None:
    path = tmp_path / "state.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=re.escape(words)) as error:
        opener(path)
    assert error.value.exit_code == 2 and str(path) in str(error.value)
    assert path.read_bytes() == before  # refused, not "repaired"


def test_an_empty_file_is_a_new_state(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.touch()
    assert State.read_only(path).sent_hashes() == {}
    State.open(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_odd_characters_in_the_path_name_the_file(tmp_path: Path) -> None:
    """The read-only URI escapes them: '?' once cut the name short and read another file."""
    path = tmp_path / "a dir" / "st?a#b%20.sqlite"
    state = State.open(path)
    state.add([Success(1, "h1", "a@x.com", None, "r1", "t")])
    state.close()
    assert State.read_only(path).sent_hashes() == {1: "h1"}


def _sql_uses(path: Path) -> list[str]:
    """What in one module reaches SQLite itself: an import of sqlite3, a call of a connection's
    execute methods, or a State's connection (`_db`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        found += [f"import {n}" for n in names if n.split(".")[0] in ("sqlite3", "_sqlite3")]
        if isinstance(node, ast.Attribute) and (node.attr in SQL_CALLS or node.attr == "_db"):
            found.append(f".{node.attr}")
    return [f"{path.relative_to(PACKAGE.parent)}:{use}" for use in found]


def test_only_the_store_speaks_sqlite() -> None:
    """The state file has one owner: every other module goes through State's typed methods
    (the import-linter contract in pyproject.toml says the same of imports)."""
    modules = [
        p for p in sorted(PACKAGE.rglob("*.py")) if "store" not in p.relative_to(PACKAGE).parts
    ]
    assert len(modules) > 40  # the scan sees the package
    assert [use for path in modules for use in _sql_uses(path)] == []
    assert _sql_uses(PACKAGE / "store" / "state.py")  # and would see a use
    assert not hasattr(State, "database")


def test_a_failed_write_of_confirmed_sends_is_a_state_write_error(tmp_path: Path) -> None:
    """The recorder stops the run on it, naming SQLite's reason."""
    path = tmp_path / "state.sqlite"
    State.open(path).close()
    state = State.read_only(path)  # a connection that cannot write
    state.add([Success(1, "h1", "a@x.com", None, "r1", "t")])
    with pytest.raises(StateWriteError, match="readonly"):
        state.flush()
    state.close()
