"""Turn a batch of rows into the requests a run sends, and settle the rows it will not send.

Pure: takes the batch, the merge inputs and what the state remembers; returns a Plan. Rows of
one interview become one request; requests of one contact form a chain sent in file order.

Two roads to the same payloads. The common row (a valid id, plain-text cells, its interview's
only row, no merging) is built for whole columns at once with Arrow (`_vector_requests`).
Every other row (JSON contexts, several rows of one interview, merging) takes the row-by-row
road (`_row_requests`). Both produce the same canonical JSON, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker import vectorjson as vj
from sync_worker.merger import Context, MergeRules, fold, parse_context
from sync_worker.reader import CONTEXT_PREFIX, Batch
from sync_worker.request_table import (
    CHUNK,
    Ints,
    Request,
    RequestTable,
    concat,
    contacts_with_several_contexts,
    sha256_hex,
)

MAX_ID_TEXT = str(2**63 - 1)
NOTES_KEY = "notes"
TEXT_FIELDS = ("contact_name", "objective")

INVALID = "invalid"
SKIPPED = "skipped_unchanged"
NOT_ATTEMPTED = "not_attempted"


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of a row decided before any request: invalid, skipped or left out."""

    status: str
    error_code: str = ""
    error_message: str = ""
    sha256: str = ""
    merge: str = "off"


@dataclass
class Plan:
    table: RequestTable  # the requests to send, in file order
    settled: dict[int, Settled]  # row position -> outcome decided up front
    contacts_merged: int = 0
    contacts_no_existing: int = 0

    @property
    def requests(self) -> list[Request]:
        """Every request as an object (small plans and tests; runs take them chain by chain)."""
        return list(self.table)

    def rows_to_send(self) -> int:
        return self.table.row_count()

    def contacts_with_several_contexts(self) -> int:
        return contacts_with_several_contexts(self.table)


@dataclass(frozen=True)
class PlanOptions:
    merge: bool = False
    rules: MergeRules = field(default_factory=MergeRules)
    force: bool = False
    max_rows: int | None = None
    vectorise: bool = True  # False: every row takes the row-by-row road (tests compare both)
    for_sending: bool = True  # False (`plan`): skip what only sending needs (contacts, contexts)


@dataclass(frozen=True)
class Memory:
    """What is known before the run: the state's last sends and a notes export."""

    sent_hashes: Mapping[int, str] = field(default_factory=dict)
    state_contexts: Mapping[str, Context] = field(default_factory=dict)
    notes_by_email: Mapping[str, Context] = field(default_factory=dict)
    notes_by_interview: Mapping[int, Context] = field(default_factory=dict)


def build_plan(batch: Batch, options: PlanOptions, memory: Memory) -> Plan:
    """Validate rows, combine them per interview and contact, merge, hash and skip."""
    cells = Cells.of(batch)
    settled: dict[int, Settled] = {}
    _settle_invalid(batch, cells, settled)
    by_columns = cells.sendable & ~cells.needs_rows(options)
    if not options.vectorise:
        by_columns = np.zeros(len(batch), dtype=bool)
    plan = Plan(RequestTable.empty(), settled)
    row_requests = _row_requests(batch, cells, np.flatnonzero(cells.sendable & ~by_columns),
                                 options, memory, plan)  # fmt: skip
    vector = _vector_requests(cells, by_columns, options.for_sending)
    plan.table = concat([vector, RequestTable.from_requests(row_requests)])
    _skip_unchanged(plan, options, memory)
    _apply_max_rows(plan, options.max_rows)
    return plan


# -- the cells, checked for whole columns at once ---------------------------------------------


@dataclass
class Cells:
    """Stripped text columns and the row masks every later step needs."""

    ids: pa.ChunkedArray  # interview_id as written, stripped
    id_numbers: Ints  # as integers where valid, 0 elsewhere
    valid_id: np.ndarray  # bool per row
    text: dict[str, pa.ChunkedArray]  # contact_name, objective, contact_context, contact_email
    context: dict[str, pa.ChunkedArray]  # context key -> column
    has_fields: np.ndarray  # something to update: a name, an objective or a context

    @classmethod
    def of(cls, batch: Batch) -> Cells:
        frame = batch.frame

        def stripped(column: str) -> pa.ChunkedArray:
            values = pa.array(frame[column], pa.string())
            if not isinstance(values, pa.ChunkedArray):
                values = pa.chunked_array([values])
            return pc.utf8_trim_whitespace(values) if _may_need_trimming(values) else values

        ids = stripped("interview_id")
        valid = _valid_ids(ids)
        numbers = pc.cast(pc.if_else(valid, ids, "0"), pa.int64()).to_numpy()
        text = {c: stripped(c) for c in (*TEXT_FIELDS, "contact_context", "contact_email")}
        context = {k: stripped(CONTEXT_PREFIX + k) for k in batch.context_keys}
        filled = [_nonempty(text[c]) for c in (*TEXT_FIELDS, "contact_context")]
        filled += [_nonempty(column) for column in context.values()]
        has_fields = np.logical_or.reduce(filled) if filled else np.zeros(len(frame), bool)
        return cls(ids, numbers, valid.to_numpy(zero_copy_only=False), text, context, has_fields)

    @property
    def sendable(self) -> np.ndarray:
        return np.asarray(self.valid_id & self.has_fields, dtype=bool)

    def needs_rows(self, options: PlanOptions) -> np.ndarray:
        """Rows the column road cannot build: the row-by-row road takes them."""
        if options.merge:
            return np.ones(len(self.valid_id), dtype=bool)
        context = self.text["contact_context"]
        needs = pc.starts_with(context, "{").to_numpy(zero_copy_only=False)  # JSON to parse
        if NOTES_KEY in self.context:  # plain text would collide with a context.notes column
            needs |= _nonempty(context)
        several = np.zeros(len(needs), dtype=bool)  # several rows of one interview
        several[self.sendable] = pd.Series(self.id_numbers[self.sendable]).duplicated(keep=False)
        return np.asarray(needs | several, dtype=bool)


def _valid_ids(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whole positive numbers that fit in 64 bits."""
    digits = pc.match_substring_regex(ids, r"^[0-9]{1,19}$")
    positive = pc.not_equal(pc.utf8_ltrim(ids, characters="0"), "")
    too_big = pc.and_(pc.equal(pc.utf8_length(ids), 19), pc.greater(ids, MAX_ID_TEXT))
    return pc.and_(pc.and_(digits, positive), pc.invert(too_big))


def _may_need_trimming(column: pa.ChunkedArray) -> bool:
    """Could a cell start or end with white space? Looks only at each cell's first and last
    byte, straight from the Arrow buffers, so a clean column is neither copied nor scanned."""
    for chunk in column.chunks:
        _validity, offsets_buffer, data = chunk.buffers()
        if data is None or len(chunk) == 0:
            continue
        offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[chunk.offset : chunk.offset
                                                                + len(chunk) + 1]  # fmt: skip
        starts, ends = offsets[:-1], offsets[1:]
        filled = ends > starts
        raw = np.frombuffer(data, dtype=np.uint8)
        edges = np.concatenate([raw[starts[filled]], raw[ends[filled] - 1]])
        # ASCII white space, or any non-ASCII byte (which might start Unicode white space)
        if ((edges <= 0x20) | (edges >= 0x80)).any():
            return True
    return False


def _nonempty(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.not_equal(column, "").to_numpy(zero_copy_only=False), dtype=bool)


def _settle_invalid(batch: Batch, cells: Cells, settled: dict[int, Settled]) -> None:
    bad_ids = np.flatnonzero(~cells.valid_id)
    for position, raw in zip(bad_ids.tolist(), cells.ids.take(bad_ids).to_pylist(), strict=True):
        message = f"interview_id {raw!r} is not a positive whole number"
        settled[position] = _invalid(batch, position, "invalid_interview_id", "interview_id",
                                     message)  # fmt: skip
    for position in np.flatnonzero(cells.valid_id & ~cells.has_fields).tolist():
        message = (
            "nothing to update: contact_name, objective, contact_context and context.* are "
            "all empty"
        )
        settled[position] = _invalid(batch, position, "no_fields", "", message)


def _invalid(batch: Batch, position: int, code: str, column: str, message: str) -> Settled:
    file_index, row, _id, _email = batch.locate(position)
    where = f"{batch.files[file_index]} row {row}" + (f", column {column}" if column else "")
    return Settled(INVALID, code, f"{where}: {message}")


# -- the column road ----------------------------------------------------------------------------


def _vector_requests(cells: Cells, mask: np.ndarray, for_sending: bool = True) -> RequestTable:
    """One request per row, its canonical JSON built for all rows at once.

    Contact keys and the context alone (for the state) matter only when sending: `plan`
    leaves them out, since it prints neither."""
    positions = np.flatnonzero(mask).astype(np.int64)
    picked = pa.array(positions, pa.int64())
    length = len(positions)

    def take(column: pa.ChunkedArray) -> pa.ChunkedArray:
        return column if length == len(column) else column.take(picked)

    text = take(cells.text["contact_context"])
    has_text = _nonempty(text)
    cells_by_key = {key: take(column) for key, column in cells.context.items()}
    present = {key: _nonempty(column) for key, column in cells_by_key.items()}
    members = [
        vj.text_member(key, cells_by_key[key], present[key]) if key in cells_by_key
        else vj.text_member(NOTES_KEY, text, has_text)
        for key in sorted({*cells_by_key, NOTES_KEY})
    ]  # fmt: skip
    any_cell = np.logical_or.reduce([*present.values(), np.zeros(length, bool)])
    context = _context_literal(members, text, any_cell, has_text, length)
    has_context = any_cell | has_text
    body_members = [vj.literal_member("contact_context", context, has_context)]
    for name in TEXT_FIELDS:
        column = take(cells.text[name])
        body_members.append(vj.text_member(name, column, _nonempty(column)))
    body = _chunked(vj.join_object(body_members, length))
    if not for_sending:
        unknown = pa.chunked_array([pa.nulls(length, pa.string())])
        return RequestTable(positions, cells.id_numbers[positions], body, unknown, unknown,
                            _repeat("off", length))  # fmt: skip
    none = pa.scalar(None, pa.string())
    emails = take(cells.text["contact_email"])
    return RequestTable(
        position=positions,
        interview_id=cells.id_numbers[positions],
        body_json=body,
        context_json=_chunked(pc.if_else(pa.array(has_context), context, none)),
        contact=_chunked(_contact_keys(emails, cells.id_numbers[positions])),
        merge=_repeat("off", length),
    )


def _repeat(value: str, length: int) -> pa.ChunkedArray:
    return pa.chunked_array([pa.repeat(pa.scalar(value, pa.string()), length)])


def _context_literal(
    members: list[vj.Pieces], text: pa.ChunkedArray, any_cell: np.ndarray,
    has_text: np.ndarray, length: int,
) -> vj.Text:  # fmt: skip
    """The context as JSON: an object where a context.* cell is filled, else the plain text."""
    if any_cell.all():
        return vj.join_object(members, length)
    if not has_text.any():
        return vj.join_object(members, length) if any_cell.any() else pa.nulls(length, pa.string())
    return pc.if_else(pa.array(any_cell), vj.join_object(members, length), vj.quoted(text))


def _contact_keys(emails: pa.ChunkedArray, ids: Ints) -> vj.Text:
    """The contact_email (lower case), or interview:<id> for a row without one."""
    emails = pc.utf8_lower(emails)
    has_email = _nonempty(emails)
    if has_email.all():
        return emails
    by_id = pc.binary_join_element_wise("interview:", pc.cast(pa.array(ids), pa.string()), "")
    return pc.if_else(pa.array(has_email), emails, by_id)


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


# -- the row-by-row road ------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    position: int
    interview_id: int
    email: str
    fields: dict[str, str]
    context: Context | None


class RowProblem(ValueError):
    def __init__(self, code: str, column: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.column = column


def _row_requests(
    batch: Batch, cells: Cells, positions: Ints, options: PlanOptions, memory: Memory,
    plan: Plan,
) -> list[Request]:  # fmt: skip
    rows = list(_parse_rows(batch, cells, positions, plan.settled))
    requests: list[Request] = []
    for contact, members in _group_contacts(_group_interviews(rows)).items():
        requests.extend(_contact_requests(contact, members, options, memory, plan))
    return requests


def _parse_rows(
    batch: Batch, cells: Cells, positions: Ints, settled: dict[int, Settled]
) -> Iterator[_Row]:
    picked = pa.array(positions, pa.int64())
    columns = [cells.text[c].take(picked).to_pylist() for c in (*TEXT_FIELDS, "contact_context",
                                                                  "contact_email")]  # fmt: skip
    context_columns = [cells.context[k].take(picked).to_pylist() for k in cells.context]
    keys = list(cells.context)
    for index, position in enumerate(positions.tolist()):
        name, objective, text, email = (column[index] for column in columns)
        fields = {k: v for k, v in (("contact_name", name), ("objective", objective)) if v}
        try:
            context = _row_context(text, {k: c[index] for k, c in zip(keys, context_columns,
                                                                       strict=True)})  # fmt: skip
        except RowProblem as problem:
            settled[position] = _invalid(batch, position, problem.code, problem.column,
                                         str(problem))  # fmt: skip
            continue
        yield _Row(position, int(cells.id_numbers[position]), email.lower(), fields, context)


def _row_context(text: str, cells: dict[str, str]) -> Context | None:
    """contact_context (text or JSON object) and context.<key> cells as one context."""
    extra = {k: v for k, v in cells.items() if v}
    try:
        base = parse_context(text) if text else None
    except ValueError as problem:
        raise RowProblem("invalid_json", "contact_context", str(problem)) from None
    if not extra:
        return base
    if base is None:
        return extra
    if isinstance(base, str):
        return {NOTES_KEY: base, **extra}
    return {**base, **extra}


@dataclass(slots=True)
class _Interview:
    interview_id: int
    rows: list[_Row]
    email: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def _group_interviews(rows: list[_Row]) -> list[_Interview]:
    """Rows of one interview_id, in file order; a later non-empty value wins."""
    by_id: dict[int, _Interview] = {}
    for row in rows:
        interview = by_id.setdefault(row.interview_id, _Interview(row.interview_id, []))
        interview.rows.append(row)
        interview.fields.update(row.fields)
        if row.email and not interview.email:
            interview.email = row.email
    return list(by_id.values())


def _group_contacts(interviews: list[_Interview]) -> dict[str, list[_Interview]]:
    """Interviews sharing a contact_email; without one, each interview is its own contact."""
    contacts: dict[str, list[_Interview]] = {}
    for interview in interviews:
        key = interview.email or f"interview:{interview.interview_id}"
        contacts.setdefault(key, []).append(interview)
    return contacts


def _contact_requests(
    contact: str, members: list[_Interview], options: PlanOptions, memory: Memory, plan: Plan
) -> list[Request]:
    if not options.merge:
        return [_request(i, contact, _last_context(i), "off") for i in members]
    contexts = [r.context for i in members for r in i.rows if r.context is not None]
    if not contexts:
        return [_request(i, contact, None, "off") for i in members]
    existing = _existing_notes(contact, members, memory)
    label = "no_existing" if existing is None else "merged"
    if existing is None:
        plan.contacts_no_existing += 1
    else:
        plan.contacts_merged += 1
    combined = fold(existing or None, contexts, options.rules)
    return [_request(i, contact, combined, label) for i in members]


def _last_context(interview: _Interview) -> Context | None:
    contexts = [r.context for r in interview.rows if r.context is not None]
    return contexts[-1] if contexts else None


def _existing_notes(contact: str, members: list[_Interview], memory: Memory) -> Context | None:
    """The notes file wins over the state; '' means known to be empty."""
    if members[0].email and members[0].email in memory.notes_by_email:
        return memory.notes_by_email[members[0].email]
    for interview in members:
        if interview.interview_id in memory.notes_by_interview:
            return memory.notes_by_interview[interview.interview_id]
    return memory.state_contexts.get(contact)


def _request(interview: _Interview, contact: str, context: Context | None, merge: str) -> Request:
    body: dict[str, Any] = dict(interview.fields)
    if context is not None:
        body["contact_context"] = context
    body_json = canonical(body).encode("utf-8")
    return Request(
        interview_id=interview.interview_id,
        body_json=body_json,
        sha256=sha256_hex(body_json),
        rows=[r.position for r in interview.rows],
        contact=contact,
        merge=merge if context is not None else "off",
        context_json=canonical(context) if context is not None else None,
    )


def canonical(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- skipping and trimming ----------------------------------------------------------------------


def _skip_unchanged(plan: Plan, options: PlanOptions, memory: Memory) -> None:
    table = plan.table
    if options.force or not memory.sent_hashes or not len(table):
        return
    sent = memory.sent_hashes
    ids, hashes = table.interview_id.tolist(), table.sha256()
    unchanged = [
        i for i, (id_, h) in enumerate(zip(ids, hashes, strict=True)) if sent.get(id_) == h
    ]
    _set_aside(plan, np.array(unchanged, dtype=np.int64), SKIPPED)


def _apply_max_rows(plan: Plan, max_rows: int | None) -> None:
    """--max-rows: send the first N requests in file order; the rest are not attempted."""
    if max_rows is None or len(plan.table) <= max_rows:
        return
    _set_aside(plan, np.arange(max_rows, len(plan.table), dtype=np.int64), NOT_ATTEMPTED)


def _set_aside(plan: Plan, aside: Ints, status: str) -> None:
    """Settle every row of the requests at `aside` with `status`; the table keeps the rest."""
    table = plan.table
    hashes, merges = table.sha256(), table.merge.to_pylist()
    for index in aside.tolist():
        outcome = Settled(status, sha256=hashes[index], merge=merges[index])
        for position in table.rows_of(index):
            plan.settled[position] = outcome
    kept = np.ones(len(table), dtype=bool)
    kept[aside] = False
    plan.table = table.take(np.flatnonzero(kept))


# -- what `sync-worker plan` prints -------------------------------------------------------------


def plan_output(plan: Plan, batch: Batch) -> Iterator[memoryview]:
    """One JSON line per request, built a chunk of requests at a time, as UTF-8 bytes."""
    table = plan.table
    files = batch.frame["_file"].to_numpy()
    rows = batch.frame["_row"].to_numpy()
    names = [json.dumps(name, ensure_ascii=False) for name in batch.files]
    for start in range(0, len(table), CHUNK):
        stop = min(start + CHUNK, len(table))
        positions = table.position[start:stop]
        sources = _sources(names, files[positions], rows[positions])
        if table.more_rows:
            sources = _patch_sources(sources, table, start, stop, names, files, rows)
        line = pc.binary_join_element_wise(
            '{"interview_id": ', pc.cast(pa.array(table.interview_id[start:stop]), pa.string()),
            ', "body": ', table.body_json.slice(start, stop - start),
            ', "source_rows": ', sources,
            ', "merge": "', table.merge.slice(start, stop - start), '"}\n', "",
        )  # fmt: skip
        yield _concatenated(line)


def _sources(names: list[str], files: Any, rows: Any) -> pa.Array:
    """`[{"source_file": ..., "source_row": N}]` for single-row requests."""
    prefix = pa.array([f'[{{"source_file": {n}, "source_row": ' for n in names]).take(
        pa.array(files)
    )
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(rows), pa.string()), "}]", "")


def _patch_sources(
    sources: pa.Array, table: RequestTable, start: int, stop: int, names: list[str], files: Any,
    rows: Any,
) -> pa.Array:  # fmt: skip
    values = sources.to_pylist()
    for index in range(start, stop):
        positions = table.rows_of(index)
        if len(positions) > 1:
            values[index - start] = json.dumps([
                {"source_file": json.loads(names[files[p]]), "source_row": int(rows[p])}
                for p in positions
            ], ensure_ascii=False)  # fmt: skip
    return pa.array(values, pa.string())


def _concatenated(lines: pa.Array | pa.ChunkedArray) -> memoryview:
    """All strings of an Arrow string array back to back: a view of its data buffer, not a
    copy (the view keeps the buffer alive)."""
    array = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    if len(array) == 0:
        return memoryview(b"")
    _validity, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    first, last = offsets[array.offset], offsets[array.offset + len(array)]
    return memoryview(data.slice(int(first), int(last - first)))
