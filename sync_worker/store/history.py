"""The history of the values runs wrote (SPEC section 12), kept in the state database.

For every field a confirmed send changed (a contact's notes and name, an interview's objective)
a `history` row holds the value before (canonical JSON, NULL when never known), the value sent,
the run, the time and where the value before came from.

The values before are known at plan time, so a run holds the planned changes of each chunk of
requests (`Planned`) from before it sends them, and writes a confirmed send's history rows in
the same commit as its journal row, in the order the server confirmed them: appended to a plain
table, with nothing to join or sort when the run ends, and a kill loses no more of the history
than of the journal. Only requests about to be sent are planned: a run stopped early holds
little. A planned change whose send was never confirmed leaves no trace. (Earlier versions
wrote the planned changes to a `planned` table and joined them with the journal when it was
folded; a state such a run left after a kill is still folded so.)

`field_values` remembers the last value sent per field, so a later run knows its values before
and `revert` can tell whether a later run wrote something else since. It is folded from the
history when the state is closed (or next opened, after a kill), like the journal: an append per
send, not an upsert. A row with `changed = 0` only moves that last value (a value equal to the
notes file's, which the state had not seen); it is no version and is never shown or reverted.
A row with `changed = 2` (REPEAT) is a contact's value carried again, in the same run, through
another of its interviews: no version either, but it records that the run wrote through that
interview, so a revert puts the value back through it too (the server may keep that
interview's contact apart from the one the export named).

Pruning records the runs it took history from (`pruned_runs`), so a revert of such a run is
refused for that reason, whatever `history_days` the revert itself is given.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sized
from datetime import datetime
from typing import NamedTuple

from sync_worker.clock import days_ago, now_iso
from sync_worker.fields import (
    CONTACT_FIELDS,
    CONTEXT,
    RESOLVED,
    SENT_FIELDS,
    contact_key,
    email_key,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    level TEXT NOT NULL,
    key TEXT NOT NULL,
    interview_id INTEGER NOT NULL,
    field TEXT NOT NULL,
    before_json TEXT,
    sent_json TEXT NOT NULL,
    source TEXT NOT NULL,
    changed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS planned (
    run_id TEXT NOT NULL,
    interview_id INTEGER NOT NULL,
    level TEXT NOT NULL,
    key TEXT NOT NULL,
    field TEXT NOT NULL,
    before_json TEXT,
    sent_json TEXT NOT NULL,
    source TEXT NOT NULL,
    changed INTEGER NOT NULL,
    shared INTEGER NOT NULL,
    PRIMARY KEY (run_id, interview_id, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS field_values (
    level TEXT NOT NULL,
    key TEXT NOT NULL,
    field TEXT NOT NULL,
    value_json TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (level, key, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_folded (upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pruned_runs (
    run_id TEXT PRIMARY KEY,
    pruned_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notes_seen (
    digest TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL
) WITHOUT ROWID;
"""

NOTES_FILE = "notes_file"  # the value before came from the --existing-notes file
EARLIER_SEND = "earlier_send"  # from what this worker itself sent earlier
UNKNOWN = "unknown"  # never known: a revert cannot put it back

VERSION, MOVED, REPEAT = 1, 0, 2  # the `changed` column: what a history row is
# A field's last value when a send of it got no answer (the server may hold it, or not): no
# value, so the next run sends the field again and knows no value before it.
UNSURE = ""
FieldKey = tuple[str, str, str]  # (level, key, field): key is the contact or the interview id


def level_of(field: str) -> str:
    return "contact" if field in CONTACT_FIELDS else "interview"


class Change(NamedTuple):
    """One field of one planned request: known before the send, recorded once confirmed."""

    level: str
    key: str  # the contact (email, or interview:<id>) or the interview id, as text
    interview_id: int  # the interview whose PATCH carries it
    field: str
    before_json: str | None
    sent_json: str
    source: str
    changed: int  # 1: a version (shown, revertible); 0: only moves the last value
    shared: bool  # several requests of the plan send this field (a contact's interviews)


class Version(NamedTuple):
    """A history row as read back."""

    run_id: str
    at: str
    level: str
    key: str
    interview_id: int
    field: str
    before_json: str | None
    sent_json: str
    source: str


HistoryRow = tuple[str, str, str, str, int, str, str | None, str, str, int]  # `history`'s columns
INSERT_HISTORY = "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


class Planned:
    """Planned changes of requests about to be sent, held until their sends are confirmed, and
    turned into history rows as the confirmed sends are written to the journal (`rows`, in the
    same commit): a field several sends of one run share (a contact's interviews) chains, its
    value before being what the run itself wrote just before (from EARLIER_SEND, a version),
    and a send that wrote the same value again is a REPEAT row. A planned change whose send is
    never confirmed leaves no trace."""

    __slots__ = ("_changes", "_written")

    def __init__(self) -> None:
        # (run, interview) -> its request's changes, in field order
        self._changes: dict[tuple[str, int], tuple[Change, ...]] = {}
        # run -> the value it last wrote of each field its sends share
        self._written: dict[str, dict[FieldKey, str]] = {}

    def __len__(self) -> int:
        return len(self._changes)

    def add(self, run_id: str, changes: Mapping[int, tuple[Change, ...]]) -> None:
        held = self._changes
        for interview_id, found in changes.items():
            if found:
                held[run_id, interview_id] = tuple(sorted(found, key=_field))

    def forget(self, run_id: str, interview_id: int) -> None:
        """A request that ended without a confirmed send: its changes go."""
        self._changes.pop((run_id, interview_id), None)

    def rows(self, sends: Iterable[tuple[int, str, str]]) -> list[HistoryRow]:
        """The history rows of confirmed sends ((interview id, run, time), in arrival order)."""
        held = self._changes
        found: list[HistoryRow] = []
        if not held:
            return found
        append = found.append
        for interview_id, run_id, at in sends:
            changes = held.pop((run_id, interview_id), None)
            if changes is None:
                continue
            written = self._written.get(run_id)
            for c in changes:
                before, source, changed = c.before_json, c.source, c.changed
                if c.shared:
                    if written is None:
                        written = self._written[run_id] = {}
                    field_key = (c.level, c.key, c.field)
                    prior = written.get(field_key)
                    written[field_key] = c.sent_json
                    if prior is not None:
                        before, source = prior, EARLIER_SEND
                        changed = REPEAT if prior == c.sent_json else VERSION
                append(
                    (
                        run_id,
                        at,
                        c.level,
                        c.key,
                        interview_id,
                        c.field,
                        before,
                        c.sent_json,
                        source,
                        changed,
                    )
                )
        return found


def _field(change: Change) -> str:
    return change.field


# A state a run of an earlier version left after a kill holds planned changes in `planned` and
# its confirmed sends in the journal: joined into history rows, in arrival order, chained as
# `Planned.rows` chains them.
MATERIALIZE = f"""
INSERT INTO history
SELECT run_id, at, level, key, interview_id, field,
       CASE WHEN prior IS NULL THEN before_json ELSE prior END, sent_json,
       CASE WHEN prior IS NULL THEN source ELSE '{EARLIER_SEND}' END,
       CASE WHEN prior IS NULL THEN changed WHEN prior = sent_json THEN {REPEAT} ELSE 1 END
FROM (
    SELECT j.rowid AS arrival, j.run_id, j.sent_at AS at, p.level, p.key, p.interview_id,
           p.field, p.before_json, p.sent_json, p.source, p.changed,
           CASE WHEN p.shared THEN lag(p.sent_json) OVER (
               PARTITION BY j.run_id, p.level, p.key, p.field, p.shared ORDER BY j.rowid
           ) END AS prior
    FROM journal AS j JOIN planned AS p
    ON p.run_id = j.run_id AND p.interview_id = j.interview_id
)
ORDER BY arrival, field
"""


def materialize(db: sqlite3.Connection) -> None:
    """The planned changes an earlier version wrote, joined with the journal's confirmed sends
    into history rows (inside the caller's transaction, before the journal is emptied)."""
    if db.execute("SELECT EXISTS (SELECT 1 FROM planned)").fetchone()[0]:
        db.execute(MATERIALIZE)
        db.execute("DELETE FROM planned")  # that run is over: what was not confirmed was not sent


def fold(db: sqlite3.Connection) -> None:
    """Move the values of the rows appended since the last fold into `field_values` (inside the
    caller's transaction)."""
    upto = _folded_upto(db)
    db.execute(  # each field's rows in the order written (the last wins), the fields in order
        "INSERT OR REPLACE INTO field_values SELECT level, key, field, sent_json, run_id, at "
        "FROM history WHERE rowid > ? ORDER BY level, key, field, rowid",
        (upto,),
    )
    last = db.execute("SELECT coalesce(max(rowid), 0) FROM history").fetchone()[0]
    db.execute("DELETE FROM history_folded")
    db.execute("INSERT INTO history_folded VALUES (?)", (max(last, upto),))


def _folded_upto(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT upto FROM history_folded").fetchone()
    return int(row[0]) if row else 0


def has_tables(db: sqlite3.Connection) -> bool:
    """False for a state written before history existed (opened read-only)."""
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'"
    return db.execute(query).fetchone() is not None


def last_values(
    db: sqlite3.Connection | None, keys: Iterable[str] | None = None
) -> dict[FieldKey, str]:
    """The last value sent per field: folded, with the rows not folded yet laid over. A contact's
    context sent before history existed counts too (the state's contacts and journal). `keys`:
    only these contacts and interview ids (a nightly run reads its own, not the whole state)."""
    if db is None or not has_tables(db) or not _any_values(db):
        return {}
    join = _only(db, keys)
    contexts = (
        f"SELECT 'contact', t.contact, '{CONTEXT}', t.context_json FROM contacts AS t"
        + join.format(column="contact"),
        f"SELECT 'contact', t.contact, '{CONTEXT}', t.context_json FROM journal AS t"
        + join.format(column="contact")
        + " WHERE t.context_json IS NOT NULL ORDER BY t.rowid",
    )
    values: dict[FieldKey, str] = {}
    for query in contexts:
        values.update(((lv, k, f), v) for lv, k, f, v in db.execute(query))
    folded = "SELECT t.level, t.key, t.field, t.value_json FROM field_values AS t"
    values.update(((lv, k, f), v) for lv, k, f, v in db.execute(folded + join.format(column="key")))
    unfolded = (
        "SELECT t.level, t.key, t.field, t.sent_json FROM history AS t"
        + join.format(column="key")
        + " WHERE t.rowid > ? ORDER BY t.rowid"
    )
    values.update(((lv, k, f), v) for lv, k, f, v in db.execute(unfolded, (_folded_upto(db),)))
    return {key: value for key, value in values.items() if value != UNSURE}


def unsure(db: sqlite3.Connection, fields: Iterable[tuple[str, str, str, str]]) -> None:
    """These fields' last values ((level, key, field, run)) are no longer known: a send of them
    got no answer. Marked UNSURE after the fold, so no earlier value stands in for them."""
    at = now_iso()
    db.executemany(
        "INSERT OR REPLACE INTO field_values VALUES (?, ?, ?, ?, ?, ?)",
        ((level, key, name, UNSURE, run_id, at) for level, key, name, run_id in fields),
    )


def knows_values(db: sqlite3.Connection | None) -> bool:
    return db is not None and has_tables(db) and _any_values(db)


def _any_values(db: sqlite3.Connection) -> bool:
    """Whether any last value is kept: a first backfill's keys (~3 us each to look up) are
    then not looked up at all."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM field_values) OR EXISTS (SELECT 1 FROM contacts) "
        "OR EXISTS (SELECT 1 FROM journal WHERE context_json IS NOT NULL) "
        "OR EXISTS (SELECT 1 FROM history WHERE rowid > ?)"
    )
    return bool(db.execute(query, (_folded_upto(db),)).fetchone()[0])


def _only(db: sqlite3.Connection, keys: Iterable[str] | None) -> str:
    """A join that keeps the rows of `keys` (in a temporary table), or none."""
    if keys is None:
        return ""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (key TEXT PRIMARY KEY) WITHOUT ROWID")
    with db:  # one transaction, not one per key: 1.0 s of CPU for a 100,000-row run, now 0.4
        db.execute("BEGIN")
        db.execute("DELETE FROM temp.wanted")
        db.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?)", ((k,) for k in keys))
    return " JOIN temp.wanted AS w ON w.key = t.{column}"


def _versions(
    db: sqlite3.Connection, where: str, args: tuple[object, ...], kinds: str = "1"
) -> list[tuple[int, Version]]:
    """(rowid, version): the rowid is the order written, which breaks ties of time."""
    if not has_tables(db):
        return []
    query = (
        "SELECT rowid, run_id, at, level, key, interview_id, field, before_json, sent_json, "
        f"source FROM history WHERE changed IN ({kinds}) AND ({where}) ORDER BY rowid"
    )
    return [(row[0], Version(*row[1:])) for row in db.execute(query, args)]


def of_run(db: sqlite3.Connection, run_id: str, repeats: bool = False) -> list[Version]:
    """The versions a run wrote, in the order they were confirmed (with its REPEAT rows)."""
    kinds = f"{VERSION}, {REPEAT}" if repeats else str(VERSION)
    return [v for _rowid, v in _versions(db, "run_id = ?", (run_id,), kinds)]


def _marks(values: Sized) -> str:
    return ", ".join("?" * len(values))


def of_contact(db: sqlite3.Connection, email: str) -> list[Version]:
    """A contact's versions (by email, and under any key its interviews were sent as since)
    and those of its interviews' objectives, newest first."""
    key = email_key(email.strip())
    interviews = _interviews_of(db, [key])
    keys = sorted({key, *_keys_of(db, interviews)})
    return _contact_versions(db, keys, interviews)


def of_interview(db: sqlite3.Connection, interview_id: int) -> list[Version]:
    """An interview's versions (its own objective, not its contact's other interviews'), and
    those of its contact (under every key it was sent as, so any interview of the contact finds
    them), newest first."""
    keys = sorted({contact_key("", interview_id), *_keys_of(db, [interview_id])})
    return _contact_versions(db, keys, [interview_id], others=False)


def _contact_versions(
    db: sqlite3.Connection, keys: list[str], interviews: list[int], others: bool = True
) -> list[Version]:
    """The contact's versions, and the objectives of `interviews` (`others`: and of every
    interview that carried the contact's fields)."""
    found = _versions(db, f"level = 'contact' AND key IN ({_marks(keys)})", tuple(keys))
    carriers = (v.interview_id for _r, v in found) if others else ()
    ids = sorted({*interviews, *carriers})
    found += _versions(db, f"level = 'interview' AND interview_id IN ({_marks(ids)})", tuple(ids))
    return _newest_first(found)


def _newest_first(found: list[tuple[int, Version]]) -> list[Version]:
    """Sends in the order written, newest first (times of two sends may tie to the
    millisecond); the fields of one send in the API's order."""
    sends: dict[tuple[str, int, str], int] = {}
    for rowid, v in found:
        send = (v.run_id, v.interview_id, v.at)
        sends[send] = max(rowid, sends.get(send, 0))
    order = {name: index for index, name in enumerate(SENT_FIELDS)}
    return [
        v
        for _rowid, v in sorted(
            found,
            key=lambda pair: (
                -sends[(pair[1].run_id, pair[1].interview_id, pair[1].at)],
                order.get(pair[1].field, 0),
            ),
        )
    ]


def _interviews_of(db: sqlite3.Connection, keys: list[str]) -> list[int]:
    """The interviews sent as these contact keys (in the history, or as last sent)."""
    marks = _marks(keys)
    rows = db.execute(
        f"SELECT interview_id FROM history WHERE level = 'contact' AND key IN ({marks}) "
        f"UNION SELECT interview_id FROM sent WHERE contact IN ({marks})",
        (*keys, *keys),
    )
    return sorted(row[0] for row in rows)


def _keys_of(db: sqlite3.Connection, interviews: list[int]) -> set[str]:
    """Every contact key these interviews were sent as, and the contacts the API named."""
    marks = _marks(interviews)
    rows = db.execute(
        f"SELECT key FROM history WHERE level = 'contact' AND interview_id IN ({marks}) "
        f"UNION SELECT contact FROM sent WHERE interview_id IN ({marks})",
        (*interviews, *interviews),
    )
    keys = {str(row[0]) for row in rows}
    if _has(db, "resolved"):
        rows = db.execute(
            f"SELECT '{RESOLVED}' || contact_id FROM resolved WHERE interview_id IN ({marks})",
            tuple(interviews),
        )
        keys.update(str(row[0]) for row in rows)
    return keys


def _has(db: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (table,)).fetchone() is not None


def later_write(
    db: sqlite3.Connection, run_id: str, key: FieldKey, through: Iterable[int]
) -> tuple[str, str] | None:
    """The last value written to a field after `run_id` last wrote it, and the run that wrote
    it, judged on what the field belongs to: an interview's by its id; a contact's under its
    key, or any key its interviews (`through`: those the run wrote it through) were sent as, or
    through any of them. So a later run that gave the contact another email (or none, or the
    API's contact) still counts."""
    level, name, field = key
    last = db.execute(
        "SELECT max(rowid) FROM history WHERE run_id = ? AND level = ? AND key = ? AND field = ?",
        (run_id, level, name, field),
    ).fetchone()[0]
    if last is None:
        return None
    interviews = sorted(set(through))
    keys = sorted({name, *_keys_of(db, interviews)}) if level == "contact" else [name]
    row = db.execute(
        "SELECT sent_json, run_id FROM history WHERE rowid > ? AND level = ? AND field = ? AND "
        f"(key IN ({_marks(keys)}) OR interview_id IN ({_marks(interviews)})) "
        "ORDER BY rowid DESC LIMIT 1",
        (last, level, field, *keys, *interviews),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def was_pruned(db: sqlite3.Connection, run_id: str) -> bool:
    if not _has(db, "pruned_runs"):
        return False
    query = "SELECT 1 FROM pruned_runs WHERE run_id = ?"
    return db.execute(query, (run_id,)).fetchone() is not None


def run_started_at(db: sqlite3.Connection, run_id: str) -> str | None:
    """When a run started; None: no such run in this state (or a state without history)."""
    if not has_tables(db):
        return None
    row = db.execute("SELECT started_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return str(row[0]) if row is not None else None


def contact_of(db: sqlite3.Connection, interview_id: int) -> str | None:
    """The contact key an interview's sends last carried: its history's, else the state's."""
    row = (
        db.execute(
            "SELECT key FROM history WHERE level = 'contact' AND interview_id = ? "
            "ORDER BY rowid DESC LIMIT 1",
            (interview_id,),
        ).fetchone()
        or db.execute("SELECT contact FROM sent WHERE interview_id = ?", (interview_id,)).fetchone()
    )
    return str(row[0]) if row else None


def prune(db: sqlite3.Connection, days: int, now: datetime | None = None) -> int:
    """Drop versions older than `days` (their last values stay in `field_values`). Folds first,
    so no value is dropped before it is remembered."""
    text = days_ago(days, now)
    with db:
        db.execute("BEGIN")
        fold(db)
        db.execute(
            "INSERT OR IGNORE INTO pruned_runs SELECT DISTINCT run_id, ? FROM history WHERE at < ?",
            (now_iso(), text),
        )
        deleted = db.execute("DELETE FROM history WHERE at < ?", (text,)).rowcount
        # rowids are max + 1: with the newest rows gone they would be reused below the mark
        last = db.execute("SELECT coalesce(max(rowid), 0) FROM history").fetchone()[0]
        db.execute("UPDATE history_folded SET upto = ?", (last,))
    return int(deleted)


def seen_notes(db: sqlite3.Connection | None) -> dict[str, str]:
    """Notes-file rows seen before: digest of (contact, notes) -> when first seen."""
    if db is None or not has_tables(db):
        return {}
    return dict(db.execute("SELECT digest, first_seen FROM notes_seen"))


def remember_notes(db: sqlite3.Connection, sightings: Iterable[tuple[str, str]]) -> None:
    """Record notes-file rows not seen before (the first sighting's time is kept)."""
    with db:
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO notes_seen VALUES (?, ?)", list(sightings))
