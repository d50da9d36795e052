"""The state database (SQLite) and the one-run-at-a-time lock on it.

It remembers, for every interview sent successfully, the payload hash, and for every contact the
context last sent. A row whose payload equals the last one sent is skipped, so a re-run after a
crash, a kill or failures resumes by key, not by offset. Writes are recorded only after the
server confirmed them, and are committed in batches (the run flushes every 10 ms).

During a run, confirmed sends are appended to `journal` (a plain table in arrival order), and
folded into the keyed tables `sent` and `contacts` when the state is closed, or, after a kill,
when it is next opened; readers see the keyed tables with the journal laid over them. Appending
writes one page per commit, where upserting interviews in contact order dirtied a page per row
(about 12 us a request, most of the run's own cost when the rate is not the limit).

A file that is not a state this version can use (garbage, a damaged or foreign database, a newer
layout), or one that cannot be written, is one ConfigError (exit 2) naming it and the fix.

The history of the values runs changed (history.py) lives in the same file: a run holds the
planned changes of each chunk of requests from before it sends them, and each confirmed send's
history rows are appended in the same commit as its journal row, so the history adds an append
per changed field to the batched commits and nothing to the end of the run.

The file stays near the size of what it holds: every run appends to the journal and empties it,
and SQLite only reuses the pages it frees. A state made with `auto_vacuum = INCREMENTAL` hands
them back to the file system after the fold when they are many (`_return_space`); one made
before (auto_vacuum off: it can only be turned on by rewriting the file) is rewritten once, at
the end of its first run by this version, which also returns its free pages. Two 500,000-row
runs had left 130 MB of free pages in a file holding 1 MB.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from sync_worker.clock import now_iso
from sync_worker.collector import collector_off
from sync_worker.errors import ConfigError, LockedError, SyncWorkerError
from sync_worker.fields import CONTACT_FIELDS, RESOLVED
from sync_worker.merger import Context
from sync_worker.settings.network import canonical_url
from sync_worker.settings.paths import create_private, open_private
from sync_worker.store import history
from sync_worker.store.digests import DIGEST, Ints, hex_digests
from sync_worker.store.history import Change, FieldKey, Version, level_of
from sync_worker.store.remembered import Links, Remembered, Sent

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
CREATE TABLE IF NOT EXISTS api (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    base_url TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resolved (
    interview_id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL,
    resolved_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answered (
    interview_id INTEGER PRIMARY KEY,
    http_status INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    answered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lock_holder (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    pid INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    started_at TEXT NOT NULL
);
"""
# PRAGMA user_version this version writes. A state written by a newer version (a higher number)
# is refused rather than misread; older ones (0: before the number) are read and upgraded in
# place. 2: the API the state belongs to (`api`, adopted by a state of 1 on its first run), the
# contacts the API named (`resolved`), the runs whose history was pruned (`pruned_runs`).
# Since, without a new number (a table added, which earlier versions of 2 leave alone): the
# API's last own answer about each interview it was sent (`answered`: 200, 400 or 404; a
# row riding with another interview's request has none). A state without it gains it seeded
# from `sent`, whose every row its own send confirmed before requests were coalesced.
SCHEMA_VERSION = 2
CORE_TABLES = frozenset({"sent", "contacts", "runs"})  # a database with none of them is not ours
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # survives kill -9; only power loss can undo
    "PRAGMA wal_autocheckpoint=20000",  # fold the WAL in rarely: no stalls
)
# How long to wait for another program's lock on the file. Sync-worker runs exclude each other
# with RunLock and WAL readers never block the writer, so a longer wait means another program
# (an sqlite3 shell, a backup) holds the file: say so instead of hanging.
BUSY_TIMEOUT_S = 1.0
ANSWERS_ASKED = 500  # interview ids looked up in `answered` per query
HOLDER_WAIT_S = (0.05, 10)  # a refused run waits up to 10 x 50 ms for the holder to sign in
# Each key's sends in arrival order (the last wins), the keys in order: the keyed tables' pages
# are then filled one after another, not one page a row (about half the time).
FOLD = (
    "INSERT OR REPLACE INTO sent SELECT interview_id, payload_sha256, contact, run_id, sent_at "
    "FROM journal ORDER BY interview_id, rowid",
    "INSERT OR REPLACE INTO contacts SELECT contact, context_json, run_id, sent_at "
    "FROM journal WHERE context_json IS NOT NULL ORDER BY contact, rowid",
    "DELETE FROM journal",
)
# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) that say "in use" and
# "cannot write here"; every other error reading a state means the file is not a usable state.
SQLITE_IN_USE = frozenset({5, 6})  # BUSY, LOCKED
SQLITE_CANNOT_WRITE = frozenset({3, 8, 10, 13, 14})  # PERM, READONLY, IOERR, FULL, CANTOPEN
FETCH_ROWS = 50_000  # rows read into columns at a time (planning's view of the state)
AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL (0: off, as 0.1.0 made)
# Free pages are handed back once they are more than this share of the file: below it, the next
# run's journal reuses them (a nightly run's few thousand rows), and moving pages costs writes.
RETURN_FREE_SHARE = 0.125


class SentRequest(Protocol):
    """What the state reads of a request sent (plan.request_table.Request)."""

    @property
    def interview_id(self) -> int: ...
    @property
    def contact(self) -> str: ...


class StateWriteError(Exception):
    """Confirmed sends could not be written to the state mid-run (a full disk, a file gone);
    the message is SQLite's. The recorder stops the run on it."""


class Success(NamedTuple):
    """A confirmed send, in the journal's column order."""

    interview_id: int
    sha256: str
    contact: str
    context_json: str | None  # None: no contact_context was sent
    run_id: str
    sent_at: str


def not_a_state(path: Path, why: str) -> ConfigError:
    """The one line for a state file this version cannot use, with how to move it aside."""
    aside = f"mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.bad')}"
    return ConfigError(
        f"state database {path}: not a sync-worker state this version can use ({why}); if "
        f"--state names the wrong file, correct it; if this is the damaged state, move it aside "
        f"({aside}) and re-run: a new state is made, and as it remembers nothing sent, "
        "unchanged rows are sent again"
    )


def database_error(path: Path, exc: sqlite3.Error) -> SyncWorkerError:
    """What an SQLite error on the state file means to the user."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in SQLITE_IN_USE:
        return LockedError(
            f"state database {path} is locked by another program (no sync-worker run holds "
            f"it: {exc}); wait until that program lets go of it, then re-run"
        )
    if code in SQLITE_CANNOT_WRITE:
        return ConfigError(
            f"state database {path}: cannot be used here ({exc}); --state needs a file in a "
            "folder you can write"
        )
    return not_a_state(path, str(exc))


@cache
def expected_columns() -> dict[str, frozenset[str]]:
    """Table -> columns, read from SCHEMA itself (one place for the layout)."""
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    db.executescript(history.SCHEMA)
    return _columns(db, _tables(db))


def _tables(db: sqlite3.Connection) -> frozenset[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return frozenset(name for (name,) in rows if not name.startswith("sqlite_"))


def _columns(db: sqlite3.Connection, tables: frozenset[str]) -> dict[str, frozenset[str]]:
    return {
        table: frozenset(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        for table in tables
    }


def check_schema(db: sqlite3.Connection, path: Path) -> frozenset[str]:
    """The tables of ours the file holds; ConfigError for a newer, foreign or damaged layout.
    An empty database (a new or 0-byte file) is a state with nothing in it yet."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"state database {path}: written by a newer sync-worker (schema {version}; this one "
            f"reads up to {SCHEMA_VERSION}): run the newer version, or use another --state"
        )
    tables = _tables(db)
    if tables and not tables & CORE_TABLES:
        listed = ", ".join(sorted(tables)[:5])
        raise ConfigError(
            f"state database {path}: another program's SQLite database (tables: {listed}), not "
            "a sync-worker state; give --state another path (this file is left alone)"
        )
    expected = expected_columns()
    ours = tables & expected.keys()
    for table, columns in sorted(_columns(db, ours).items()):
        missing = expected[table] - columns
        if missing:
            raise not_a_state(path, f"table {table} has no column {', '.join(sorted(missing))}")
    return ours


def refuse_hard_links(path: Path) -> None:
    """SQLite names its write-ahead log after the path it opens, so a run through a second
    name (a hard link) of the file misses the log a killed run left under the first name, and
    its writes then corrupt the file (seen: `database disk image is malformed`). A symlink is
    fine: SQLite follows it to the file's own name."""
    try:
        links = path.stat().st_nlink
    except OSError as exc:
        raise ConfigError(f"state database {path}: cannot be read ({exc.strerror})") from None
    if links > 1:
        raise ConfigError(
            f"state database {path}: the file has {links} names (hard links), and SQLite keeps "
            "its write-ahead log beside the name it is opened by, so a second name loses or "
            f"corrupts what was sent; remove the other names (find / -samefile "
            f"{shlex.quote(str(path))}) or use a symlink instead"
        )


def _connect_writable(path: Path) -> sqlite3.Connection:
    """A read-write connection on a checked, up-to-date state (created if new)."""
    create_private(path, "state database", "--state")
    refuse_hard_links(path)
    try:
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    try:
        _upgrade(db, path)
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.Error):
            raise database_error(path, exc) from None
        raise
    return db


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    had = check_schema(db, path)
    if not had and not _tables(db):  # a new file: before its first page
        db.execute(f"PRAGMA auto_vacuum = {AUTO_VACUUM_INCREMENTAL}")
    for pragma in PRAGMAS:
        db.execute(pragma)
    db.executescript(SCHEMA)
    db.executescript(history.SCHEMA)
    if "sent" in had and "answered" not in had:  # what an earlier version sent, itself
        with db:
            db.execute(
                "INSERT OR IGNORE INTO answered SELECT interview_id, 200, run_id, sent_at FROM sent"
            )
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Read what exists, change nothing."""
    if path.is_dir():
        raise ConfigError(f"state database {path}: it is a folder; --state needs a file name")
    refuse_hard_links(path)
    return _read_only_connection(path)


def _read_only_connection(path: Path) -> sqlite3.Connection:
    uri = path.absolute().as_uri() + "?mode=ro"  # as_uri escapes '?', '#' and '%' in the path
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None


class State:
    """One SQLite file; open it with `State.open` (read-write) or `State.read_only`."""

    def __init__(
        self,
        connection: sqlite3.Connection | None,
        writable: bool = False,
        path: Path = Path("state"),
        tables: frozenset[str] = frozenset(),
    ) -> None:
        self._db = connection
        self._writable = writable
        self._path = path  # for messages
        self._tables = tables  # ours that the file holds (a state from before the journal...)
        self._pending: list[Success] = []
        self._answers: list[tuple[int, int, str, str]] = []  # (interview, status, run, when)
        self._planned = history.Planned()  # changes of requests about to be sent
        self._unsure: list[tuple[str, str, str, str]] = []  # fields sent without an answer
        self._unsure_payloads: list[tuple[int, str]] = []  # (interview, contact) of those sends
        self._journal_rows = 0  # rows the last `_batches` read from the journal

    @classmethod
    def open(cls, path: Path) -> State:
        db = _connect_writable(path)
        state = cls(db, writable=True, path=path, tables=frozenset(expected_columns()))
        with state._errors_named():
            state.fold()  # what a killed run left in the journal
        return state

    @classmethod
    def read_only(cls, path: Path) -> State:
        """For `plan` and dry runs: read what exists, create and change nothing."""
        if not path.exists():
            return cls(None, path=path)
        db = _connect_read_only(path)
        state = cls(db, path=path)
        with state._errors_named():
            state._tables = check_schema(db, path)
        return state

    @contextmanager
    def _errors_named(self) -> Iterator[None]:
        """SQLite errors (a damaged page found late, a lock) as the user's one line."""
        try:
            yield
        except sqlite3.Error as exc:
            self._close_quietly()
            raise database_error(self._path, exc) from None
        except SyncWorkerError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        if self._db is not None:
            with suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def sent_hashes(self) -> dict[int, str]:
        return self._latest("sent", "interview_id, payload_sha256")

    def contexts(self) -> dict[str, Context]:
        texts = self._latest("contacts", "contact, context_json", "WHERE context_json IS NOT NULL")
        try:
            return {contact: json.loads(text) for contact, text in texts.items()}
        except (TypeError, ValueError):
            self._close_quietly()
            raise not_a_state(self._path, "a context that is not JSON") from None

    def unusable(self, why: str) -> ConfigError:
        """The one line for what planning found wrong in what this state remembers."""
        return not_a_state(self._path, why)

    def sends(self) -> Sent:
        """What `sent_hashes` holds, as columns (hashes as 32-byte digests): what planning
        reads. A million sends cost ~40 MB there, ~190 MB as a dict."""
        return self.sends_and_links(links=False)[0]

    def sends_and_links(self, links: bool = True) -> tuple[Sent, Links]:
        """`sends`, and (`links`) the contact key each interview was last sent as: what the
        state knows of each interview's contact. One pass over the table for both."""
        columns = "interview_id, payload_sha256" + (", contact" if links else "")
        found: list[list[pa.Array]] = [[], [], []]
        with self._wrong_types():
            for batch in self._batches("sent", columns, ""):
                found[0].append(pa.array(batch[0], pa.int64()))
                found[1].append(hex_digests(pa.array(batch[1], pa.string())))
                if links:
                    found[2].append(pa.array(batch[2], pa.string()))
        numbers = np.asarray(pa.chunked_array(found[0], pa.int64()).to_numpy(), dtype=np.int64)
        sent = Sent.latest(numbers, pa.chunked_array(found[1], DIGEST))
        if not links:
            return sent, Links.empty()
        return sent, Links.latest(numbers, pa.chunked_array(found[2], pa.string()))

    def remembered(self, with_times: bool = False) -> Remembered:
        """What `contexts` holds, as columns, the JSON texts unparsed; with the time of each
        contact's last confirmed send (the state's side of the freshness rule, SPEC section 6)
        when a notes file asks for it."""
        columns = "contact, context_json" + (", sent_at" if with_times else "")
        found: list[list[pa.Array]] = [[], [], []]
        with self._wrong_types():
            for batch in self._batches("contacts", columns, "WHERE context_json IS NOT NULL"):
                for part, values in zip(found, batch, strict=False):
                    part.append(pa.array(values, pa.string()))
        contacts, texts, times = (pa.chunked_array(part, pa.string()) for part in found)
        distinct = self._journal_rows == 0  # the keyed table holds each contact once
        return Remembered.latest(contacts, texts, times if with_times else None, distinct)

    def _batches(self, table: str, columns: str, where: str) -> Iterator[list[tuple[Any, ...]]]:
        """`_latest` as batches of columns: the keyed table's rows, then the journal's in
        arrival order (the caller keeps each key's last). FETCH_ROWS rows at a time, so the
        Python values in between never outnumber them, with the garbage collector off (they
        are no cycles, and its passes over them cost as much as reading them)."""
        if self._db is None:
            return
        queries = [f"SELECT {columns} FROM {table}"] if table in self._tables else []
        if "journal" in self._tables:  # none in a state from before it
            queries.append(f"SELECT {columns} FROM journal {where} ORDER BY rowid")
        self._journal_rows = 0
        with self._errors_named(), collector_off():
            for query in queries:
                cursor = self._db.execute(query)
                while rows := cursor.fetchmany(FETCH_ROWS):
                    self._journal_rows += len(rows) if "journal" in query else 0
                    yield list(zip(*rows, strict=True))

    @contextmanager
    def _wrong_types(self) -> Iterator[None]:
        """SQLite keeps any type in any column: a value of another type means a damaged state."""
        try:
            yield
        except (pa.ArrowException, TypeError, ValueError):
            self._close_quietly()
            raise not_a_state(self._path, "a value of the wrong type") from None

    def _latest(self, table: str, columns: str, where: str = "") -> dict[Any, Any]:
        """Pairs from a keyed table, with the sends not folded yet (a killed run's, or a running
        one's) laid over them in arrival order."""
        if self._db is None:
            return {}
        db = self._db
        with self._errors_named():
            pairs = (
                dict(db.execute(f"SELECT {columns} FROM {table}")) if table in self._tables else {}
            )
            if "journal" in self._tables:  # none in a state from before it
                pairs.update(db.execute(f"SELECT {columns} FROM journal {where} ORDER BY rowid"))
        return pairs

    def resolved(self) -> Links:
        """The contact the API named for each interview resolved so far, as `contact:<id>`."""
        if self._db is None or "resolved" not in self._tables:
            return Links.empty()
        query = f"SELECT interview_id, '{RESOLVED}' || contact_id FROM resolved"
        with self._errors_named(), self._wrong_types():
            rows = self._db.execute(query).fetchall()
        return Links.of(dict(rows))

    def remember_resolved(self, contacts: Mapping[int, int]) -> None:
        """The contacts the API named (interview id -> contact id), kept for good: the server
        never moves an interview to another contact."""
        if self._db is None or not self._writable or not contacts:
            return
        at = now_iso()
        with self._errors_named(), self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO resolved VALUES (?, ?, ?)",
                ((interview, contact, at) for interview, contact in contacts.items()),
            )

    def api_url(self) -> str | None:
        """The API base URL this state belongs to; None: not recorded yet (a new state, or one
        made before states recorded it)."""
        if self._db is None or "api" not in self._tables:
            return None
        with self._errors_named():
            row = self._db.execute("SELECT base_url FROM api").fetchone()
        return str(row[0]) if row else None

    def belongs_to(self, base_url: str) -> None:
        """Refuse another API's state (ConfigError, exit 2); a state that records none adopts
        this one when it is writable (a dry run or `plan` records nothing)."""
        url = canonical_url(base_url)
        recorded = self.api_url()
        if recorded is None:
            if self._db is not None and self._writable:
                with self._errors_named(), self._db:
                    self._db.execute("BEGIN")
                    self._db.execute("INSERT INTO api VALUES (1, ?, ?)", (url, now_iso()))
            return
        if canonical_url(recorded) != url:
            raise ConfigError(
                f"state database {self._path} belongs to the API at {recorded}, not {url}: "
                f"give --base-url {recorded} to use it, or another --state for {url} "
                "(without --state each API has a state of its own)"
            )

    def add(self, successes: list[Success]) -> None:
        """Queue confirmed sends; `flush` commits everything queued."""
        self._pending.extend(successes)

    def answered_by_api(self, interview_id: int, http_status: int, run_id: str, at: str) -> None:
        """Queue the API's own answer about an interview it was sent (200, 400, 404): one it
        confirmed exists, one it refused may not, so each is a better or worse choice to carry
        its contact's fields (coalesce.py); `flush` commits it."""
        self._answers.append((interview_id, http_status, run_id, at))

    def answers(self, ids: Ints) -> tuple[Ints, Ints]:
        """Of these interviews, those whose last own answer from the API was a 200, and a 400
        or 404; each sorted. Asked only for the requests a contact's fields may go with (a few
        a night), never for the whole state."""
        empty = np.zeros(0, dtype=np.int64)
        if self._db is None or not len(ids):
            return empty, empty
        if "answered" in self._tables:
            query = "SELECT interview_id, http_status FROM answered WHERE interview_id IN "
        elif "sent" in self._tables:  # not upgraded yet (`plan`, a dry run): as it would seed
            query = "SELECT interview_id, 200 FROM sent WHERE interview_id IN "
        else:
            return empty, empty
        wanted = np.unique(ids).tolist()
        rows: list[tuple[int, int]] = []
        with self._errors_named(), self._wrong_types():
            for start in range(0, len(wanted), ANSWERS_ASKED):
                part = wanted[start : start + ANSWERS_ASKED]
                marks = ", ".join("?" * len(part))
                rows += self._db.execute(f"{query}({marks})", part).fetchall()
        rows.sort()
        found = np.array([row[0] for row in rows], dtype=np.int64)
        statuses = np.array([row[1] for row in rows], dtype=np.int64)
        return found[statuses == 200], found[(statuses == 400) | (statuses == 404)]

    def flush(self) -> None:
        """Commit the queued sends to the journal, and their planned changes to the history as
        history rows: one append to each, a page or so per commit (and the API's answers queued).
        A failed write is a StateWriteError carrying SQLite's words."""
        if not (self._pending or self._answers) or self._db is None:
            return
        pending, self._pending = self._pending, []
        answers, self._answers = self._answers, []
        rows = self._planned.rows((s.interview_id, s.run_id, s.sent_at) for s in pending)
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?)", pending)
                if rows:
                    self._db.executemany(history.INSERT_HISTORY, rows)
                if answers:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO answered VALUES (?, ?, ?, ?)", answers
                    )
        except sqlite3.Error as exc:
            raise StateWriteError(str(exc)) from exc

    # The history (history.py). Without a state file there is none: reads find nothing, and
    # writes are the callers' to skip (a dry run opens the state read-only and writes nothing).

    def plan_history(self, run_id: str, changes: Mapping[int, tuple[Change, ...]]) -> None:
        """Planned changes of requests about to be sent, given before they are; each confirmed
        send's become history rows when the send is written to the journal (`flush`)."""
        if self._db is not None:
            self._planned.add(run_id, changes)

    def unconfirmed(self, run_id: str, interview_id: int) -> None:
        """A request of the run ended without a confirmed send: its planned changes go."""
        self._planned.forget(run_id, interview_id)

    def forget_payloads(self, contacts: Iterable[str]) -> None:
        """The payloads last sent through these contacts' interviews are no longer known to
        be what the server holds (a revert put their contact's fields back through one of
        them): the next run compares their fields instead of skipping them whole. Their
        contact stays remembered."""
        wanted = sorted(set(contacts))
        if self._db is None or not self._writable or not wanted:
            return
        with self._errors_named(), self._db:
            self._db.execute("BEGIN")
            _forget_payloads(self._db, [(None, contact) for contact in wanted])

    def knows_values(self) -> bool:
        """Whether any field's last value is kept (a first backfill's state keeps none)."""
        return history.knows_values(self._db)

    def last_values(self, keys: Iterable[str] | None = None) -> dict[FieldKey, str]:
        """The last value sent per field (of these contacts and interview ids only, if given)."""
        return history.last_values(self._db, keys)

    def prune_history(self, days: int, now: datetime | None = None) -> int:
        """Drop versions older than `days`; how many went."""
        return history.prune(self._db, days, now) if self._db is not None else 0

    def seen_notes(self) -> dict[str, str]:
        """Notes-file rows seen before: digest -> when first seen."""
        return history.seen_notes(self._db)

    def remember_notes(self, sightings: Iterable[tuple[str, str]]) -> None:
        if self._db is not None:
            history.remember_notes(self._db, sightings)

    def versions_of_run(self, run_id: str, repeats: bool = False) -> list[Version]:
        """A run's versions in the order confirmed; `repeats`: with the sends that carried a
        contact's value again through its other interviews (what a revert goes through)."""
        return history.of_run(self._db, run_id, repeats) if self._db is not None else []

    def later_write(
        self, run_id: str, key: FieldKey, through: Iterable[int]
    ) -> tuple[str, str] | None:
        """The last value a later run wrote to this field of the contact or interview it
        belongs to, under any key, and that run (None: none since)."""
        if self._db is None:
            return None
        return history.later_write(self._db, run_id, key, through)

    def was_pruned(self, run_id: str) -> bool:
        """True when pruning dropped some of this run's history."""
        return history.was_pruned(self._db, run_id) if self._db is not None else False

    def versions_of_contact(self, email: str) -> list[Version]:
        return history.of_contact(self._db, email) if self._db is not None else []

    def versions_of_interview(self, interview_id: int) -> list[Version]:
        return history.of_interview(self._db, interview_id) if self._db is not None else []

    def run_started_at(self, run_id: str) -> str | None:
        """When a run recorded in this state started; None: not recorded here."""
        return history.run_started_at(self._db, run_id) if self._db is not None else None

    def contact_of(self, interview_id: int) -> str | None:
        """The contact key an interview's sends last carried; None: never sent."""
        return history.contact_of(self._db, interview_id) if self._db is not None else None

    def fold(self) -> None:
        """Move the journal into the keyed tables, in arrival order (the last send wins), the
        history's new rows into the last values, and (a state an earlier version left after a
        kill) the journal's sends' planned changes into the history."""
        if self._db is None or not self._writable:
            return
        with self._db, collector_off():  # a row tuple per history row: no cycles
            self._db.execute("BEGIN")
            history.materialize(self._db)
            for statement in FOLD:
                self._db.execute(statement)
            history.fold(self._db)

    def run_started(self, run_id: str, started_at: str) -> None:
        """Bookkeeping of real runs only: a read-only state (a dry run) records nothing."""
        if self._db is not None and self._writable:
            self._db.execute(
                "INSERT INTO runs (run_id, started_at) VALUES (?, ?)", (run_id, started_at)
            )

    def run_finished(self, run_id: str, exit_code: int, summary: dict[str, Any]) -> None:
        self.flush()
        if self._db is not None and self._writable:
            self._db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary_json = ? WHERE run_id = ?",
                (now_iso(), exit_code, json.dumps(summary), run_id),
            )

    def unanswered(self, request: SentRequest, fields: Iterable[str], run_id: str) -> None:
        """A send got no answer: the server may hold it or not. When the state closes, the
        fields it carried and the payloads of its interview and its contact's are no longer
        taken as known, so the next run sends them again instead of skipping them."""
        for name in fields:
            key = request.contact if name in CONTACT_FIELDS else str(request.interview_id)
            self._unsure.append((level_of(name), key, name, run_id))
        self._unsure_payloads.append((request.interview_id, request.contact))

    def close(self) -> None:
        self.flush()
        self.fold()
        self._forget_unanswered()
        if self._db is not None:
            self._return_space()
            self._db.close()
            self._db = None

    def _forget_unanswered(self) -> None:
        unsure, self._unsure = self._unsure, []
        payloads, self._unsure_payloads = self._unsure_payloads, []
        if self._db is None or not self._writable or not payloads:
            return
        with self._errors_named(), self._db:
            self._db.execute("BEGIN")
            history.unsure(self._db, unsure)
            _forget_payloads(self._db, payloads)

    def _return_space(self) -> None:
        """Hand the pages the fold freed back to the file system, when they are many; a state
        made before auto_vacuum is rewritten once (VACUUM), which turns it on. Best effort: a
        busy file (another program reading it) is left as it is, for the next run."""
        if self._db is None or not self._writable:
            return
        db = self._db
        with suppress(sqlite3.Error):
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != AUTO_VACUUM_INCREMENTAL:
                db.execute(f"PRAGMA auto_vacuum = {AUTO_VACUUM_INCREMENTAL}")
                db.execute("VACUUM")
                return
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            if free > RETURN_FREE_SHARE * pages:
                # a script: through `execute`, sqlite3 steps the pragma once (one page freed)
                db.executescript("PRAGMA incremental_vacuum;")


def _forget_payloads(db: sqlite3.Connection, which: Iterable[tuple[int | None, str]]) -> None:
    """No payload last sent through these interviews, or any interview of these contacts,
    is taken as what the server holds ((interview or None, contact)); their contact stays
    remembered. Inside the caller's transaction."""
    pairs = list(which)
    for table in ("sent", "journal"):
        db.executemany(
            f"UPDATE {table} SET payload_sha256 = '' WHERE interview_id = ? OR contact = ?",
            pairs,
        )


class Holder(NamedTuple):
    """The run holding a state database, as the refused one names it."""

    pid: int | str
    run_id: str
    started_at: str


UNKNOWN_HOLDER = Holder("?", "?", "?")


class RunLock:
    """One run at a time per state database: an flock on the database file itself, so every
    path that names it (a symlink, a hard link, `x/../state.sqlite`) meets the same lock. The
    kernel releases it when the holder dies, so a lock left by a killed run never blocks the
    next one. The holder signs in to the `lock_holder` table, so a refused run can name it.

    Why flock on the file and not a `<state>.lock` beside it: a lock file named after the path
    given is one lock per name (two runs through a symlink sent 139 of 200 rows twice), and
    even one named after the resolved path misses hard links. On Linux an flock is independent
    of the POSIX locks SQLite takes on the same file (except on NFS, which emulates flock with
    them). Closing any descriptor of the file drops this process's POSIX locks, so `release`
    must come after the State is closed, as the pipeline does.
    """

    def __init__(self, state_path: Path) -> None:
        self.state_path = state_path
        self._fd: int | None = None  # held for the whole run: the lock lives with it

    def acquire(self, run_id: str) -> None:
        fd = open_private(self.state_path, "state database", "--state", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(self._held_message(read_holder(self.state_path))) from None
        self._fd = fd
        try:
            _sign(self.state_path, Holder(os.getpid(), run_id, now_iso()))
        except BaseException:
            self.release()
            raise

    def _held_message(self, holder: Holder) -> str:
        return (
            f"another run holds the state database {self.state_path}: run {holder.run_id}, "
            f"pid {holder.pid}, started {holder.started_at}; wait for it to finish, or use "
            "another --state"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with suppress(SyncWorkerError):  # a state that cannot be signed out of was reported
            _sign(self.state_path, None)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _sign(path: Path, holder: Holder | None) -> None:
    """Sign the holder in (or out, with None) in its own short transaction."""
    db = _connect_writable(path)
    try:
        with db:
            db.execute("BEGIN")
            db.execute("DELETE FROM lock_holder")
            if holder is not None:
                db.execute("INSERT INTO lock_holder VALUES (1, ?, ?, ?)", holder)
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    finally:
        db.close()


def read_holder(path: Path) -> Holder:
    """Who holds the lock. A holder that took it a moment ago may not have signed in yet."""
    pause, tries = HOLDER_WAIT_S
    for _ in range(tries):
        holder = _read_signed(path)
        if holder is not None:
            return holder
        time.sleep(pause)
    return UNKNOWN_HOLDER


def _read_signed(path: Path) -> Holder | None:
    """Read through any name of the file: the holder signs in with the only connection it has
    open, whose close folds the write-ahead log into the file itself."""
    try:
        db = _read_only_connection(path)
        try:
            row = db.execute("SELECT pid, run_id, started_at FROM lock_holder").fetchone()
        finally:
            db.close()
    except (sqlite3.Error, SyncWorkerError):
        return None
    return Holder(*row) if row is not None else None
