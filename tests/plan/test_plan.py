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

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker.fields import SENT_FIELDS
from sync_worker.merger import MergeRules
from sync_worker.plan import (
    Memory,
    Outcomes,
    Plan,
    PlanOptions,
    Settled,
    build_plan,
    model,
    plan_lines,
)
from sync_worker.plan.cells import Cells
from sync_worker.plan.contacts import Contacts, lower
from sync_worker.plan.model import Known, Note
from sync_worker.plan.request_table import ChainQueue, Request
from sync_worker.read.reader import Batch, ReadOptions, read_batch
from sync_worker.store.digests import hex_digests
from sync_worker.store.remembered import Remembered, Sent


def requests_of(plan: Plan) -> list[Request]:
    return list(plan.table)


def body_of(request: Request) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(request.body_json)
    return value


HEADER = "interview_id,contact_name,objective,contact_context,contact_email,context.title\n"


def plan_for(
    tmp_path: Path,
    body: str,
    options: PlanOptions | None = None,
    memory: Memory | None = None,
    coalesce: bool = False,
) -> tuple[Batch, Plan]:
    """The plan, after checking that both roads (columns, row by row) agree on every byte; by
    default each request as the roads build it, before a contact's fields are coalesced
    (tests/plan/test_coalesce.py holds that step)."""
    path = tmp_path / "in.csv"
    path.write_text(HEADER + body, encoding="utf-8")
    batch = read_batch([str(path)], ReadOptions())
    options = dataclasses.replace(options or PlanOptions(), coalesce=coalesce)
    plan = build_plan(batch, options, memory or Memory())
    by_rows = build_plan(batch, dataclasses.replace(options, vectorise=False), memory or Memory())
    assert_same_plans(plan, by_rows)
    return batch, plan


def assert_same_plans(plan: Plan, reference: Plan, sending: bool = True) -> None:
    """Every byte and every count of two plans (the column roads' and the row road's). Not
    sending (`plan`), the column roads leave out what only a run needs: each request's contact
    and context for the state, the notes merged onto for the history."""
    assert [_compared(r, sending) for r in requests_of(plan)] == [
        _compared(r, sending) for r in requests_of(reference)
    ]
    assert plan.settled == reference.settled
    assert (plan.contacts_merged, plan.contacts_no_existing) == (
        reference.contacts_merged,
        reference.contacts_no_existing,
    )
    if sending:
        assert _to_send(plan.known_notes(), plan) == _to_send(reference.known_notes(), reference)


def _to_send(known: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The row road knows the notes of every merged contact; what matters (the history's value
    before) is those of the contacts with requests to send."""
    contacts = set(plan.table.contact.to_pylist())
    return {contact: notes for contact, notes in known.items() if contact in contacts}


def _compared(request: Request, sending: bool) -> tuple[Any, ...]:
    if sending:
        return astuple(request)
    return (request.interview_id, request.body_json, request.sha256, request.rows, request.merge)


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
        "name-only",
        "objective-only",
        "text-context",
        "json-context",
        "json-after-space",
        "context-column",
        "text-plus-column-under-notes",
        "json-plus-column",
        "trimmed",
        "leading-zeros",
        "nan-is-text",
        "email-never-sent",
    ],
)
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
    ids=[
        "letters",
        "negative",
        "zero",
        "float-text",
        "empty",
        "too-big",
        "nothing",
        "only-spaces",
        "bad-json",
    ],
)
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
    assert json.loads(lines[1])["source_rows"] == [{"source_file": batch.files[0], "source_row": 2}]


def test_contacts_become_ordered_chains(tmp_path: Path) -> None:
    _b, plan = plan_for(tmp_path, "1,,,a,X@y.com,\n2,,,b,,\n3,,,c,x@y.com,\n4,,,d,z@y.com,\n")
    queue = ChainQueue(plan.table)
    chains = []
    while queue:
        chains.append([r.interview_id for r in queue.popleft()])
    assert chains == [[1, 3], [2], [4]]
    assert plan.several_contexts == 1


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
    memory = Memory(state=Remembered.of({"x@y.com": "old"}))
    _b, plan = plan_for(
        tmp_path, "1,,,first,x@y.com,\n2,,,second,x@y.com,\n3,,,solo,,\n", options, memory
    )
    one, two, three = requests_of(plan)
    assert body_of(one)["contact_context"] == "old\n\nfirst\n\nsecond"
    assert body_of(two)["contact_context"] == body_of(one)["contact_context"]
    assert (one.merge, two.merge, three.merge) == ("merged", "merged", "no_existing")
    assert body_of(three)["contact_context"] == "solo"
    assert (plan.contacts_merged, plan.contacts_no_existing) == (1, 1)


def test_notes_file_wins_over_state(tmp_path: Path) -> None:
    memory = Memory(
        state=Remembered.of({"x@y.com": "from state"}),
        notes_by_email={"x@y.com": [Note(1, {"stage": "lost"}, "2026-01-01T00:00:00.000Z")]},
        notes_by_interview={2: [Note(2, "by id", "2026-01-01T00:00:00.000Z")]},
    )
    options = PlanOptions(merge=True, rules=MergeRules.build("\n", []))
    _b, plan = plan_for(tmp_path, "1,,,new,X@Y.com,\n2,,,other,,\n", options, memory)
    assert body_of(requests_of(plan)[0])["contact_context"] == {"stage": "lost", "notes": "new"}
    assert body_of(requests_of(plan)[1])["contact_context"] == "by id\nother"


def test_merge_without_new_context_leaves_notes_alone(tmp_path: Path) -> None:
    memory = Memory(state=Remembered.of({"interview:1": "old"}))
    _b, plan = plan_for(tmp_path, "1,Ana,,,,\n", PlanOptions(merge=True), memory)
    assert body_of(requests_of(plan)[0]) == {"contact_name": "Ana"}
    assert requests_of(plan)[0].merge == "off"


def test_unchanged_rows_are_skipped_unless_forced(tmp_path: Path) -> None:
    _b, first = plan_for(tmp_path, "1,Ana,,,,\n2,Bo,,,,\n")
    memory = Memory(sent=Sent.of({1: requests_of(first)[0].sha256, 2: "something else"}))
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
@given(rows=st.lists(st.tuples(cell_text, cell_text, cell_text, cell_text), min_size=1, max_size=6))
def test_both_roads_build_the_same_bytes(rows: list[tuple[str, str, str, str]]) -> None:
    """Quotes, backslashes, control characters, any script: the column road escapes exactly as
    json.dumps does, so hashes agree whichever road a row takes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["interview_id", "contact_name", "objective", "contact_context", 'context.k\\"ey']
            )
            for number, (name, objective, context, extra) in enumerate(rows, start=1):
                writer.writerow([number, name, objective, context.lstrip("{"), extra])
        batch = read_batch([str(path)], ReadOptions())
        vector = build_plan(batch, PlanOptions(), Memory())
        by_rows = build_plan(batch, PlanOptions(vectorise=False), Memory())
    assert_same_plans(vector, by_rows)


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
@given(
    rows=st.lists(
        st.tuples(cell_text | number_like, cell_text | number_like), min_size=1, max_size=6
    )
)
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


# Merging: the column road (flat contacts) and the row road in chunks, against the row road ----

EMAILS = [
    "a@x.com",
    "A@X.com ",
    "b@x.com",
    "\u0130nci@x.com",
    "i\u0307nci@x.com",
    "",
    "interview:3",
]
CONTACT_KEYS = ["a@x.com", "b@x.com", "i\u0307nci@x.com", "interview:1", "interview:3"]
OLD_NOTES: list[Any] = [
    "old",
    "",
    {},
    {"stage": "Old"},
    {"title": "CTO", "stage": "Demo"},
    {"title": {"deep": "x"}, "notes": "kept"},
    None,
]
TIMES = ["2026-01-01T00:00:00.000Z", "2027-01-01T00:00:00.000Z"]
CONTEXTS = [
    "",
    "",
    "",
    "",
    "",
    "text a",
    "text b",
    '{"title": "VP"}',
    "{bad",
    '{"k": {"n": 1}, "notes": "j"}',
]
merged_row = st.tuples(
    st.integers(1, 12).map(str) | st.sampled_from(["1", "0", "x"]),  # some of several rows
    st.sampled_from(EMAILS),
    st.sampled_from(["", "Ana", "Bo"]),
    st.sampled_from(CONTEXTS),
    st.sampled_from(["", "CTO", "CFO"]) | cell_text,  # context.title
    st.sampled_from(["", "Demo", "Won"]),  # context.stage
    st.sampled_from(["", "", "", "note cell"]),  # context.notes: an append key
)
state_notes = st.dictionaries(st.sampled_from(CONTACT_KEYS), st.sampled_from(OLD_NOTES))
file_notes = st.lists(
    st.tuples(
        st.sampled_from(["a@x.com", "b@x.com", ""]),
        st.sampled_from([None, 1, 2, 3]),
        st.sampled_from(OLD_NOTES[:-1]),
        st.sampled_from(TIMES),
    ),
    max_size=4,
)


flat_row = st.tuples(
    st.sampled_from(EMAILS),
    st.sampled_from(["", "Ana"]),
    st.sampled_from(["", "", "", "", "", "", "", "", "text a", '{"title": "VP"}']),
    st.sampled_from(["", "CTO", "CFO"]) | cell_text,  # context.title
    st.sampled_from(["", "Demo", "Won"]),  # context.stage
    st.sampled_from(["", "", "", "", "", "note cell"]),  # context.notes: an append key
)
merge_setting = {
    "state": state_notes,
    "notes": file_notes,
    "chunk_rows": st.integers(1, 4),
    "append": st.sampled_from([(), ("title",), ("stage", "k")]),
    "sending": st.booleans(),
    "skipped": st.sets(st.integers(1, 14)),
}


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(merged_row, min_size=1, max_size=14), **merge_setting)
def test_merged_roads_build_the_same_bytes(
    rows: list[tuple[str, ...]],
    state: dict[str, Any],
    notes: list[tuple[str, int | None, Any, str]],
    append: tuple[str, ...],
    chunk_rows: int,
    sending: bool,
    skipped: set[int],
) -> None:
    """Any shape: flat contacts by columns, the others row by row in chunks of whole contacts
    (of one to four rows here, so boundaries fall everywhere), existing notes from the state
    and a notes file, skipping: every byte, label, count and skipped row is the row road's."""
    _check_merged_roads(rows, state, notes, append, chunk_rows, sending, skipped)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(flat_row, min_size=1, max_size=10), **merge_setting)
def test_flat_contacts_merge_as_the_row_road_merges(
    rows: list[tuple[str, ...]],
    state: dict[str, Any],
    notes: list[tuple[str, int | None, Any, str]],
    append: tuple[str, ...],
    chunk_rows: int,
    sending: bool,
    skipped: set[int],
) -> None:
    """The column road's own shape, mostly: one row per interview, context columns, an append
    key now and then (which sends the contact to the row road)."""
    numbered = [(str(number), *row) for number, row in enumerate(rows, start=1)]
    _check_merged_roads(numbered, state, notes, append, chunk_rows, sending, skipped)


def _check_merged_roads(
    rows: list[tuple[str, ...]],
    state: dict[str, Any],
    notes: list[tuple[str, int | None, Any, str]],
    append: tuple[str, ...],
    chunk_rows: int,
    sending: bool,
    skipped: set[int],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "interview_id",
                    "contact_email",
                    "contact_name",
                    "contact_context",
                    "context.title",
                    "context.stage",
                    "context.notes",
                ]
            )
            writer.writerows(rows)
        batch = read_batch([str(path)], ReadOptions())
    options = PlanOptions(
        merge=True,
        rules=MergeRules.build(" | ", append),
        for_sending=sending,
        chunk_rows=chunk_rows,
    )
    memory = _merge_memory(state, notes)
    reference = build_plan(batch, dataclasses.replace(options, vectorise=False), memory)
    sent = {r.interview_id: r.sha256 for r in requests_of(reference) if r.interview_id in skipped}
    memory = dataclasses.replace(memory, sent=Sent.of(sent))
    plan = build_plan(batch, options, memory)
    reference = build_plan(batch, dataclasses.replace(options, vectorise=False), memory)
    assert_same_plans(plan, reference, sending)
    in_requests = [p for r in requests_of(plan) for p in r.rows]
    assert sorted(in_requests + list(plan.settled)) == list(range(len(rows)))  # each row once


def _merge_memory(state: dict[str, Any], notes: list[tuple[str, int | None, Any, str]]) -> Memory:
    by_email: dict[str, list[Note]] = {}
    by_interview: dict[int, list[Note]] = {}
    for row, (email, interview, context, time) in enumerate(notes, start=1):
        if email:
            by_email.setdefault(email, []).append(Note(row, context, time))
        if interview is not None:
            by_interview.setdefault(interview, []).append(Note(row, context, time))
    times = {contact: TIMES[len(contact) % 2] for contact in state}
    return Memory(
        state=Remembered.of(state, times), notes_by_email=by_email, notes_by_interview=by_interview
    )


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5, 100], ids=lambda n: f"chunk-{n}")
def test_chunks_of_contacts_never_split_one(tmp_path: Path, chunk_rows: int) -> None:
    """Rows of one contact (by email, or by an interview's several rows) always share a chunk,
    each chunk in file order, and every row is in exactly one."""
    rows = "".join(
        f"{i % 4 + 1},,,text {i},{'ab'[i % 2] if i % 3 else ''}@x.com,\n" for i in range(12)
    )
    batch, _plan = plan_for(tmp_path, rows, PlanOptions(merge=True, chunk_rows=chunk_rows))
    cells = Cells.of(batch)
    contacts = Contacts.of(cells, np.flatnonzero(cells.sendable))
    chunks = list(contacts.chunks(chunk_rows))
    assert sorted(p for chunk in chunks for p in chunk.positions.tolist()) == list(range(12))
    for chunk in chunks:
        assert chunk.positions.tolist() == sorted(chunk.positions.tolist())
        others = [set(c.codes.tolist()) for c in chunks if c is not chunk]
        assert not any(set(chunk.codes.tolist()) & other for other in others)


def test_an_interview_of_several_rows_is_one_contact_by_its_first_email(tmp_path: Path) -> None:
    """The row road's rule, for whole columns: an interview's contact is the first e-mail among
    its rows, so its rows with other e-mails (or none) join that contact."""
    rows = "7,,,a,,\n7,,,b,B@x.com,\n7,,,c,c@x.com,\n8,,,d,c@x.com,\n9,,,e,,\n"
    batch, _plan = plan_for(tmp_path, rows, PlanOptions(merge=True))
    cells = Cells.of(batch)
    contacts = Contacts.of(cells, np.flatnonzero(cells.sendable))
    keys = contacts.keys.take(pa.array(contacts.codes)).to_pylist()
    assert keys == ["b@x.com", "b@x.com", "b@x.com", "c@x.com", "interview:9"]


@pytest.mark.parametrize(
    "email",
    ["Ana@X.com", "\u0130nci@x.com", "STRASSE\u00df@x.com", "\u1c89@x.com", "caf\u00c9@x.com"],
    ids=["ascii", "dotted-capital-i", "sharp-s", "newer-unicode", "accent"],
)
def test_emails_are_lowered_as_python_lowers_them(email: str) -> None:
    """Arrow's utf8_lower differs from str.lower (U+0130 loses its dot): the contact key must be
    the row road's, or one contact's rows would part."""
    assert lower(pa.chunked_array([[email, "x@y.z"]])).to_pylist() == [email.lower(), "x@y.z"]


def test_merged_rows_share_their_contacts_latest_values(tmp_path: Path) -> None:
    """A flat contact (context columns only): each key's last value among its rows, sent by
    every row, merged onto the state's notes; a contact without context sends none."""
    memory = Memory(state=Remembered.of({"a@x.com": {"title": "CEO", "since": "2020"}}))
    body = "1,,,,a@x.com,CTO\n2,Bo,,,b@x.com,\n3,Al,,,A@x.com,\n4,,,,a@x.com,CFO\n5,Cy,,,c@x.com,\n"
    _b, plan = plan_for(tmp_path, body, PlanOptions(merge=True), memory)
    contexts = {r.interview_id: body_of(r).get("contact_context") for r in requests_of(plan)}
    a = {"title": "CFO", "since": "2020"}
    assert contexts == {1: a, 2: None, 3: a, 4: a, 5: None}
    assert [r.merge for r in requests_of(plan)] == ["merged", "off", "merged", "merged", "off"]
    assert (plan.contacts_merged, plan.contacts_no_existing) == (1, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ab" * 32, bytes.fromhex("ab" * 32)),
        ("AB" * 32, None),
        ("ab" * 31, None),
        ("g" * 64, None),
        ("", None),
        (None, None),
    ],
    ids=["digest", "upper-case", "short", "not-hex", "empty", "null"],
)
def test_hex_hashes_become_digests_or_null(text: str | None, expected: bytes | None) -> None:
    """Only what hexdigest writes can equal a payload's hash: anything else is null (so a
    damaged or foreign hash in the state is never taken as unchanged)."""
    digests = hex_digests(pa.array([text, "00" * 32], pa.string()))
    assert digests.to_pylist() == [expected, bytes(32)]


def test_sent_keeps_each_interviews_last_hash() -> None:
    hashes = hex_digests(pa.array(["aa" * 32, "bb" * 32, "cc" * 32]))
    sent = Sent.latest(np.array([5, 3, 5], dtype=np.int64), pa.chunked_array([hashes]))
    found = sent.hashes_of(np.array([3, 4, 5], dtype=np.int64)).to_pylist()
    assert found == [bytes.fromhex("bb" * 32), None, bytes.fromhex("cc" * 32)]


def test_outcomes_read_bulk_and_single_rows_in_order(tmp_path: Path) -> None:
    """Requests set aside in bulk are columns, made into outcomes as read; a row settled one by
    one wins over the same row in bulk."""
    _b, plan = plan_for(tmp_path, "1,A,,,,\n2,B,,,,\n1,C,,,,\n3,D,,,,\n")
    outcomes = Outcomes({5: Settled("invalid", "bad_json")})
    outcomes.set_aside("skipped_unchanged", plan.table, np.array([0, 1], dtype=np.int64))
    outcomes[3] = Settled("not_attempted")
    hashes = [r.sha256 for r in requests_of(plan)]
    assert list(outcomes) == [0, 1, 2, 3, 5]
    assert outcomes[2] == Settled("skipped_unchanged", sha256=hashes[0])  # row 3 of request 1
    assert outcomes[1] == Settled("skipped_unchanged", sha256=hashes[1])
    assert outcomes[3] == Settled("not_attempted") and len(outcomes) == 5
    assert outcomes.invalid() == [(5, Settled("invalid", "bad_json"))]
    (chunk,) = outcomes.chunks()
    assert chunk.positions.tolist() == [0, 1, 2, 3, 5]
    assert chunk.hashes == [hashes[0], hashes[1], hashes[0], "", ""]
    assert chunk.statuses == ["skipped_unchanged"] * 3 + ["not_attempted", "invalid"]
    assert chunk.codes == ["", "", "", "", "bad_json"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.sets(st.integers(0, 11)),
    second=st.sets(st.integers(0, 11)),
    singles=st.sets(st.integers(0, 13)),
    chunk=st.sampled_from([1, 2, 5, 1000]),
)
def test_outcomes_chunks_are_every_row_once_in_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first: set[int],
    second: set[int],
    singles: set[int],
    chunk: int,
) -> None:
    """Two bulk set-asides (a nightly skip, then --max-rows leaving some out) and rows settled
    one by one, interleaved: the chunks the ledger writes are every row once, in position
    order, each as `outcomes[row]` reads it, CHUNK rows at a time."""
    monkeypatch.setattr(model, "CHUNK", chunk)
    _b, plan = plan_for(tmp_path, "".join(f"{i % 7},N{i},,,,\n" for i in range(12)))
    second -= first  # a request is set aside once
    outcomes = Outcomes({p: Settled("invalid", "x") for p in singles})
    for status, indices in (("skipped_unchanged", first), ("not_attempted", second)):
        picked = [i for i in sorted(indices) if i < len(plan.table)]
        outcomes.set_aside(status, plan.table, np.array(picked, dtype=np.int64))
    read = []
    for rows in outcomes.chunks():
        assert 0 < len(rows.positions) <= chunk
        read += list(rows.outcomes())
    positions = [p for p, _s in read]
    assert positions == sorted(set(positions)) and len(read) == len(outcomes)
    assert read == [(p, outcomes[p]) for p in positions] == list(outcomes.items())


@pytest.mark.parametrize(
    ("file_time", "expected", "source"),
    [
        ("2027-01-01T00:00:00.000Z", {"stage": "Demo", "title": "CTO", "kept": "x"}, "notes_file"),
        ("2025-01-01T00:00:00.000Z", {"stage": "Demo", "title": "CTO"}, "earlier_send"),
    ],
    ids=["newer-file-wins", "older-file-loses"],
)
def test_a_newer_notes_file_wins_even_over_a_state_that_holds_the_new_context(
    tmp_path: Path, file_time: str, expected: dict[str, str], source: str
) -> None:
    """The state already holds exactly the new context (the nightly shortcut), but a notes file
    newer than the state's send names the contact: the file is what the context merges onto."""
    sent = {"stage": "Demo", "title": "CTO"}
    memory = Memory(
        state=Remembered.of({"a@x.com": sent}, {"a@x.com": "2026-01-01T00:00:00.000Z"}),
        notes_by_email={"a@x.com": [Note(1, {"stage": "Old", "kept": "x"}, file_time)]},
    )
    path = tmp_path / "in.csv"
    path.write_text(
        "interview_id,contact_email,context.stage,context.title\n1,a@x.com,Demo,CTO\n",
        encoding="utf-8",
    )
    batch = read_batch([str(path)], ReadOptions())
    plan = build_plan(batch, PlanOptions(merge=True), memory)
    assert_same_plans(plan, build_plan(batch, PlanOptions(merge=True, vectorise=False), memory))
    assert body_of(requests_of(plan)[0])["contact_context"] == expected
    assert plan.known_notes()["a@x.com"].source == source


def test_both_roads_key_a_non_ascii_email_alike(tmp_path: Path) -> None:
    """Without merging too: the column road lowered `İnci@` as Arrow does (`inci@`), the row
    road as Python does (`i̇nci@`), so one contact's rows made two chains."""
    _b, plan = plan_for(tmp_path, '1,,,hello,\u0130nci@x.com,\n2,,,"{""a"": 1}",\u0130nci@x.com,\n')
    assert [r.contact for r in requests_of(plan)] == ["i\u0307nci@x.com"] * 2
    assert len(list(ChainQueue(plan.table).popleft())) == 2  # one chain


def test_notes_the_state_holds_unchanged_are_the_value_before_of_a_request_sent(
    tmp_path: Path,
) -> None:
    """The nightly shortcut keeps no notes object for contacts whose remembered context is the
    one they send; a request of theirs still sent (its name changed) gets them back for the
    history, as the row road knows them."""
    context = {"stage": "Demo", "title": "CTO"}
    memory = Memory(state=Remembered.of({"a@x.com": context, "b@x.com": context}))
    body = "1,Ana,,,a@x.com,CTO\n2,Bo,,,b@x.com,CTO\n"
    path = tmp_path / "in.csv"
    path.write_text(
        "interview_id,contact_name,objective,contact_context,contact_email,"
        "context.title,context.stage\n" + body.replace("CTO\n", "CTO,Demo\n"),
        encoding="utf-8",
    )
    batch = read_batch([str(path)], ReadOptions())
    first = build_plan(batch, PlanOptions(merge=True), memory)
    memory = dataclasses.replace(memory, sent=Sent.of({2: requests_of(first)[1].sha256}))
    plan = build_plan(batch, PlanOptions(merge=True), memory)
    assert [r.interview_id for r in requests_of(plan)] == [1]  # 2 is unchanged
    assert plan.known_notes() == {"a@x.com": Known(context, "earlier_send")}
    assert len(plan.known_as_sent) == 2 and not plan.known_before


@pytest.mark.parametrize(
    ("notes", "rows", "sent"),
    [
        ("{}", ["hello"], {"notes": "hello"}),
        ("", ["hello"], "hello"),
        ("{}", ["hello", '{"a": 1}'], {"a": 1, "notes": "hello"}),
    ],
    ids=["empty-object-plus-text", "empty-text-plus-text", "empty-object-two-rows"],
)
def test_empty_existing_notes_keep_their_kind(
    tmp_path: Path, notes: str, rows: list[str], sent: object
) -> None:
    """Known-empty notes: an empty object stays an object (text goes under `notes`), empty
    text is nothing (text stays text); by both roads (one row per contact, and several)."""
    from click.testing import CliRunner

    from sync_worker.cli import main

    inputs = tmp_path / "in.csv"
    inputs.write_text(
        "interview_id,contact_email,contact_context\n"
        + "".join(
            f'{n},a@x.com,"{r.replace(chr(34), chr(34) * 2)}"\n' for n, r in enumerate(rows, 1)
        )
    )
    notes_file = tmp_path / "notes.csv"
    notes_file.write_text(f"contact_email,notes\na@x.com,{notes}\n")
    result = CliRunner().invoke(
        main,
        ["plan", str(inputs), "--existing-notes", str(notes_file), "--state", str(tmp_path / "s")],
    )
    assert result.exit_code == 0, result.output
    bodies = [json.loads(line)["body"] for line in result.stdout.splitlines()]
    assert bodies and all(body["contact_context"] == sent for body in bodies)
