"""What each planned request changes, field by field, with the value before (SPEC section 12).

Known at plan time: the value before is the notes merging chose (the notes file or the state),
else the state's last value of that field; unknown otherwise. The recorder appends these rows to
the history once the server confirmed the send, so the hot path only looks them up.
Computed for the requests a run sends (after skipping), never for `plan` or `validate`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping

from sync_worker.collector import collector_off
from sync_worker.fields import CONTACT_FIELDS, CONTEXT
from sync_worker.merger import canonical
from sync_worker.plan.model import Known, Plan
from sync_worker.plan.request_table import CHUNK
from sync_worker.store.history import EARLIER_SEND, NOTES_FILE, UNKNOWN, Change, FieldKey, level_of

Changes = dict[int, tuple[Change, ...]]  # interview id -> its request's changes


def plan_changes(plan: Plan, last_values: Mapping[FieldKey, str]) -> Changes:
    """Each request's fields whose value differs from the one before (or from the state's last
    value: a row that only moves it). Several requests of one contact share its fields."""
    with collector_off():
        return _changes(plan, last_values)


def _changes(plan: Plan, last_values: Mapping[FieldKey, str]) -> Changes:
    table = plan.table
    known_before = plan.known_notes()
    drafts: list[tuple[int, list[Change]]] = []
    for start in range(0, len(table), CHUNK):
        stop = min(start + CHUNK, len(table))
        ids = table.interview_id[start:stop].tolist()
        contacts = table.contact.slice(start, stop - start).to_pylist()
        bodies = table.body_json.slice(start, stop - start).to_pylist()
        for interview_id, contact, body in zip(ids, contacts, bodies, strict=True):
            found = [
                _change(interview_id, contact, name, sent, known_before, last_values)
                for name, sent in fields_of(body)
            ]
            drafts.append((interview_id, [c for c in found if c is not None]))
    counts = Counter((c.level, c.key, c.field) for _id, found in drafts for c in found)
    return {
        interview_id: tuple(
            c._replace(shared=True) if counts[c.level, c.key, c.field] > 1 else c for c in found
        )
        for interview_id, found in drafts
        if found
    }


_DECODER = json.JSONDecoder()


def fields_of(body: str) -> list[tuple[str, str]]:
    """(name, canonical JSON of its value) for each field of a canonical body, cut from its
    text: the canonical text of a whole is made of its parts' canonical texts, so no value is
    serialised again (that took half of this module's ~30 us a request)."""
    found: list[tuple[str, str]] = []
    at = 1  # past the opening brace
    while body[at] == '"':
        name, at = _DECODER.raw_decode(body, at)  # `at`: on the colon after the name
        _value, end = _DECODER.raw_decode(body, at + 1)
        found.append((name, body[at + 1 : end]))
        at = end + 1 if body[end] == "," else end
    return found


def _change(
    interview_id: int,
    contact: str,
    name: str,
    sent: str,
    known_before: Mapping[str, Known],
    last_values: Mapping[FieldKey, str],
) -> Change | None:
    level = level_of(name)
    key = contact if name in CONTACT_FIELDS else str(interview_id)
    last = last_values.get((level, key, name))
    before, source = (last, EARLIER_SEND) if last is not None else (None, UNKNOWN)
    known = known_before.get(contact) if name == CONTEXT else None
    if known is not None:
        before = canonical(known.context)
        source = NOTES_FILE if known.source == NOTES_FILE else EARLIER_SEND
    if sent != before:
        return Change(level, key, interview_id, name, before, sent, source, 1, False)
    if sent != last:
        return Change(level, key, interview_id, name, before, sent, source, 0, False)
    return None
