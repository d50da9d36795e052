"""Requests needed, not rows (SPEC section 7): a contact's fields once per contact, only the
fields that changed, and the rows of an interview with nothing left to send riding with the
request that carried its contact's fields."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    SandboxServer,
    read_ledger,
    run_args,
    run_cli,
    set_latency,
    start_run,
    wait_for_arrivals,
    write_csv,
)

from sync_worker.plan import Memory, Plan, PlanOptions, build_plan, plan_lines
from sync_worker.plan.request_table import CARRIER, LEAN
from sync_worker.read.reader import ReadOptions, read_batch
from sync_worker.store.history import FieldKey

HEADER = ["interview_id", "contact_email", "contact_name", "objective", "contact_context"]


def plan_of(
    folder: Path,
    rows: list[list[Any]],
    options: PlanOptions | None = None,
    confirmed: Mapping[FieldKey, str] | None = None,
) -> Plan:
    """The plan of these rows, by both roads (columns, row by row), which must agree."""
    write_csv(folder / "in.csv", HEADER, rows)
    batch = read_batch([str(folder / "in.csv")], ReadOptions())
    memory = Memory(confirmed=(lambda _keys: dict(confirmed or {})))
    options = options or PlanOptions()
    plan = build_plan(batch, options, memory)
    reference = build_plan(batch, dataclasses.replace(options, vectorise=False), memory)
    assert bodies(plan) == bodies(reference)
    assert plan.sent_with == reference.sent_with
    return plan


def bodies(plan: Plan) -> dict[int, dict[str, Any]]:
    return {r.interview_id: json.loads(r.body_json) for r in plan.table}


A, B = "a@x.com", "b@x.com"


def test_a_contacts_fields_travel_once_with_its_first_interview(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        [
            [1, A, "Ann", "win", "met"],
            [2, B, "Bo", "", "b"],
            [3, A, "Ann", "lose", "met"],
            [4, A, "Ann", "", "met"],  # nothing of its own: rides with 1
            [5, B, "Bo", "", "b"],  # rides with 2
        ],
    )
    assert bodies(plan) == {
        1: {"contact_name": "Ann", "contact_context": "met", "objective": "win"},
        2: {"contact_name": "Bo", "contact_context": "b"},
        3: {"objective": "lose"},
    }
    assert plan.sent_with == {3: 1, 4: 2}  # row positions -> the carrying interview
    assert [r.rows for r in plan.table] == [[0, 3], [1, 4], [2]]
    roles = {r.interview_id: r.role for r in plan.table}
    assert roles == {1: CARRIER, 2: CARRIER, 3: LEAN}


def test_the_carrier_takes_each_fields_last_value(tmp_path: Path) -> None:
    """Sent one after another, the last value of each field would remain: the one request
    carries exactly that (a name only an earlier row gives is kept)."""
    plan = plan_of(tmp_path, [[1, A, "Ann", "x", "first"], [2, A, "", "y", "second"]])
    assert bodies(plan) == {
        1: {"contact_name": "Ann", "contact_context": "second", "objective": "x"},
        2: {"objective": "y"},
    }
    assert plan.several_contexts == 1  # still said: the export disagrees with itself


def test_without_coalescing_every_interview_carries_its_contacts_fields(tmp_path: Path) -> None:
    """Its last values, whether or not the interview's own rows give them (SPEC section 7:
    `--no-coalesce` sends the contact's fields with every interview)."""
    rows = [[1, A, "Ann", "", "met"], [2, A, "Ann", "", "met"], [3, A, "", "win", ""]]
    plan = plan_of(tmp_path, rows, PlanOptions(coalesce=False))
    assert bodies(plan) == {
        1: {"contact_name": "Ann", "contact_context": "met"},
        2: {"contact_name": "Ann", "contact_context": "met"},
        3: {"contact_name": "Ann", "contact_context": "met", "objective": "win"},
    }
    assert plan.sent_with == {}


def test_only_the_fields_that_changed_go(tmp_path: Path) -> None:
    """Confirmed: interview 1's objective, contact A's notes; 2's objective is new. A field
    never confirmed (A's name) is sent."""
    confirmed = {
        ("interview", "1", "objective"): '"win"',
        ("contact", A, "contact_context"): '"met"',
        ("interview", "2", "objective"): '"old"',
    }
    rows = [[1, A, "Ann", "win", "met"], [2, A, "", "new", "met"], [3, B, "", "", "b"]]
    plan = plan_of(tmp_path, rows, confirmed=confirmed)
    assert bodies(plan) == {
        1: {"contact_name": "Ann"},
        2: {"objective": "new"},
        3: {"contact_context": "b"},
    }
    forced = plan_of(tmp_path, rows, PlanOptions(force=True), confirmed)
    assert bodies(forced)[1] == {
        "contact_name": "Ann",
        "contact_context": "met",
        "objective": "win",
    }


def test_a_request_with_nothing_left_is_unchanged_or_rides(tmp_path: Path) -> None:
    """Everything of 1 and 2 confirmed: skipped, though their whole bodies were never sent as
    such (an export that gained a column); 3's contact changed, 4 has only its contact's."""
    confirmed = {
        ("interview", "1", "objective"): '"win"',
        ("contact", A, "contact_context"): '"met"',
        ("contact", A, "contact_name"): '"Ann"',
        ("interview", "2", "objective"): '"lose"',
    }
    rows = [
        [1, A, "Ann", "win", "met"],
        [2, A, "", "lose", ""],
        [3, B, "", "x", "b"],
        [4, B, "", "", "b"],
    ]
    plan = plan_of(tmp_path, rows, confirmed=confirmed)
    assert bodies(plan) == {3: {"contact_context": "b", "objective": "x"}}
    assert plan.sent_with == {3: 3}
    assert [(p, s.status) for p, s in plan.settled.items()] == [
        (0, "skipped_unchanged"),
        (1, "skipped_unchanged"),
    ]


def test_the_merge_roads_coalesce_alike(tmp_path: Path) -> None:
    """Merging by columns (flat contacts) and row by row give the same trimmed requests."""
    header = ["interview_id", "contact_email", "objective", "context.stage", "contact_context"]
    write_csv(
        tmp_path / "in.csv",
        header,
        [
            [1, A, "", "Demo", ""],
            [2, A, "go", "Won", ""],
            [3, B, "", "", "text"],
            [4, B, "", "", ""],
        ],
    )
    batch = read_batch([str(tmp_path / "in.csv")], ReadOptions())
    options = PlanOptions(merge=True)
    plan = build_plan(batch, options, Memory())
    reference = build_plan(batch, dataclasses.replace(options, vectorise=False), Memory())
    assert (
        bodies(plan)
        == bodies(reference)
        == {
            1: {"contact_context": {"stage": "Won"}},
            2: {"objective": "go"},
            3: {"contact_context": "text"},
        }
    )
    assert plan.sent_with == reference.sent_with == {}  # 4 sends nothing: no context of its own


# Through the CLI, against the sandbox -----------------------------------------------------------

SHARED = {2: 1, 3: 1, 5: 4}  # on the API, one email is one contact


def export(folder: Path, rows: list[list[Any]], name: str = "in.csv") -> None:
    write_csv(folder / name, HEADER, rows)


FIRST = [
    [1, A, "Ann", "", "met at SaaStr"],
    [2, A, "Ann", "", "met at SaaStr"],
    [3, A, "Ann", "", "met at SaaStr"],
    [4, B, "Bo", "", "prefers email"],
    [5, B, "Bo", "", "prefers email"],
    [6, "", "Cy", "", "solo"],
]


def sync(folder: Path, server: SandboxServer, ledger: str, *args: str) -> Any:
    result = run_cli(*run_args(server, *args, ledger=ledger), cwd=folder)
    assert "Traceback" not in result.stderr
    return result


def ids(server: SandboxServer) -> list[str]:
    return [r["id"] for r in server.requests() if r.get("method") != "GET"]


def carried(folder: Path, ledger: str) -> dict[str, tuple[str, str]]:
    return {
        line["interview_id"]: (line["status"], line["sent_with"])
        for line in read_ledger(folder / ledger)
    }


def held(server: SandboxServer, interview_id: int, name: str) -> Any:
    found = server.interview(interview_id)
    assert found is not None
    return found[name]


def test_one_request_per_contact_then_only_what_changed(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    sandbox.link(SHARED)
    export(tmp_path, FIRST)
    assert sync(tmp_path, sandbox, "one.csv").code == 0
    assert ids(sandbox) == ["1", "4", "6"]  # 6 requests where 3 are needed
    assert carried(tmp_path, "one.csv") == {
        "1": ("ok", ""),
        "2": ("ok", "1"),
        "3": ("ok", "1"),
        "4": ("ok", ""),
        "5": ("ok", "4"),
        "6": ("ok", ""),
    }
    assert [held(sandbox, i, "contact_context") for i in (2, 3, 5)] == ["met at SaaStr"] * 2 + [
        "prefers email"
    ]
    summary = json.loads((tmp_path / "one.csv.summary.json").read_text())
    assert summary["requests_sent"] == 3

    assert sync(tmp_path, sandbox, "two.csv").code == 0  # unchanged: nothing
    assert len(ids(sandbox)) == 3
    assert {s for s, _by in carried(tmp_path, "two.csv").values()} == {"skipped_unchanged"}

    # the export gains an objective column: only the interviews with an objective send it
    second = [[*row[:3], f"goal {row[0]}" if row[0] in (2, 5) else "", row[4]] for row in FIRST]
    export(tmp_path, second)
    assert sync(tmp_path, sandbox, "three.csv").code == 0
    sent = sandbox.requests()[3:]
    assert [(r["id"], r["fields"]) for r in sent] == [
        ("2", ["objective"]),
        ("5", ["objective"]),
    ]


@pytest.mark.parametrize(
    "how", [["--no-coalesce"], ["--config", "sync.toml"]], ids=["flag", "config"]
)
def test_no_coalesce_sends_a_contacts_fields_with_every_interview(
    tmp_path: Path, sandbox: SandboxServer, how: list[str]
) -> None:
    sandbox.link(SHARED)
    (tmp_path / "sync.toml").write_text("[api]\ncoalesce = false\n")
    export(tmp_path, FIRST)
    assert sync(tmp_path, sandbox, "one.csv", *how).code == 0
    assert sorted(ids(sandbox)) == ["1", "2", "3", "4", "5", "6"]
    assert {by for _s, by in carried(tmp_path, "one.csv").values()} == {""}


def test_a_bad_coalesce_setting_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "sync.toml").write_text('[api]\ncoalesce = "sometimes"\n')
    export(tmp_path, FIRST)
    result = run_cli("plan", "in.csv", "--config", "sync.toml", cwd=tmp_path)
    assert result.code == 2
    assert "coalesce" in result.stderr and "sync.toml" in result.stderr


def test_riders_end_as_their_carrier_ends(tmp_path: Path, sandbox: SandboxServer) -> None:
    """A dry run, --max-rows and a carrier the API refuses: the riders' lines say the same as
    the carrier's, and name it."""
    sandbox.link(SHARED)
    export(tmp_path, FIRST)
    assert sync(tmp_path, sandbox, "dry.csv", "--dry-run").code == 0
    assert carried(tmp_path, "dry.csv")["3"] == ("dry_run", "1")
    assert sync(tmp_path, sandbox, "trial.csv", "--max-rows", "1").code == 0
    trial = carried(tmp_path, "trial.csv")
    assert (trial["2"], trial["5"]) == (("ok", "1"), ("not_attempted", "4"))

    missing = [[990000001, A, "Zed", "", "new"], [990000002, A, "Zed", "", "new"]]
    export(tmp_path, missing)
    assert sync(tmp_path, sandbox, "gone.csv").code == 1
    lines = {line["interview_id"]: line for line in read_ledger(tmp_path / "gone.csv")}
    rider = lines["990000002"]
    assert (rider["status"], rider["http_status"], rider["sent_with"]) == (
        "failed",
        "404",
        "990000001",
    )
    assert rider["error_code"] == lines["990000001"]["error_code"]


def test_a_lean_request_whose_carrier_failed_is_not_taken_as_complete(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The carrier of A's notes is refused (404); A's other interview sent its objective. The
    next run sends A's notes again (with the carrier, the first in file order)."""
    rows = [[990000001, A, "", "", "notes"], [7, A, "", "goal", "notes"]]
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "one.csv").code == 1
    assert [(r["id"], r.get("fields")) for r in sandbox.requests()] == [
        ("990000001", None),  # refused before its body was read
        ("7", ["objective"]),
    ]
    export(tmp_path, [rows[1]])  # the refused interview left the export
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert [(r["id"], r["fields"]) for r in sandbox.requests()[2:]] == [
        ("7", ["contact_context"]),
    ]
    assert held(sandbox, 7, "contact_context") == "notes"


def test_a_contacts_fields_go_with_an_interview_the_api_has_not_refused(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The contact's first interview is refused (404) and the other has nothing of its own:
    the next run sends the fields with the other one, so they arrive (the refused interview's
    rows then ride with it), and the run after sends nothing."""
    rows = [[990000001, A, "Dee", "", "notes"], [41, A, "Dee", "", "notes"]]
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "one.csv").code == 1
    assert carried(tmp_path, "one.csv")["41"] == ("failed", "990000001")
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert [r["id"] for r in sandbox.requests()[1:]] == ["41"]
    assert held(sandbox, 41, "contact_context") == "notes"
    assert carried(tmp_path, "two.csv")["990000001"] == ("ok", "41")
    assert sync(tmp_path, sandbox, "three.csv").code == 0
    assert len(sandbox.requests()) == 2


def test_an_interview_that_only_rode_is_not_taken_as_confirmed(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """990000003 rode with 601's request (ok, never sent itself): when it comes first in the
    file the next night, the contact's new context still goes with 601, which the API
    confirmed itself, and arrives."""
    export(tmp_path, [[601, A, "Fay", "", "one"], [990000003, A, "", "", "one"]])
    assert sync(tmp_path, sandbox, "one.csv").code == 0
    assert carried(tmp_path, "one.csv")["990000003"] == ("ok", "601")
    export(tmp_path, [[990000003, A, "", "", "two"], [601, A, "Fay", "", ""]])
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert [r["id"] for r in sandbox.requests()[1:]] == ["601"]
    assert held(sandbox, 601, "contact_context") == "two"


def test_a_contacts_fields_go_with_an_interview_the_api_has_confirmed(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The first interview in file order is refused (404) and stays in the export: from the
    next run on, the contact's fields go with the interview the API confirmed instead, so they
    arrive, and are not held back every night by an interview that may not exist."""
    rows = [[990000001, A, "", "", "notes"], [7, A, "", "goal", "notes"]]
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "one.csv").code == 1
    assert held(sandbox, 7, "contact_context") is None
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert [(r["id"], r["fields"]) for r in sandbox.requests()[2:]] == [
        ("7", ["contact_context"]),
    ]
    assert held(sandbox, 7, "contact_context") == "notes"
    assert carried(tmp_path, "two.csv")["990000001"] == ("ok", "7")
    assert sync(tmp_path, sandbox, "three.csv").code == 0
    assert len(sandbox.requests()) == 3  # nothing left to send


def test_a_coalesced_run_is_reverted_through_the_requests_it_made(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    sandbox.link(SHARED)
    export(tmp_path, FIRST)
    assert sync(tmp_path, sandbox, "one.csv").code == 0
    export(tmp_path, [[*row[:4], row[4] + " (edited)"] for row in FIRST])
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert ids(sandbox)[3:] == ["1", "4", "6"]
    run_id = json.loads((tmp_path / "two.csv.summary.json").read_text())["run_id"]
    revert = run_cli(
        "revert",
        run_id,
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "revert.csv",
        "--rate-limit",
        "1000",
        cwd=tmp_path,
    )
    assert revert.code == 0, revert.stderr
    assert ids(sandbox)[6:] == ["1", "4", "6"]  # one request per contact, as the run made
    assert [line["interview_id"] for line in read_ledger(tmp_path / "revert.csv")] == [
        "1",
        "4",
        "6",
    ]
    assert [held(sandbox, i, "contact_context") for i in (3, 5)] == [
        "met at SaaStr",
        "prefers email",
    ]


def test_a_killed_coalesced_run_resumes_without_sending_twice(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """kill -9 mid-run: the re-run sends what was not confirmed, each contact's fields at most
    once more, and every row ends with one line."""
    links = {i: i - (i - 1) % 3 for i in range(1, 61) if i % 3 != 1}  # 20 contacts of 3
    sandbox.link(links)
    rows = [
        [i, f"c{(i - 1) // 3}@x.com", "", f"goal {i}" if i % 3 == 0 else "", "notes"]
        for i in range(1, 61)
    ]
    export(tmp_path, rows)
    args = run_args(sandbox, "--rate-limit", "10", "--rate-period", "1", ledger="one.csv")
    process = start_run(tmp_path, args)
    try:
        wait_for_arrivals(sandbox, 8)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    first = ids(sandbox)
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    sent = first + ids(sandbox)[len(first) :]
    needed = {str(i) for i in range(1, 61) if i % 3 != 2}  # 20 carriers, 20 with a goal
    assert set(sent) == needed
    assert len(sent) - len(needed) <= 2  # at most what was cut in flight goes twice
    assert len(read_ledger(tmp_path / "two.csv")) == 60
    for interview in range(1, 61):
        assert held(sandbox, interview, "contact_context") == "notes"


# What a break of the rules above once cost ------------------------------------------------------


def test_an_interrupted_contact_resumes_with_its_last_values(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The carrier (10) sent the contact's last notes (C3, of row 12); 11 was left out. The
    re-run must not send 11's own C2 over them: its contact's fields are as confirmed."""
    sandbox.link({11: 10, 12: 10})
    rows = [[10, A, "", "", "C1"], [11, A, "", "goal", "C2"], [12, A, "", "", "C3"]]
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "one.csv", "--max-rows", "1").code == 0
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert [(r["id"], r["fields"]) for r in sandbox.requests()] == [
        ("10", ["contact_context"]),
        ("11", ["objective"]),
    ]
    assert held(sandbox, 11, "contact_context") == "C3"


def test_an_export_that_changes_and_changes_back_ends_on_its_last_rows(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    sandbox.link({2: 1, 3: 1, 4: 1})
    v1 = [[1, A, "X", "", "c1"], [2, A, "X", "", ""], [3, A, "", "", "c0"], [4, A, "Y", "o4", "c2"]]
    v2 = [[1, A, "X", "", "c1"], [2, A, "Z", "", ""], [3, A, "Z", "", "c0"], [4, A, "Y", "o4", ""]]
    for number, rows in enumerate((v1, v2, v1)):
        export(tmp_path, rows)
        assert sync(tmp_path, sandbox, f"{number}.csv").code == 0
    assert (held(sandbox, 1, "contact_name"), held(sandbox, 1, "contact_context")) == ("Y", "c2")


def test_after_a_revert_a_rider_is_sent_again(tmp_path: Path, sandbox: SandboxServer) -> None:
    """Run two sent ctxB through 1 (2 rode with it); its revert put ctxA back through 1. An
    export of 2 alone with ctxB is no longer what the server holds: it is sent."""
    sandbox.link({2: 1})
    export(tmp_path, [[1, A, "Ann", "o1", "ctxA"], [2, A, "Ann", "o2", "ctxA"]])
    assert sync(tmp_path, sandbox, "one.csv").code == 0
    export(tmp_path, [[1, A, "Ann", "o1b", "ctxB"], [2, A, "Ann", "o2", "ctxB"]])
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    run_id = json.loads((tmp_path / "two.csv.summary.json").read_text())["run_id"]
    common = ["--base-url", sandbox.base_url, "--state", "state.sqlite", "--rate-limit", "1000"]
    assert run_cli("revert", run_id, "--ledger", "r.csv", *common, cwd=tmp_path).code == 0
    assert held(sandbox, 2, "contact_context") == "ctxA"
    export(tmp_path, [[2, A, "Ann", "o2", "ctxB"]])
    assert sync(tmp_path, sandbox, "three.csv").code == 0
    assert carried(tmp_path, "three.csv") == {"2": ("ok", "")}
    assert held(sandbox, 2, "contact_context") == "ctxB"


def test_a_rider_of_a_refused_carrier_says_so(tmp_path: Path, sandbox: SandboxServer) -> None:
    export(tmp_path, [[990000001, A, "Ann", "", "ctx"], [2, A, "Ann", "", "ctx"]])
    assert sync(tmp_path, sandbox, "one.csv").code == 1
    rider = next(x for x in read_ledger(tmp_path / "one.csv") if x["interview_id"] == "2")
    assert rider["error_message"].startswith(
        "sent with interview 990000001, which carried its contact's fields: "
    )


def test_a_merged_rerun_of_contacts_without_emails(tmp_path: Path, sandbox: SandboxServer) -> None:
    """Merging numbers every contact of the batch; the requests left after skipping are a few
    of them (a case the property found: an index past the contacts left)."""
    export(tmp_path, [[3, "", "", "", "a"], [4, "", "", "", "a"]])
    assert sync(tmp_path, sandbox, "one.csv", "--merge").code == 0
    export(tmp_path, [[3, "", "", "", "a"], [4, "", "", "", "b"]])
    assert sync(tmp_path, sandbox, "two.csv", "--merge").code == 0
    assert held(sandbox, 4, "contact_context") == "a\n\nb"


def test_a_contact_whose_rows_take_both_roads_is_skipped_whole(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Interviews 10 and 12 have two rows each (the row road), 11 one (the column road): a
    change to 12 keeps 11 in view, whose name is the contact's last."""
    sandbox.link({11: 10, 12: 10})
    rows = [
        [10, A, "Ann Old", "", "won"],
        [11, A, "Ann New", "", ""],
        [12, A, "", "", "won"],
        [10, A, "", "", "won"],
        [12, A, "", "", "won"],
    ]
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "one.csv").code == 0
    rows[2][3] = "Renewal call"
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "two.csv").code == 0
    assert sync(tmp_path, sandbox, "three.csv").code == 0
    assert held(sandbox, 10, "contact_name") == "Ann New"


def test_without_coalescing_the_last_confirmed_send_is_the_last_value(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Every interview sends the contact's last name (row 3's), so the server ends on the
    file's last value whichever of them lands last; the state knows it, and the next run has
    nothing of the contact's to send."""
    sandbox.link({11: 10})
    rows = [
        [10, A, "Name A", "", ""],
        [11, A, "Name B", "o11", ""],
        [990000001, A, "Name A", "", ""],
    ]
    export(tmp_path, rows)
    assert sync(tmp_path, sandbox, "one.csv", "--no-coalesce").code == 1
    assert [r.get("fields") for r in sandbox.requests()] == [
        ["contact_name"],
        ["contact_name", "objective"],
        None,  # refused before its body was read
    ]
    assert held(sandbox, 11, "contact_name") == "Name A"
    before = len(sandbox.requests())
    assert sync(tmp_path, sandbox, "two.csv", "--no-coalesce").code == 0
    assert len(sandbox.requests()) == before
    assert held(sandbox, 11, "contact_name") == "Name A"


def test_a_send_that_got_no_answer_is_not_taken_as_unknown_to_the_server(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Name B timed out: the server may hold it. A later export back at Name A is sent, not
    skipped as unchanged since the last confirmed send."""
    sandbox.link({2: 1})
    (tmp_path / "slow.toml").write_text("[api]\ntimeout_s = 0.3\nmax_retries = 0\n")
    first = [[1, A, "Name A", "o1", ""], [2, A, "Name A", "o2", ""]]
    export(tmp_path, first)
    assert sync(tmp_path, sandbox, "one.csv").code == 0
    export(tmp_path, [[1, A, "Name B", "o1", ""], [2, A, "Name B", "o2", ""]])
    set_latency(sandbox, 1500)
    assert sync(tmp_path, sandbox, "two.csv", "--config", "slow.toml").code != 0
    assert {line["status"] for line in read_ledger(tmp_path / "two.csv")} == {"failed"}
    set_latency(sandbox, 0)
    export(tmp_path, first)
    before = len(sandbox.requests())
    assert sync(tmp_path, sandbox, "three.csv").code == 0
    assert [r["fields"] for r in sandbox.requests()[before:]] == [["contact_name"]]
    assert carried(tmp_path, "three.csv") == {"1": ("ok", ""), "2": ("ok", "1")}


@pytest.mark.parametrize("mode", [[], ["--no-coalesce"]], ids=["coalesced", "every-interview"])
def test_an_interview_whose_rows_are_apart_gives_its_last_rows_value(
    tmp_path: Path, sandbox: SandboxServer, mode: list[str]
) -> None:
    """Interview 10's rows are 1 and 3: the contact's last name is row 3's (10's), its last
    context row 2's (11's); sent one after another or once, the server ends on those."""
    sandbox.link({11: 10})
    export(
        tmp_path,
        [[10, A, "Name A", "", "ctxA"], [11, A, "Name B", "", "ctxB"], [10, A, "Name C", "", ""]],
    )
    assert sync(tmp_path, sandbox, "one.csv", *mode).code == 0
    assert (held(sandbox, 10, "contact_name"), held(sandbox, 10, "contact_context")) == (
        "Name C",
        "ctxB",
    )


def test_plan_lists_a_carriers_own_rows_not_its_riders(tmp_path: Path) -> None:
    """`plan` shows the rows each request sends as its own: an interview's rows apart in the
    file are listed, the rows riding with it are not (the ledger names them `sent_with`)."""
    write_csv(
        tmp_path / "in.csv",
        HEADER,
        [
            [1, A, "Ann", "win", "met"],
            [2, A, "Ann", "", "met"],  # rides with 1
            [3, B, "Bo", "goal", "b"],
            [1, A, "Ann", "win", "met"],  # 1's own second row
            [4, B, "Bo", "", "b"],  # rides with 3
        ],
    )
    batch = read_batch([str(tmp_path / "in.csv")], ReadOptions())
    plan = build_plan(batch, PlanOptions(), Memory())
    lines = [json.loads(line) for line in b"".join(plan_lines(plan, batch)).splitlines()]
    shown = {line["interview_id"]: [s["source_row"] for s in line["source_rows"]] for line in lines}
    assert shown == {1: [1, 4], 3: [3]}
    assert plan.sent_with == {1: 1, 4: 3}


def test_keeping_requests_in_place_is_taking_them(tmp_path: Path) -> None:
    """Trimming drops riders from its table in place, a column at a time: what stays is those
    requests whole (rows, roles, hashes), and `take` gives the same while the table it took
    from stays as it was."""
    plan = plan_of(
        tmp_path,
        [
            [1, A, "Ann", "win", "met"],
            [2, B, "Bo", "", "b"],
            [1, A, "Ann", "win", "met"],
            [3, A, "Ann", "lose", "met"],
            [4, B, "Bo", "x", "b"],
        ],
        options=PlanOptions(for_sending=True),
    )
    table = plan.table
    before = [dataclasses.astuple(r) for r in table]
    picked = np.array([2, 0], dtype=np.int64)
    expected = [before[i] for i in picked]
    assert [dataclasses.astuple(r) for r in table.take(picked)] == expected
    assert [dataclasses.astuple(r) for r in table] == before
    table.keep(picked)
    assert [dataclasses.astuple(r) for r in table] == expected


def test_a_merged_contacts_rows_fold_in_file_order(tmp_path: Path) -> None:
    """SPEC section 6: a contact's contexts combine in file order, so an interview whose rows
    are apart in the file does not have its rows folded together ahead of another's."""
    merged = PlanOptions(merge=True)
    plan = plan_of(
        tmp_path,
        [[1, A, "", "", '{"k": 1}'], [2, A, "", "", '{"k": 50}'], [1, A, "", "", '{"k": 2}']],
        merged,
    )
    assert bodies(plan) == {1: {"contact_context": {"k": 2}}}
    plan = plan_of(
        tmp_path,
        [[1, A, "", "", ""], [2, A, "", "", "fifty"], [1, A, "", "", "two"], [2, A, "", "", "ten"]],
        merged,
    )
    # its first row sends nothing (invalid: no field), so 2 comes first and carries the notes
    assert bodies(plan) == {2: {"contact_context": "fifty\n\ntwo\n\nten"}}
