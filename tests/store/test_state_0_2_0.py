"""A state file written by release 0.2.0 (a contact's fields sent with every interview) keeps
working with requests trimmed to what is needed: what it sent is skipped, a change sends only
the changed fields once per contact, and its runs are reverted through the interviews they
wrote to."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import SandboxServer, read_ledger, run_args, run_cli

from sync_worker.store.state import SCHEMA_VERSION

DATA = Path(__file__).parents[1] / "data"
MADE_FOR = "http://127.0.0.1:28941/api/v1"  # the sandbox release 0.2.0 wrote it against


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    copy = tmp_path / "state.sqlite"
    shutil.copyfile(DATA / "state-0.2.0.sqlite", copy)
    for name in ("state-0.2.0-contacts.csv", "state-0.2.0-contacts2.csv"):
        shutil.copyfile(DATA / name, tmp_path / name)
    return copy


def moved_to(state: Path, server: SandboxServer) -> None:
    """The state's API is this test's sandbox (its port differs from run to run), which holds
    what release 0.2.0 left on its own: interviews 100-102 on one contact, the notes sent."""
    with sqlite3.connect(state) as db:
        db.execute("UPDATE api SET base_url = ?", (server.base_url,))
    server.link({101: 100, 102: 100})


def plan(folder: Path, export: str) -> list[dict[str, object]]:
    result = run_cli("plan", export, "--state", "state.sqlite", "--base-url", MADE_FOR, cwd=folder)
    assert result.code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_what_release_0_2_0_sent_is_skipped(old_state: Path, sandbox: SandboxServer) -> None:
    folder = old_state.parent
    assert plan(folder, "state-0.2.0-contacts2.csv") == []
    moved_to(old_state, sandbox)
    args = run_args(sandbox, source="state-0.2.0-contacts2.csv")
    result = run_cli(*args, cwd=folder)
    assert result.code == 0, result.stderr
    assert {line["status"] for line in read_ledger(folder / "ledger.csv")} == {"skipped_unchanged"}
    assert sandbox.requests() == []
    with sqlite3.connect(old_state) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_plan_on_a_0_2_0_state_picks_the_carrier_run_would(
    old_state: Path, sandbox: SandboxServer
) -> None:
    """Before its first run upgrades it, `plan` takes what 0.2.0 sent as confirmed, as the
    upgrade does: a never-seen interview first in the file does not carry the contact's
    fields, in `plan` or in the run."""
    folder = old_state.parent
    header = "interview_id,contact_email,contact_name,objective,contact_context\n"
    rows = "990000100,a@x.com,Ann,,new notes\n102,a@x.com,Ann,,\n101,a@x.com,Ann,renewal,\n"
    (folder / "five.csv").write_text(header + rows)
    planned = [line for line in plan(folder, "five.csv") if "contact_context" in line["body"]]
    assert [line["interview_id"] for line in planned] == [102]
    moved_to(old_state, sandbox)
    assert run_cli(*run_args(sandbox, source="five.csv"), cwd=folder).code in (0, 1)
    carried = [r["id"] for r in sandbox.requests() if "contact_context" in r.get("fields", [])]
    assert carried == ["102"]


def test_a_0_2_0_state_learns_the_interviews_the_api_refused(
    old_state: Path, sandbox: SandboxServer
) -> None:
    """Upgraded in place by its first run: what 0.2.0 sent counts as confirmed by the API, the
    interviews it refuses are kept, and the next run sends a contact's fields with another of
    its interviews."""
    folder = old_state.parent
    moved_to(old_state, sandbox)
    header = "interview_id,contact_email,contact_name,objective,contact_context\n"
    rows = "990000001,z@x.com,Zed,,new notes\n77,z@x.com,Zed,,new notes\n"
    (folder / "four.csv").write_text(header + rows)
    args = run_args(sandbox, source="four.csv")
    assert run_cli(*args, cwd=folder).code == 1
    with sqlite3.connect(old_state) as db:
        answered = dict(db.execute("SELECT interview_id, http_status FROM answered"))
    assert answered[990000001] == 404
    assert {answered[i] for i in (100, 101, 102)} == {200}  # what 0.2.0 sent, itself
    (folder / "ledger.csv").unlink()
    (folder / "ledger.csv.summary.json").unlink()
    assert run_cli(*args, cwd=folder).code == 0
    held = sandbox.interview(77)
    assert held is not None and held["contact_context"] == "new notes"


def test_a_change_on_a_0_2_0_state_sends_the_changed_fields_once(old_state: Path) -> None:
    """Contact a@x.com's context and interview 101's objective change: its context goes once,
    with interview 100 (whose objective is as confirmed), 101 sends its objective alone, and
    102 has nothing of its own: it rides with 100."""
    folder = old_state.parent
    text = (folder / "state-0.2.0-contacts2.csv").read_text()
    changed = text.replace("POC done", "signed").replace("renewal", "upsell")
    (folder / "three.csv").write_text(changed)
    assert plan(folder, "three.csv") == [
        {
            "interview_id": 100,
            "body": {"contact_context": "Met at SaaStr; signed"},
            "source_rows": [{"source_file": "three.csv", "source_row": 1}],
            "merge": "off",
        },
        {
            "interview_id": 101,
            "body": {"objective": "upsell"},
            "source_rows": [{"source_file": "three.csv", "source_row": 2}],
            "merge": "off",
        },
    ]


def test_a_0_2_0_run_is_reverted_through_every_interview_it_wrote_to(
    old_state: Path, sandbox: SandboxServer
) -> None:
    """Release 0.2.0 sent the new context through 100, 101 and 102: the revert puts the old one
    back through the same three (SPEC section 12), whatever this release would send now."""
    folder = old_state.parent
    moved_to(old_state, sandbox)
    with sqlite3.connect(old_state) as db:
        [(second,)] = db.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")
    args = ["revert", second, "--base-url", sandbox.base_url, "--state", "state.sqlite"]
    result = run_cli(*args, "--ledger", "revert.csv", "--rate-limit", "1000", cwd=folder)
    assert result.code == 0, result.stderr
    lines = read_ledger(folder / "revert.csv")
    assert [(line["interview_id"], line["status"]) for line in lines] == [
        ("100", "ok"),
        ("101", "ok"),
        ("102", "ok"),
    ]
    held = sandbox.interview(102)
    assert held is not None and held["contact_context"] == "Met at SaaStr"
