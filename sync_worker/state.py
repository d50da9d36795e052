"""The state database (SQLite) and the one-run-at-a-time lock beside it.

It remembers, for every interview sent successfully, the payload hash, and for every contact the
context last sent. A row whose payload equals the last one sent is skipped, so a re-run after a
crash, a kill or failures resumes by key, not by offset. Writes are recorded only after the
server confirmed them, and are committed in batches (the run flushes every 10 ms).

During a run, confirmed sends are appended to `journal` (a plain table in arrival order), and
folded into the keyed tables `sent` and `contacts` when the state is closed, or, after a kill,
when it is next opened; readers see the keyed tables with the journal laid over them. Appending
writes one page per commit, where upserting interviews in contact order dirtied a page per row
(about 12 us a request, most of the run's own cost when the rate is not the limit).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import IO, Any, NamedTuple

from sync_worker.clock import now_iso
from sync_worker.errors import LockedError, SyncWorkerError
from sync_worker.merger import Context
from sync_worker.private_files import create_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    interview_id INTEGER PRIMARY KEY,
    payload_sha256 TEXT NOT NULL,
    contact TEXT NOT NULL,
    run_id TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    contact TEXT PRIMARY KEY,
    context_json TEXT NOT NULL,
    run_id TEXT NOT NULL,
    sent_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    summary_json TEXT
);
CREATE TABLE IF NOT EXISTS journal (
    interview_id INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL,
    contact TEXT NOT NULL,
    context_json TEXT,
    run_id TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
"""
FOLD = (
    "INSERT OR REPLACE INTO sent SELECT interview_id, payload_sha256, contact, run_id, sent_at "
    "FROM journal ORDER BY rowid",
    "INSERT OR REPLACE INTO contacts SELECT contact, context_json, run_id, sent_at "
    "FROM journal WHERE context_json IS NOT NULL ORDER BY rowid",
    "DELETE FROM journal",
)


class Success(NamedTuple):
    """A confirmed send, in the journal's column order."""

    interview_id: int
    sha256: str
    contact: str
    context_json: str | None  # None: no contact_context was sent
    run_id: str
    sent_at: str


class State:
    """One SQLite file; open it with `State.open` (read-write) or `State.read_only`."""

    def __init__(self, connection: sqlite3.Connection | None, writable: bool = False) -> None:
        self._db = connection
        self._writable = writable
        self._pending: list[Success] = []

    @classmethod
    def open(cls, path: Path) -> State:
        create_private(path)
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # survives kill -9; only power loss can undo
            db.execute("PRAGMA wal_autocheckpoint=20000")  # fold the WAL in rarely: no stalls
            db.executescript(SCHEMA)
            state = cls(db, writable=True)
            state.fold()  # what a killed run left in the journal
        except sqlite3.DatabaseError as exc:
            raise SyncWorkerError(f"{path}: cannot open the state database ({exc})") from None
        return state

    @classmethod
    def read_only(cls, path: Path) -> State:
        """For `plan`: read what exists, create nothing."""
        if not path.exists():
            return cls(None)
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            db.execute("SELECT 1 FROM sent LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise SyncWorkerError(f"{path}: cannot read the state database ({exc})") from None
        return cls(db)

    def sent_hashes(self) -> dict[int, str]:
        return self._latest(
            "SELECT interview_id, payload_sha256 FROM sent",
            "SELECT interview_id, payload_sha256 FROM journal ORDER BY rowid",
        )

    def contexts(self) -> dict[str, Context]:
        texts = self._latest(
            "SELECT contact, context_json FROM contacts",
            "SELECT contact, context_json FROM journal WHERE context_json IS NOT NULL "
            "ORDER BY rowid",
        )
        return {contact: json.loads(text) for contact, text in texts.items()}

    def _latest(self, keyed: str, journal: str) -> dict[Any, Any]:
        """Pairs from a keyed table, with the sends not folded yet (a killed run's, or a running
        one's) laid over them in arrival order."""
        if self._db is None:
            return {}
        pairs = dict(self._db.execute(keyed))
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal'"
        if self._db.execute(query).fetchone() is not None:  # none in a state from before it
            pairs.update(self._db.execute(journal))
        return pairs

    def add(self, successes: list[Success]) -> None:
        """Queue confirmed sends; `flush` commits everything queued."""
        self._pending.extend(successes)

    def flush(self) -> None:
        """Commit the queued sends to the journal: one append, one page or so per commit."""
        if not self._pending or self._db is None:
            return
        pending, self._pending = self._pending, []
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?)", pending)

    def fold(self) -> None:
        """Move the journal into the keyed tables, in arrival order (the last send wins)."""
        if self._db is None or not self._writable:
            return
        with self._db:
            self._db.execute("BEGIN")
            for statement in FOLD:
                self._db.execute(statement)

    def run_started(self, run_id: str, started_at: str) -> None:
        if self._db is not None:
            self._db.execute(
                "INSERT INTO runs (run_id, started_at) VALUES (?, ?)", (run_id, started_at)
            )

    def run_finished(self, run_id: str, exit_code: int, summary: dict[str, Any]) -> None:
        self.flush()
        if self._db is not None:
            self._db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary_json = ? WHERE run_id = ?",
                (now_iso(), exit_code, json.dumps(summary), run_id),
            )

    def close(self) -> None:
        self.flush()
        self.fold()
        if self._db is not None:
            self._db.close()
            self._db = None


class RunLock:
    """An flock on `<state>.lock`: released by the kernel when the holder dies, so a lock left
    by a killed run never blocks the next one."""

    def __init__(self, state_path: Path) -> None:
        self.state_path = state_path
        self.path = state_path.with_name(state_path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self, run_id: str) -> None:
        create_private(self.path)
        handle = open(self.path, "r+", encoding="utf-8")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "{}"
            handle.close()
            raise LockedError(self._held_message(holder)) from None
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "run_id": run_id, "started_at": now_iso()}))
        handle.flush()
        self._file = handle

    def _held_message(self, holder: str) -> str:
        try:
            info = json.loads(holder)
        except json.JSONDecodeError:
            info = {}
        return (
            f"another run holds the state database {self.state_path}: "
            f"run {info.get('run_id', '?')}, pid {info.get('pid', '?')}, "
            f"started {info.get('started_at', '?')}; wait for it to finish, or use another --state"
        )

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
