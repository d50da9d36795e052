"""History (SPEC section 12): what runs changed, shown newest first, kept for history_days."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import SandboxServer, cli_env, run_args, run_cli, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker.merger import canonical
from sync_worker.plan.changes import fields_of
from sync_worker.store import history
from sync_worker.store.history import Change
from sync_worker.store.state import State, Success

HEADER = ["interview_id", "contact_email", "contact_name", "objective", "contact_context"]


def sync(tmp_path: Path, server: SandboxServer, source: str, ledger: str, *args: str) -> None:
    result = run_cli(*run_args(server, *args, ledger=ledger, source=source), cwd=tmp_path)
    assert result.code == 0, result.stderr


def show(tmp_path: Path, *args: str) -> str:
    result = run_cli(
        "history", *args, "--state", "state.sqlite", cwd=tmp_path, env=cli_env(HINDSIGHT_API_KEY="")
    )
    assert result.code == 0, result.stderr
    return result.stdout


def test_history_shows_each_version_newest_first(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "one.csv", HEADER, [[5, "ana@x.com", "Ana", "Intro", "first"]])
    write_csv(tmp_path / "two.csv", HEADER, [[5, "ana@x.com", "Ana", "Pricing", "second"]])
    sync(tmp_path, sandbox, "one.csv", "one.csv.l.csv")
    sync(tmp_path, sandbox, "two.csv", "two.csv.l.csv")
    sync(tmp_path, sandbox, "two.csv", "again.csv.l.csv", "--force")  # same values: no version

    versions = json.loads(show(tmp_path, "--interview", "5", "--json"))
    assert [(v["field"], v["before"], v["sent"], v["source"]) for v in versions] == [
        ("objective", "Intro", "Pricing", "earlier_send"),
        ("contact_context", "first", "second", "earlier_send"),
        ("contact_name", None, "Ana", "unknown"),
        ("objective", None, "Intro", "unknown"),
        ("contact_context", None, "first", "unknown"),
    ]
    assert json.loads(show(tmp_path, "--email", "ANA@x.com ", "--json")) == versions

    text = show(tmp_path, "--email", " ana@x.com ")
    assert text.splitlines()[0] == "history of contact ana@x.com: 5 versions, newest first"
    assert '    sent:   "Pricing"' in text and '    before: "Intro"  [earlier send]' in text
    assert "    before: unknown  [unknown]" in text
    assert "no history for interview 6" in show(tmp_path, "--interview", "6")


def test_old_versions_are_pruned_at_the_end_of_a_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "one.csv", HEADER, [[5, "", "Ana", "", ""]])
    sync(tmp_path, sandbox, "one.csv", "one.csv.l.csv")
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        db.execute("UPDATE history SET at = '2020-01-01T00:00:00.000Z'")
    (tmp_path / "keep.toml").write_text("[state]\nhistory_days = 30\n")
    write_csv(tmp_path / "two.csv", HEADER, [[5, "", "Bo", "", ""]])
    sync(tmp_path, sandbox, "two.csv", "two.csv.l.csv", "--config", "keep.toml")
    versions = json.loads(show(tmp_path, "--interview", "5", "--json"))
    assert [(v["before"], v["sent"]) for v in versions] == [("Ana", "Bo")]  # the old one went


def change(field: str, sent: str, shared: bool = True) -> Change:
    return Change("contact", "ana@x.com", 1, field, '"old"', sent, "earlier_send", 1, shared)


HistoryRow = tuple[str, str, str, str, int, str, str | None, str, str, int]


def row_of(run_id: str, at: str, c: Change) -> HistoryRow:
    return (
        run_id,
        at,
        c.level,
        c.key,
        c.interview_id,
        c.field,
        c.before_json,
        c.sent_json,
        c.source,
        c.changed,
    )


def insert(db: sqlite3.Connection, rows: list[HistoryRow]) -> None:
    db.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def chained(sends: list[tuple[str, str, list[Change]]]) -> list[HistoryRow]:
    """The history rows of confirmed sends (run, time, planned changes), in arrival order: a
    field several sends of a run share takes the run's previous value as its value before, and
    one written again is a repeat (changed 2: no version, but the interview it went through is
    known)."""
    written: dict[tuple[str, str, str, str], str] = {}
    rows = []
    for run_id, at, changes in sends:
        for c in sorted(changes, key=lambda c: c.field):
            if c.shared:
                prior = written.get((run_id, c.level, c.key, c.field))
                written[run_id, c.level, c.key, c.field] = c.sent_json
                if prior == c.sent_json:
                    c = c._replace(before_json=prior, source="earlier_send", changed=2)
                elif prior is not None:
                    c = c._replace(before_json=prior, source="earlier_send", changed=1)
            rows.append(row_of(run_id, at, c))
    return rows


def materialized(tmp_path: Path, sends: list[tuple[str, str, list[Change]]]) -> list[HistoryRow]:
    """The same sends planned and journaled in a real state, then folded into its history."""
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "state.sqlite"  # a new one for each example
    state = State.open(path)
    by_run: dict[str, dict[int, tuple[Change, ...]]] = {}
    for run_id, _at, changes in sends:
        by_run.setdefault(run_id, {})[changes[0].interview_id] = tuple(changes)
    for run_id, planned in by_run.items():
        state.plan_history(run_id, planned)
    state.add([Success(c[0].interview_id, "", "", None, run_id, at) for run_id, at, c in sends])
    state.close()  # flushes the sends to the journal, with their history rows, and folds it
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM history ORDER BY rowid").fetchall()


def left_by_an_earlier_version(
    tmp_path: Path, sends: list[tuple[str, str, list[Change]]]
) -> list[HistoryRow]:
    """The same sends as a run of an earlier version left them when killed: planned changes
    in `planned`, confirmed sends in the journal; the next open folds them into history rows."""
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "state.sqlite"
    State.open(path).close()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT OR REPLACE INTO planned VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run_id,
                    c.interview_id,
                    c.level,
                    c.key,
                    c.field,
                    c.before_json,
                    c.sent_json,
                    c.source,
                    c.changed,
                    int(c.shared),
                )
                for run_id, _at, changes in sends
                for c in changes
            ],
        )
        db.executemany(
            "INSERT INTO journal VALUES (?, '', '', NULL, ?, ?)",
            [(c[0].interview_id, run_id, at) for run_id, at, c in sends],
        )
    State.open(path).close()  # folds what the killed run left
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM history ORDER BY rowid").fetchall()


def test_a_contacts_interviews_chain_their_versions(tmp_path: Path) -> None:
    sends = [
        ("r1", "t1", [change("contact_context", '"a"')]),
        ("r1", "t2", [change("contact_context", '"a"')._replace(interview_id=2)]),
        ("r1", "t3", [change("contact_context", '"b"')._replace(interview_id=3)]),
    ]
    rows = materialized(tmp_path, sends)
    assert [(r[4], r[6], r[7], r[8]) for r in rows] == [
        (1, '"old"', '"a"', "earlier_send"),
        (2, '"a"', '"a"', "earlier_send"),  # the second interview wrote nothing new: a repeat
        (3, '"a"', '"b"', "earlier_send"),
    ]
    assert rows == chained(sends) == left_by_an_earlier_version(tmp_path, sends)


SENDS = st.lists(
    st.tuples(
        st.sampled_from(["r1", "r2"]),
        st.sampled_from(["contact:a", "contact:b", "interview:7"]),
        st.sets(st.sampled_from(["contact_context", "contact_name", "objective"]), min_size=1),
        st.sampled_from(['"x"', '"y"', '{"k":"v"}']),
        st.booleans(),
        st.sampled_from(["unknown", "notes_file", "earlier_send"]),
    ),
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(SENDS)
def test_the_history_rows_chain_as_the_python_loop_and_the_earlier_statement(
    tmp_path: Path, drawn: list[tuple[str, str, set[str], str, bool, str]]
) -> None:
    """Two runs' sends, their fields shared or not, values repeated or not, in any arrival
    order: the rows written with the journal, and those the fold makes of what a killed run of
    an earlier version left, have the values before and order the loop gives."""
    sends = []
    for interview_id, (run_id, key, fields, sent, shared, source) in enumerate(drawn, 1):
        changes = [
            Change(
                "contact",
                key,
                interview_id,
                name,
                None if source == "unknown" else '"before"',
                sent,
                source,
                int(sent != '"x"'),
                shared,
            )
            for name in sorted(fields)
        ]
        sends.append((run_id, f"t{interview_id}", changes))
    expected = chained(sends)
    assert materialized(tmp_path, sends) == expected
    assert left_by_an_earlier_version(tmp_path, sends) == expected


def test_pruning_keeps_the_last_values_and_the_fold_mark_sound(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    state = State.open(path)
    db = sqlite3.connect(path, isolation_level=None)  # the history rows, written as a fold would
    old = row_of("r1", "2020-01-01T00:00:00.000Z", change("contact_name", '"Ana"'))
    insert(db, [old])
    assert state.prune_history(90, datetime.now(UTC)) == 1
    assert state.last_values() == {("contact", "ana@x.com", "contact_name"): '"Ana"'}
    new = row_of("r2", datetime.now(UTC).isoformat(), change("contact_name", '"Bo"'))
    insert(db, [new])  # its rowid restarts at 1, below the old mark
    assert state.last_values() == {("contact", "ana@x.com", "contact_name"): '"Bo"'}
    history.fold(db)
    assert db.execute("SELECT value_json FROM field_values").fetchall() == [('"Bo"',)]
    assert state.prune_history(90, datetime.now(UTC) + timedelta(days=1)) == 0
    db.close()
    state.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), JSON_VALUES, max_size=4))
def test_a_bodys_fields_are_cut_as_each_value_would_be_serialised(body: dict[str, Any]) -> None:
    """The changes a run plans take each field's canonical JSON from the body's own text (no
    value serialised again): it must be what `canonical` gives for that value alone, whatever
    the value holds (quotes, braces and commas in text, nesting, numbers)."""
    expected = [(name, canonical(value)) for name, value in sorted(body.items())]
    assert fields_of(canonical(body)) == expected
