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

from sync_worker.fields import CONTACT_FIELDS, CONTEXT
from sync_worker.history import EARLIER_SEND, NOTES_FILE, UNKNOWN, Change, FieldKey, level_of
from sync_worker.merger import canonical
from sync_worker.plan.model import Known, Plan

Changes = dict[int, tuple[Change, ...]]  # interview id -> its request's changes


def plan_changes(plan: Plan, last_values: Mapping[FieldKey, str]) -> Changes:
    """Each request's fields whose value differs from the one before (or from the state's last
    value: a row that only moves it). Several requests of one contact share its fields."""
    table = plan.table
    known_before = plan.known_notes()
    drafts: list[tuple[int, list[Change]]] = []
    for start in range(0, len(table), 10_000):
        for request in table.slice(start, start + 10_000):
            body = json.loads(request.body_json)
            found = [
                _change(request.interview_id, request.contact, name, canonical(value),
                        known_before, last_values)
                for name, value in body.items()
            ]  # fmt: skip
            drafts.append((request.interview_id, [c for c in found if c is not None]))
    counts = Counter((c.level, c.key, c.field) for _id, found in drafts for c in found)
    return {
        interview_id: tuple(c._replace(shared=counts[c.level, c.key, c.field] > 1) for c in found)
        for interview_id, found in drafts
        if found
    }


def _change(
    interview_id: int, contact: str, name: str, sent: str, known_before: Mapping[str, Known],
    last_values: Mapping[FieldKey, str],
) -> Change | None:  # fmt: skip
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
