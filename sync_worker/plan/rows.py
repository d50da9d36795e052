"""The row road, the reference: every row that the column road does not take, one at a time.

It takes JSON contexts, several rows of one interview, and merging: rows of one interview are
combined (a later non-empty value wins), interviews of one contact share its combined context,
and with merging on that context is folded onto the notes the contact already has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sync_worker.fields import CONTACT_KEY, CONTEXT, NOTES_KEY, TEXT_FIELDS, email_key, is_email_key
from sync_worker.merger import Context, MergeRules, canonical, fold, parse_context
from sync_worker.plan.cells import Cells
from sync_worker.plan.contacts import contact_keys
from sync_worker.plan.model import Known, Memory, Outcomes, Plan, PlanOptions, invalid
from sync_worker.plan.request_table import Request
from sync_worker.read.notes import Note
from sync_worker.read.reader import Batch
from sync_worker.store.digests import Ints, sha256_hex
from sync_worker.store.history import EARLIER_SEND, NOTES_FILE
from sync_worker.store.remembered import StateNotes


@dataclass(slots=True)
class _Row:
    position: int
    interview_id: int
    email: str
    fields: dict[str, str]  # the text fields this row fills
    context: Context | None


class RowProblem(ValueError):
    def __init__(self, code: str, column: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.column = column


def row_requests(
    batch: Batch,
    cells: Cells,
    positions: Ints,
    options: PlanOptions,
    memory: Memory,
    plan: Plan,
    remembered: Mapping[str, StateNotes] | None = None,
) -> list[Request]:
    """The requests of the rows at `positions`; rows that cannot be sent go to plan.settled.
    `remembered`: what the state remembers of these rows' contacts, when the caller looked it
    up already (a chunk's contacts, `plan/__init__.py`); else it is looked up here."""
    rows = list(_parse_rows(batch, cells, positions, plan.settled))
    contacts = _group_contacts(_group_interviews(rows), memory)
    if remembered is None:
        remembered = _remembered(contacts, memory) if options.merge else {}
    requests: list[Request] = []
    for contact, members in contacts.items():
        state = remembered.get(contact)
        requests.extend(_contact_requests(contact, members, options, memory, state, plan))
    return requests


def _remembered(contacts: Mapping[str, object], memory: Memory) -> dict[str, StateNotes]:
    if not len(memory.state) or not contacts:
        return {}
    keys = pa.array(list(contacts), pa.string())
    return memory.state.entries(list(contacts), memory.state.find(keys))


def _parse_rows(batch: Batch, cells: Cells, positions: Ints, settled: Outcomes) -> Iterator[_Row]:
    picked = pa.array(positions, pa.int64())

    def column(values: pa.ChunkedArray) -> list[str]:
        return list(values.take(picked).to_pylist())

    texts = {name: column(cells.text[name]) for name in TEXT_FIELDS}
    contexts, emails = column(cells.text[CONTEXT]), column(cells.text[CONTACT_KEY])
    by_key = {key: column(values) for key, values in cells.context.items()}
    for index, position in enumerate(positions.tolist()):
        fields = {name: values[index] for name, values in texts.items() if values[index]}
        try:
            context = _row_context(contexts[index], {k: v[index] for k, v in by_key.items()})
        except RowProblem as problem:
            settled[position] = invalid(batch, position, problem.code, problem.column, str(problem))
            continue
        yield _Row(
            position, int(cells.id_numbers[position]), email_key(emails[index]), fields, context
        )


def _row_context(text: str, cells: dict[str, str]) -> Context | None:
    """contact_context (text or JSON object) and context.<key> cells as one context."""
    extra = {k: v for k, v in cells.items() if v}
    try:
        base = parse_context(text) if text else None
    except ValueError as problem:
        raise RowProblem("invalid_json", CONTEXT, str(problem)) from None
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


def _group_contacts(interviews: list[_Interview], memory: Memory) -> dict[str, list[_Interview]]:
    """Interviews of one contact, as `contacts.contact_keys` names it (the API's contact, the
    state's, the export's email; without any, each interview is its own contact)."""
    ids = np.fromiter((i.interview_id for i in interviews), dtype=np.int64, count=len(interviews))
    emails = pa.array([i.email for i in interviews], pa.string())
    contacts: dict[str, list[_Interview]] = {}
    for key, interview in zip(
        contact_keys(ids, emails, memory).to_pylist(), interviews, strict=True
    ):
        contacts.setdefault(key, []).append(interview)
    return contacts


def _contact_requests(
    contact: str,
    members: list[_Interview],
    options: PlanOptions,
    memory: Memory,
    state: StateNotes | None,
    plan: Plan,
) -> list[Request]:
    if not options.merge:
        return [_request(i, contact, _last_context(i), "off") for i in members]
    # in file order: an interview's rows apart in the file fold where they are, not together
    rows = sorted((r for i in members for r in i.rows), key=_position)
    contexts = [r.context for r in rows if r.context is not None]
    if not contexts:
        return [_request(i, contact, None, "off") for i in members]
    notes = file_notes(members[0].email, [i.interview_id for i in members], memory, contact)
    known = existing_notes(state, notes, options.rules)
    existing = known.context if known is not None else None
    label = "no_existing" if existing is None else "merged"
    if known is None:
        plan.contacts_no_existing += 1
    else:
        plan.contacts_merged += 1
        plan.known_before[contact] = known
    combined = fold(merge_base(existing), contexts, options.rules)
    return [_request(i, contact, combined, label) for i in members]


def _position(row: _Row) -> int:
    return row.position


def _last_context(interview: _Interview) -> Context | None:
    contexts = [r.context for r in interview.rows if r.context is not None]
    return contexts[-1] if contexts else None


def merge_base(existing: Context | None) -> Context | None:
    """What new context merges onto: notes known to be empty text ('') are nothing, so new text
    stays text; an empty object stays an object, so new text goes under its `notes` key."""
    return None if existing == "" else existing


def existing_notes(state: StateNotes | None, notes: list[Note], rules: MergeRules) -> Known | None:
    """The notes file and the state: the newer wins (a file row is as old as its updated_at, its
    file, or its first sighting; the state as its last confirmed send). The contact's file rows
    are combined in file order; '' means known empty. The merge road by columns (`merged.py`)
    asks the same."""
    if notes and (state is None or state[1] is None or max(n.time for n in notes) > state[1]):
        combined = fold(None, [n.context for n in notes], rules)
        return Known(combined if combined is not None else "", NOTES_FILE)
    return Known(state[0], EARLIER_SEND) if state is not None else None


def file_notes(
    email: str, interview_ids: Iterable[int], memory: Memory, contact: str = ""
) -> list[Note]:
    """The contact's notes-file rows (by its first interview's email, by the email the state
    knows it as, `contact`, and by each interview's id), each once, in file order."""
    if not memory.notes_by_email and not memory.notes_by_interview:
        return []
    found: dict[int, Note] = {}
    for key in dict.fromkeys((email, contact if is_email_key(contact) else "")):
        if key:
            found.update((n.row, n) for n in memory.notes_by_email.get(key, ()))
    for interview_id in interview_ids:
        found.update((n.row, n) for n in memory.notes_by_interview.get(interview_id, ()))
    return [found[row] for row in sorted(found)]


def _request(interview: _Interview, contact: str, context: Context | None, merge: str) -> Request:
    body: dict[str, Any] = dict(interview.fields)
    if context is not None:
        body[CONTEXT] = context
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
