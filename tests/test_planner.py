from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import tempfile
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.fields import SENT_FIELDS
from sync_worker.merger import MergeRules
from sync_worker.plan import Memory, Plan, PlanOptions, build_plan, plan_lines
from sync_worker.plan.model import Note
from sync_worker.reader import Batch, ReadOptions, read_batch
from sync_worker.request_table import ChainQueue, Request


def requests_of(plan: Plan) -> list[Request]:
    return list(plan.table)


def body_of(request: Request) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(request.body_json)
    return value


HEADER = "interview_id,contact_name,objective,contact_context,contact_email,context.title\n"


def plan_for(
    tmp_path: Path, body: str, options: PlanOptions | None = None, memory: Memory | None = None
) -> tuple[Batch, Plan]:
    """The plan, after checking that both roads (columns, row by row) agree on every byte."""
    path = tmp_path / "in.csv"
    path.write_text(HEADER + body, encoding="utf-8")
    batch = read_batch([str(path)], ReadOptions())
    options = options or PlanOptions()
    plan = build_plan(batch, options, memory or Memory())
    by_rows = build_plan(batch, dataclasses.replace(options, vectorise=False), memory or Memory())
    assert [astuple(r) for r in requests_of(plan)] == [astuple(r) for r in requests_of(by_rows)]
    assert plan.settled == by_rows.settled
    return batch, plan


@pytest.mark.parametrize(
    ("row", "body"),
    [
        ("1,Ana,,,,", {"contact_name": "Ana"}),
        ("1,,Win back,,,", {"objective": "Win back"}),
        ("1,,,just text,,", {"contact_context": "just text"}),
        ('1,,,"{""a"": 1}",,', {"contact_context": {"a": 1}}),
        ('1,,,"  {""a"": 1}",,', {"contact_context": {"a": 1}}),
        ("1,,,,,CTO", {"contact_context": {"title": "CTO"}}),
        ("1,,,note,,CTO", {"contact_context": {"notes": "note", "title": "CTO"}}),
        ('1,,,"{""a"": 1}",,CTO', {"contact_context": {"a": 1, "title": "CTO"}}),
        ("1, Ana ,,,,", {"contact_name": "Ana"}),
        ("0001,Ana,,,,", {"contact_name": "Ana"}),
        ("1,NaN,,,,", {"contact_name": "NaN"}),
        ("1,Ana,,,ana@x.com,", {"contact_name": "Ana"}),
    ],
    ids=[
        "name-only", "objective-only", "text-context", "json-context", "json-after-space",
        "context-column", "text-plus-column-under-notes", "json-plus-column", "trimmed",
        "leading-zeros", "nan-is-text", "email-never-sent",
    ],
)  # fmt: skip
def test_row_to_body(tmp_path: Path, row: str, body: dict[str, Any]) -> None:
    _batch, plan = plan_for(tmp_path, row + "\n")
    [request] = requests_of(plan)
    assert request.interview_id == 1
    assert body_of(request) == body
    assert request.sha256 == hashlib.sha256(request.body_json).hexdigest()
    assert json.loads(request.body_json) == body


@pytest.mark.parametrize(
    ("row", "code", "column"),
    [
        ("abc,Ana,,,,", "invalid_interview_id", "interview_id"),
        ("-4,Ana,,,,", "invalid_interview_id", "interview_id"),
        ("0,Ana,,,,", "invalid_interview_id", "interview_id"),
        ("4821.0,Ana,,,,", "invalid_interview_id", "interview_id"),
        (",Ana,,,,", "invalid_interview_id", "interview_id"),
        ("99999999999999999999,Ana,,,,", "invalid_interview_id", "interview_id"),
        ("1,,,,,", "no_fields", None),
        ("1,  ,,   ,a@x.com,", "no_fields", None),
        ('1,,,"{""a"": ",,', "invalid_json", "contact_context"),
    ],
    ids=["letters", "negative", "zero", "float-text", "empty", "too-big", "nothing",
         "only-spaces", "bad-json"],
)  # fmt: skip
def test_invalid_rows(tmp_path: Path, row: str, code: str, column: str | None) -> None:
    _batch, plan = plan_for(tmp_path, row + "\n2,Ok,,,,\n")
    assert [r.interview_id for r in requests_of(plan)] == [2]  # the other rows go on
    settled = plan.settled[0]
    assert (settled.status, settled.error_code) == ("invalid", code)
    assert "in.csv row 1" in settled.error_message
    if column:
        assert f"column {column}" in settled.error_message


def test_rows_of_one_interview_are_one_request(tmp_path: Path) -> None:
    batch, plan = plan_for(tmp_path, "5,Ana,Old,first,,\n6,Bo,,,,\n5,,New,,,\n5,Ana R,,second,,\n")
    first, second = requests_of(plan)
    assert first.interview_id == 5 and first.rows == [0, 2, 3]
    assert body_of(first) == {
        "contact_name": "Ana R",
        "objective": "New",
        "contact_context": "second",
    }
    assert second.interview_id == 6
    lines = b"".join(plan_lines(plan, batch)).decode().splitlines()
    assert [s["source_row"] for s in json.loads(lines[0])["source_rows"]] == [1, 3, 4]
    assert json.loads(lines[1])["source_rows"] == [{"source_file": batch.files[0],
                                                     "source_row": 2}]  # fmt: skip


def test_contacts_become_ordered_chains(tmp_path: Path) -> None:
    _b, plan = plan_for(tmp_path, "1,,,a,X@y.com,\n2,,,b,,\n3,,,c,x@y.com,\n4,,,d,z@y.com,\n")
    queue = ChainQueue(plan.table)
    chains = []
    while queue:
        chains.append([r.interview_id for r in queue.popleft()])
    assert chains == [[1, 3], [2], [4]]
    assert plan.contacts_with_several_contexts() == 1


def test_longest_chains_go_first(tmp_path: Path) -> None:
    """A long chain started last would hold the run's end open, one request per answer."""
    rows = "1,,,a,a@y.com,\n2,,,b,b@y.com,\n3,,,c,c@y.com,\n4,,,d,b@y.com,\n5,,,e,c@y.com,\n"
    _b, plan = plan_for(tmp_path, rows + "6,,,f,c@y.com,\n7,,,g,,\n")
    queue = ChainQueue(plan.table)
    chains = []
    while queue:
        chains.append([r.interview_id for r in queue.popleft()])
    assert chains == [[3, 5, 6], [2, 4], [1], [7]]


def test_chains_are_made_in_groups_and_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ChainQueue, "CHAINS", 2)
    rows = "".join(f"{i},,,c{i},{'ab'[i % 2] if i < 5 else f'p{i}'}@y.com,\n" for i in range(1, 9))
    _b, plan = plan_for(tmp_path, rows)
    queue = ChainQueue(plan.table)
    first = queue.popleft()
    assert [r.interview_id for r in first] == [1, 3]
    assert first.popleft().interview_id == 1
    queue.appendleft(first)  # partly sent: the rest comes back first
    assert len(queue) == 6
    chains = []
    while queue:
        chains.append([r.interview_id for r in queue.popleft()])
    assert chains == [[3], [2, 4], [5], [6], [7], [8]]


def test_merge_combines_contact_contexts_in_file_order(tmp_path: Path) -> None:
    options = PlanOptions(merge=True)
    memory = Memory(state_contexts={"x@y.com": "old"})
    _b, plan = plan_for(tmp_path, "1,,,first,x@y.com,\n2,,,second,x@y.com,\n3,,,solo,,\n", options,
                        memory)  # fmt: skip
    one, two, three = requests_of(plan)
    assert body_of(one)["contact_context"] == "old\n\nfirst\n\nsecond"
    assert body_of(two)["contact_context"] == body_of(one)["contact_context"]
    assert (one.merge, two.merge, three.merge) == ("merged", "merged", "no_existing")
    assert body_of(three)["contact_context"] == "solo"
    assert (plan.contacts_merged, plan.contacts_no_existing) == (1, 1)


def test_notes_file_wins_over_state(tmp_path: Path) -> None:
    memory = Memory(
        state_contexts={"x@y.com": "from state"},
        notes_by_email={"x@y.com": [Note(1, {"stage": "lost"}, "2026-01-01T00:00:00.000Z")]},
        notes_by_interview={2: [Note(2, "by id", "2026-01-01T00:00:00.000Z")]},
    )
    options = PlanOptions(merge=True, rules=MergeRules.build("\n", []))
    _b, plan = plan_for(tmp_path, "1,,,new,X@Y.com,\n2,,,other,,\n", options, memory)
    assert body_of(requests_of(plan)[0])["contact_context"] == {"stage": "lost", "notes": "new"}
    assert body_of(requests_of(plan)[1])["contact_context"] == "by id\nother"


def test_merge_without_new_context_leaves_notes_alone(tmp_path: Path) -> None:
    memory = Memory(state_contexts={"interview:1": "old"})
    _b, plan = plan_for(tmp_path, "1,Ana,,,,\n", PlanOptions(merge=True), memory)
    assert body_of(requests_of(plan)[0]) == {"contact_name": "Ana"}
    assert requests_of(plan)[0].merge == "off"


def test_unchanged_rows_are_skipped_unless_forced(tmp_path: Path) -> None:
    _b, first = plan_for(tmp_path, "1,Ana,,,,\n2,Bo,,,,\n")
    memory = Memory(sent_hashes={1: requests_of(first)[0].sha256, 2: "something else"})
    _b, second = plan_for(tmp_path, "1,Ana,,,,\n2,Bo,,,,\n", memory=memory)
    assert [r.interview_id for r in requests_of(second)] == [2]
    assert second.settled[0].status == "skipped_unchanged"
    _b, forced = plan_for(tmp_path, "1,Ana,,,,\n2,Bo,,,,\n", PlanOptions(force=True), memory)
    assert len(requests_of(forced)) == 2


def test_max_rows_leaves_the_rest_not_attempted(tmp_path: Path) -> None:
    _b, plan = plan_for(tmp_path, "1,A,,,,\n2,B,,,,\n3,C,,,,\n", PlanOptions(max_rows=2))
    assert [r.interview_id for r in requests_of(plan)] == [1, 2]
    assert plan.settled[2].status == "not_attempted"


cell_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\x00"),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(cell_text, cell_text, cell_text, cell_text), min_size=1,
                     max_size=6))  # fmt: skip
def test_both_roads_build_the_same_bytes(rows: list[tuple[str, str, str, str]]) -> None:
    """Quotes, backslashes, control characters, any script: the column road escapes exactly as
    json.dumps does, so hashes agree whichever road a row takes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["interview_id", "contact_name", "objective", "contact_context",
                             "context.k\\\"ey"])  # fmt: skip
            for number, (name, objective, context, extra) in enumerate(rows, start=1):
                writer.writerow([number, name, objective, context.lstrip("{"), extra])
        batch = read_batch([str(path)], ReadOptions())
        vector = build_plan(batch, PlanOptions(), Memory())
        by_rows = build_plan(batch, PlanOptions(vectorise=False), Memory())
    assert [astuple(r) for r in requests_of(vector)] == [astuple(r) for r in requests_of(by_rows)]
    assert vector.settled == by_rows.settled


@pytest.mark.parametrize("name", SENT_FIELDS)
def test_every_field_of_the_table_reaches_the_body_by_both_roads(tmp_path: Path, name: str) -> None:
    """A field added to fields.FIELDS is read, validated and sent with no other edit."""
    path = tmp_path / "in.csv"
    path.write_text(f"interview_id,{name.upper()}\n7,some text\n8,\n", encoding="utf-8")
    batch = read_batch([str(path)], ReadOptions())
    for vectorise in (True, False):
        plan = build_plan(batch, PlanOptions(vectorise=vectorise), Memory())
        [request] = requests_of(plan)
        assert body_of(request) == {name: "some text"}
        assert plan.settled[1].error_code == "no_fields"


def _strict_json(body: bytes) -> Any:
    """RFC 8259 only: UTF-8, no NaN or Infinity, no number beyond a double."""

    def refuse(literal: str) -> Any:
        raise ValueError(f"not strict JSON: {literal}")

    def finite(literal: str) -> float:
        if not math.isfinite(float(literal)):
            refuse(literal)
        return float(literal)

    return json.loads(body.decode("utf-8"), parse_constant=refuse, parse_float=finite)


number_like = st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "1e400", "null", "{"])


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(cell_text | number_like, cell_text | number_like), min_size=1,
                     max_size=6))  # fmt: skip
def test_the_column_road_only_ever_builds_strict_json(rows: list[tuple[str, str]]) -> None:
    """The column road quotes text cells and nothing else, so a cell reading NaN is the text
    "NaN", and every body is strict JSON whatever the cells hold."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["interview_id", "contact_name", "context.k"])
            writer.writerows([number, *cells] for number, cells in enumerate(rows, start=1))
        batch = read_batch([str(path)], ReadOptions())
        plan = build_plan(batch, PlanOptions(), Memory())
    sent = {request.interview_id: _strict_json(request.body_json) for request in requests_of(plan)}
    for number, (name, extra) in enumerate(rows, start=1):
        body = sent.get(number, {})
        if name in ("NaN", "Infinity", "1e400"):
            assert body["contact_name"] == name  # text, never a number
        if extra in ("NaN", "Infinity", "1e400"):
            assert body["contact_context"] == {"k": extra}
