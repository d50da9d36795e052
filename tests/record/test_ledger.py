from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from helpers import (
    SandboxServer,
    assert_ledger_rows,
    assert_one_line,
    run_against,
    write_csv,
    write_line,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker.errors import ConfigError
from sync_worker.logs import register_secret
from sync_worker.record.ledger import COLUMNS, Ledger, Result, Where, escape_formula, read_ledger

LINE = {
    "run_id": "r1",
    "source_file": "in.csv",
    "source_row": 3,
    "interview_id": "42",
    "contact_email": "a@x.com",
    "status": "failed",
    "http_status": 404,
    "error_code": "not_found",
    "error_message": "Interview request not found",
    "attempts": 1,
    "merge": "off",
    "payload_sha256": "ab" * 32,
    "finished_at": "2026-11-29T10:00:00.000Z",
    "duration_ms": 12,
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=HYPERLINK(1)", "'=HYPERLINK(1)"),
        ("+1", "'+1"),
        ("-5", "'-5"),
        ("@SUM", "'@SUM"),
        ("\tx", "'\tx"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("", ""),
    ],
    ids=["equals", "plus", "minus", "at", "tab", "plain", "inner-equals", "empty"],
)
def test_escape_formula(value: str, expected: str) -> None:
    assert escape_formula(value) == expected


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_columns_in_order_and_private(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ledger{suffix}"
    ledger = Ledger(path)
    write_line(ledger, LINE)
    write_line(ledger, {**LINE, "source_row": 4, "interview_id": "=cmd()", "http_status": None})
    ledger.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = read_ledger(path)
    assert list(first) == list(COLUMNS)
    if suffix == ".csv":
        assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
        assert second["interview_id"] == "'=cmd()" and second["http_status"] == ""
    else:
        assert json.loads(path.read_text().splitlines()[0])["source_row"] == 3
        assert second["interview_id"] == "=cmd()" and second["http_status"] is None


def test_flush_puts_lines_on_disk_before_close(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.csv")
    write_line(ledger, LINE)
    ledger.flush()
    assert len((tmp_path / "l.csv").read_text().splitlines()) == 2
    ledger.close()


def test_never_holds_a_secret(tmp_path: Path) -> None:
    register_secret("sk-ledger-secret-123")
    ledger = Ledger(tmp_path / "l.csv")
    write_line(ledger, {**LINE, "error_message": "echoed sk-ledger-secret-123 back"})
    ledger.close()
    text = (tmp_path / "l.csv").read_text()
    assert "sk-ledger-secret-123" not in text and "[REDACTED]" in text


def test_other_suffixes_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.csv or \.jsonl"):
        Ledger(tmp_path / "ledger.xlsx")


def test_a_dated_ledger_taken_while_this_run_planned_gets_the_run_id(tmp_path: Path) -> None:
    """Two runs with `--ledger l/{date}.csv` (other states, or dry runs)
    both chose `l/<date>.csv` at start; the one that planned longer was refused (exit 2) after
    planning, told to put {date} in a path that had it."""
    from sync_worker.record.ledger import fills_in, ledger_path

    template = str(tmp_path / "{date}.csv")
    chosen = ledger_path(template, "r2", "2026-11-29")
    chosen.write_text("the other run's ledger\n")  # made by the other run meanwhile
    ledger = Ledger(chosen, "r2" if fills_in(template) else None)
    ledger.close()
    assert ledger.path == tmp_path / "2026-11-29-r2.csv"
    assert chosen.read_text() == "the other run's ledger\n"
    with pytest.raises(ConfigError, match="already exists"):
        Ledger(tmp_path / "2026-11-29-r2.csv", "r2" if fills_in("fixed.csv") else None)


CELL_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=8) | st.sampled_from(
    [
        "",
        "=cmd()",
        "-1",
        "a,b",
        'say "hi"',
        "two\nlines",
        "\tx",
        "x\r",
        "\ry",
        "@home",
        " lead",
        "a\0b",
    ]
)


class Columns(NamedTuple):
    statuses: list[str]
    codes: list[str]
    messages: list[str]
    hashes: list[str]
    merges: list[str]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            CELL_TEXT,
            st.integers(1, 10**6),
            CELL_TEXT,
            CELL_TEXT,
            st.sampled_from(["skipped_unchanged", "not_attempted", "invalid"]),
            st.sampled_from(["", "invalid_json"]),
            CELL_TEXT | st.just("key sk_live_x"),
            st.sampled_from(["off", "merged", "no_existing"]),
        ),
        min_size=1,
        max_size=12,
    ),
    suffix=st.sampled_from([".csv", ".jsonl"]),
)
def test_rows_settled_as_columns_are_the_bytes_a_line_each_gives(
    tmp_path: Path, rows: list[tuple[str, int, str, str, str, str, str, str]], suffix: str
) -> None:
    """A nightly run writes its skipped rows as columns: every text cell (quotes, commas, line
    ends, a lone carriage return, formula starts) comes out as `write` writes it, the key
    redacted from messages; and `report` reads every line back."""
    register_secret("sk_live_x")
    one_by_one = Ledger(tmp_path / f"one-{len(list(tmp_path.iterdir()))}{suffix}")
    in_bulk = Ledger(tmp_path / f"bulk-{len(list(tmp_path.iterdir()))}{suffix}")
    digests = [f"{i:064x}" for i in range(len(rows))]
    for (file, row, iid, email, status, code, message, merge), digest in zip(
        rows, digests, strict=True
    ):
        one_by_one.write(
            Where("run-1", file, row, iid, email),
            Result(status, None, code, message, 0, merge, digest),
        )
    where = [[r[i] for r in rows] for i in range(4)]
    columns = Columns(*([r[i] for r in rows] for i in (4, 5, 6)), digests, [r[7] for r in rows])
    in_bulk.write_settled("run-1", where, columns)
    one_by_one.close()
    in_bulk.close()
    assert in_bulk.path.read_bytes() == one_by_one.path.read_bytes()
    assert b"sk_live_x" not in in_bulk.path.read_bytes()
    shown = escape_formula if suffix == ".csv" else str  # JSON lines hold the values as they are
    back = read_ledger(in_bulk.path)
    assert [(r["source_file"], r["contact_email"]) for r in back] == [
        (shown(r[0]), shown(r[3])) for r in rows
    ]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    results=st.lists(
        st.tuples(
            st.lists(st.tuples(CELL_TEXT, st.integers(1, 10**6), CELL_TEXT, CELL_TEXT), min_size=1),
            st.sampled_from(["ok", "failed", "not_attempted"]),
            st.none() | st.sampled_from([200, 404, 503]),
            CELL_TEXT,
            CELL_TEXT | st.just("key sk_live_x"),
            st.none() | st.integers(0, 10**6),
            st.sampled_from(["", "17"]),
        ),
        min_size=1,
        max_size=8,
    ),
    suffix=st.sampled_from([".csv", ".jsonl"]),
)
def test_results_written_together_are_the_bytes_a_line_each_gives(
    tmp_path: Path, results: list[tuple[Any, ...]], suffix: str
) -> None:
    """A run writes the rows of the requests that ended in one go: every cell of a row's place
    and of its request's result comes out as `write` writes it, the key redacted."""
    register_secret("sk_live_x")
    one_by_one = Ledger(tmp_path / f"one-{len(list(tmp_path.iterdir()))}{suffix}")
    in_bulk = Ledger(tmp_path / f"bulk-{len(list(tmp_path.iterdir()))}{suffix}")
    places: list[tuple[str, int, str, str]] = []
    each: list[Result] = []
    for rows, status, http, code, message, took, carried in results:
        result = Result(
            status, http, code, message, 1, "off", "ab" * 32, "2026-12-08", took, carried
        )
        for file, row, iid, email in rows:
            one_by_one.write(Where("run-1", file, row, iid, email), result)
        places += rows
        each += [result] * len(rows)
    in_bulk.write_results("run-1", [[p[i] for p in places] for i in range(4)], each)
    one_by_one.close()
    in_bulk.close()
    assert in_bulk.path.read_bytes() == one_by_one.path.read_bytes()
    assert b"sk_live_x" not in in_bulk.path.read_bytes()
    assert len(read_ledger(in_bulk.path)) == len(places)


def test_a_ledger_path_is_never_reused(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    assert run_against(tmp_path, sandbox, "--ledger", "night.csv").code == 0
    before = (tmp_path / "night.csv").read_bytes()
    again = run_against(tmp_path, sandbox, "--ledger", "night.csv", "--force")
    assert_one_line(again, 2, "night.csv already exists", "{run_id}")
    assert (tmp_path / "night.csv").read_bytes() == before  # not one line of a second run
    assert len(sandbox.requests()) == 2  # refused before anything was sent


def test_run_id_and_date_are_filled_in(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    first = run_against(tmp_path, sandbox, "--ledger", "l/{date}.csv")
    second = run_against(tmp_path, sandbox, "--ledger", "l/{date}.csv", "--force")
    third = run_against(tmp_path, sandbox, "--ledger", "l/x-{run_id}.jsonl", "--force")
    assert (first.code, second.code, third.code) == (0, 0, 0)
    day = first.event("run_started")["timestamp"][:10]
    second_id = second.event("run_started")["run_id"]
    assert first.event("run_started")["ledger"] == f"l/{day}.csv"
    assert second.event("run_started")["ledger"] == f"l/{day}-{second_id}.csv"  # same day: own
    third_id = third.event("run_started")["run_id"]
    assert sorted(p.name for p in (tmp_path / "l").iterdir() if "summary" not in p.name) == sorted(
        [f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"]
    )
    for name in (f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"):
        assert_ledger_rows(tmp_path / "l" / name, 1)
