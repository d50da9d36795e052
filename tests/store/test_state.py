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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    NO_KEY,
    SandboxServer,
    assert_ledger_rows,
    assert_no_traceback,
    assert_one_line,
    cli_env,
    read_ledger,
    rows_csv,
    run_args,
    run_cli,
    set_latency,
    start_run,
    wait_for_arrivals,
)

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

PACKAGE = Path(__file__).resolve().parents[2] / "sync_worker"
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


def test_dry_run_after_a_real_run_changes_nothing(tmp_path: Path, sandbox: SandboxServer) -> None:
    """It crashed (`attempt to write a readonly database`, a ledger with only its header)."""
    rows_csv(tmp_path, 5)
    assert run_cli(*run_args(sandbox), cwd=tmp_path).code == 0
    state = tmp_path / "state.sqlite"
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    rows_csv(tmp_path, 5, tag="Changed")
    dry = run_cli(
        *run_args(sandbox, "--dry-run", ledger="dry.csv"),
        cwd=tmp_path,
        env=cli_env(**NO_KEY),
    )
    assert_no_traceback(dry, 0)
    assert {line["status"] for line in assert_ledger_rows(tmp_path / "dry.csv", 5)} == {"dry_run"}
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before
    assert len(sandbox.requests()) == 5  # the real run's only


def test_a_symlink_to_the_state_meets_the_running_one(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Two runs through a symlink once sent 139 of 200 rows twice: each name had its own lock
    file. The lock is on the database file now, and a killed holder never blocks the next run."""
    rows_csv(tmp_path, 40)
    slow = ("--rate-limit", "2")  # 20 s of sending: still running however slow the machine
    first = start_run(tmp_path, run_args(sandbox, *slow, ledger="first.csv"))
    try:
        wait_for_arrivals(sandbox, 2)
        (tmp_path / "alias.sqlite").symlink_to("state.sqlite")
        second = run_cli(
            *run_args(sandbox, state="alias.sqlite", ledger="second.csv"), cwd=tmp_path
        )
        assert_one_line(second, 75, "another run holds", f"pid {first.pid}", "run 20")
    finally:
        first.kill()
        first.wait()
    third = run_cli(*run_args(sandbox, state="alias.sqlite", ledger="third.csv"), cwd=tmp_path)
    assert_no_traceback(third, 0)
    assert_ledger_rows(tmp_path / "third.csv", 40)
    sent = Counter(r["id"] for r in sandbox.requests())
    assert set(sent) == {str(i) for i in range(1, 41)}
    assert sum(sent.values()) - 40 <= 2  # at most what was in flight at the kill sent again


def test_a_hard_linked_state_is_refused(tmp_path: Path, sandbox: SandboxServer) -> None:
    """SQLite names its write-ahead log after the path: after a killed run, a run through a
    second name missed the first name's log and its writes corrupted the file (`database disk
    image is malformed`). A run while another holds the file through either name gets 75."""
    rows_csv(tmp_path, 3)
    State.open(tmp_path / "state.sqlite").close()
    os.link(tmp_path / "state.sqlite", tmp_path / "hard.sqlite")
    result = run_cli(*run_args(sandbox, state="hard.sqlite"), cwd=tmp_path)
    assert_one_line(result, 2, "hard.sqlite", "2 names (hard links)", "symlink")
    assert sandbox.requests() == []


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _text(path: Path) -> None:
    path.write_text("interview_id,contact_name\n1,Ana\n")


def _truncated(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.executemany(
        "INSERT INTO sent VALUES (?, ?, 'c', 'r', 't')", [(i, "h" * 64) for i in range(1, 3001)]
    )
    db.commit()
    db.close()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    db.close()


def _future(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("PRAGMA user_version = 99")
    db.close()


BROKEN_STATES = pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            _garbage,
            (
                "mv state.sqlite state.sqlite.bad",
                "unchanged rows are sent again",
                "if --state names the wrong file",
            ),
        ),
        (_text, ("mv state.sqlite state.sqlite.bad", "file is not a database")),
        (_truncated, ("mv state.sqlite state.sqlite.bad", "malformed")),
        (_foreign, ("another program's SQLite database", "invoices", "--state")),
        (_future, ("written by a newer sync-worker", "schema 99")),
    ],
    ids=["garbage", "text-file", "truncated-sqlite", "unrelated-sqlite", "future-schema"],
)


@BROKEN_STATES
def test_a_state_that_is_not_one_stops_run_with_2(
    tmp_path: Path, sandbox: SandboxServer, make: Callable[[Path], None], words: tuple[str, ...]
) -> None:
    rows_csv(tmp_path, 3)
    make(tmp_path / "state.sqlite")
    before = (tmp_path / "state.sqlite").read_bytes()
    assert_one_line(run_cli(*run_args(sandbox), cwd=tmp_path), 2, "state.sqlite", *words)
    assert sandbox.requests() == []
    assert (tmp_path / "state.sqlite").read_bytes() == before


@BROKEN_STATES
def test_a_state_that_is_not_one_stops_plan(
    tmp_path: Path, make: Callable[[Path], None], words: tuple[str, ...]
) -> None:
    rows_csv(tmp_path, 3)
    make(tmp_path / "state.sqlite")
    plan = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_one_line(plan, 2, "state.sqlite", *words)


def test_plan_refuses_a_broken_state_that_validate_ignores(tmp_path: Path) -> None:
    rows_csv(tmp_path, 3)
    _garbage(tmp_path / "state.sqlite")
    plan = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_one_line(plan, 2, "state.sqlite", "mv state.sqlite state.sqlite.bad")
    validate = run_cli("validate", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(validate, 0)  # validate checks the files and ignores the state
    assert "3 rows in 1 file(s)" in validate.stdout


HOLD_EXCLUSIVE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.executescript(sys.argv[2])
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(30)
"""


def test_a_state_locked_by_another_program_is_75(tmp_path: Path, sandbox: SandboxServer) -> None:
    """An sqlite3 shell or a backup in an exclusive transaction (a rollback-journal file, so even
    reading waits): a short wait, then one line, not a hang or a traceback."""
    rows_csv(tmp_path, 3)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_EXCLUSIVE, "state.sqlite", SCHEMA],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_cli(*run_args(sandbox), cwd=tmp_path)
        assert_one_line(result, 75, "state.sqlite", "locked by another program")
    finally:
        holder.kill()
        holder.wait()
    assert sandbox.requests() == []


def test_kill_9_then_rerun_resumes(tmp_path: Path, sandbox: SandboxServer) -> None:
    server = sandbox
    set_latency(server, 20)
    rows_csv(tmp_path, 60)
    args = run_args(server, "--rate-limit", "20", "--rate-period", "1", "--concurrency", "4")
    killed = start_run(tmp_path, args)
    wait_for_arrivals(server, 25)
    killed.kill()
    killed.wait()
    before = Counter(r["id"] for r in server.requests())
    finished = {x["interview_id"] for x in read_ledger(tmp_path / "ledger.csv")}
    assert finished and finished <= set(before)  # every finished result is on disk
    assert run_cli(*args, "--ledger", "second.csv", cwd=tmp_path).code == 0
    after = Counter(r["id"] for r in server.requests())
    assert set(after) == {str(i) for i in range(1, 61)}
    sent_twice = [i for i, n in after.items() if n > 1]
    assert len(sent_twice) <= 4  # at most what was in flight at the kill
    assert run_cli(*args, "--ledger", "third.csv", cwd=tmp_path).code == 0
    assert Counter(r["id"] for r in server.requests()) == after  # a third run sends nothing


def test_second_run_on_same_state_refused(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 40)
    first = start_run(tmp_path, run_args(sandbox, "--rate-limit", "10", "--rate-period", "1"))
    try:
        wait_for_arrivals(sandbox, 2)
        second = run_cli(*run_args(sandbox, "--ledger", "second.csv"), cwd=tmp_path)
        assert second.code == 75
        assert f"pid {first.pid}" in second.event("error")["message"]
    finally:
        first.kill()
        first.wait()
    third = run_args(sandbox, "--ledger", "third.csv")
    assert run_cli(*third, cwd=tmp_path).code == 0  # the stale lock is taken over
