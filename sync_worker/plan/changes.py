"""What each planned request changes, field by field, with the value before (SPEC section 12).

Known at plan time: the value before is the notes merging chose (the notes file or the state),
else the state's last value of that field; unknown otherwise. Found a chunk of requests at a
time, as the sender takes them (`ChangeFinder`), and written to the state as planned changes
before any of them is sent: a run stopped early (a cron window, a signal) pays for the requests
it sent, not for the whole plan (a 500,000-row backfill spent ~11 s and ~100 MB of state on its
changes before its first request). The recorder's confirmed sends turn them into history rows
when the journal is folded. Never computed for `plan` or `validate`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence

from sync_worker.collector import collector_off
from sync_worker.fields import CONTACT_FIELDS, CONTEXT
from sync_worker.merger import canonical
from sync_worker.plan.model import Known, Plan
from sync_worker.plan.request_table import Request, fields_of
from sync_worker.store.history import EARLIER_SEND, NOTES_FILE, UNKNOWN, Change, FieldKey, level_of

Changes = dict[int, tuple[Change, ...]]  # interview id -> its request's changes


class ChangeFinder:
    """Each request's fields whose value differs from the one before (or from the state's last
    value: a row that only moves it), for a chunk of whole contacts at a time (the sender's
    chains: every request of a contact is in one chunk), so several requests of one contact
    share its fields within the chunk exactly as within the whole plan."""

    def __init__(self, plan: Plan, last_values: Mapping[FieldKey, str]) -> None:
        self._known: dict[str, Known] = dict(plan.known_before)
        self._as_sent = plan.known_texts()  # contact -> its notes as sent, parsed when needed
        self._last_values = last_values

    def __call__(self, requests: Sequence[Request]) -> Changes:
        with collector_off():
            return self._changes(requests)

    def _changes(self, requests: Sequence[Request]) -> Changes:
        """A contact field that several requests send (without coalescing) is shared: each of
        its sends leaves a row, even one equal to the value before the run, so the history
        chains them in the order the server confirms them and the last one confirmed is the
        field's last value (a send equal to the old value, confirmed after another, is what the
        server holds)."""
        sent_fields = [
            (request, fields_of(request.body_json.decode("utf-8"))) for request in requests
        ]
        several = Counter(
            (request.contact, name)
            for request, fields in sent_fields
            for name, _sent in fields
            if name in CONTACT_FIELDS
        )
        found: Changes = {}
        for request, fields in sent_fields:
            interview_id, contact = request.interview_id, request.contact
            known = self._known_of(contact)
            changes = []
            for name, sent in fields:
                shared = name in CONTACT_FIELDS and several[contact, name] > 1
                change = _change(
                    interview_id, contact, name, sent, known, self._last_values, shared
                )
                if change is not None:
                    changes.append(change)
            if changes:
                found[interview_id] = tuple(changes)
        return found

    def _known_of(self, contact: str) -> Known | None:
        known = self._known.get(contact)
        if known is None and contact in self._as_sent:
            known = Known(json.loads(self._as_sent.pop(contact)), EARLIER_SEND)
            self._known[contact] = known
        return known


def _change(
    interview_id: int,
    contact: str,
    name: str,
    sent: str,
    known_notes: Known | None,
    last_values: Mapping[FieldKey, str],
    shared: bool = False,
) -> Change | None:
    level = level_of(name)
    key = contact if name in CONTACT_FIELDS else str(interview_id)
    last = last_values.get((level, key, name))
    before, source = (last, EARLIER_SEND) if last is not None else (None, UNKNOWN)
    known = known_notes if name == CONTEXT else None
    if known is not None:
        before = canonical(known.context)
        source = NOTES_FILE if known.source == NOTES_FILE else EARLIER_SEND
    if sent != before:
        return Change(level, key, interview_id, name, before, sent, source, 1, shared)
    if sent != last or shared:
        return Change(level, key, interview_id, name, before, sent, source, 0, shared)
    return None
