"""Requests needed, not rows (SPEC section 7): what each planned request still has to carry.

The API writes `contact_context` and `contact_name` on the contact, and leaves out what a body
leaves out. So, for the requests left after the unchanged ones are skipped:
- a field whose value is the one last confirmed for its interview or contact is left out (a
  field never confirmed is sent; `--force` sends every field);
- a contact's fields travel once, in the request of its first interview in file order (its
  carrier; the first the API has confirmed a send of before, where one has, else the first it
  has not refused: an interview never confirmed may not exist), with the last value each field
  takes among the contact's requests: what the server would hold after all of them, one after
  another. The contact's other requests carry only their interview's own fields. With
  `coalesce` off (`--no-coalesce`) every request of a contact whose fields changed carries
  those last values;
- a request left with nothing to carry sends nothing. If its contact's fields ride in the
  carrier's request, its rows are the carrier's too: they end as that request ends, and the
  ledger's `sent_with` names the carrier (`Plan.sent_with`). Otherwise it is unchanged and
  skipped.

All of it by columns: a backfill's million requests are a few Arrow arrays, and only the
requests whose keys the state has values for are looked up. A trimmed request keeps the hash of
its whole body (`full_sha256`), which the state remembers on success, so that the next run's
whole-body comparison (`select.skip_unchanged`) still skips it when nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import CONTACT_FIELDS, CONTEXT, INTERVIEW_FIELDS
from sync_worker.plan.model import Memory, Plan, PlanOptions
from sync_worker.plan.request_table import (
    CARRIER,
    LEAN,
    PLAIN,
    RequestTable,
    bodies_of,
    numbered,
)
from sync_worker.store.digests import DIGEST, Ints
from sync_worker.store.history import FieldKey, level_of
from sync_worker.vocabulary import Status

NONE = pa.scalar(None, pa.string())
Fills = Mapping[str, np.ndarray] | None  # contact field -> the batch's rows that fill it


def trim(plan: Plan, options: PlanOptions, memory: Memory, filled: Fills = None) -> None:
    """The plan's requests (in file order) as they go out: each with the fields it needs,
    riders folded into their carriers, unchanged ones settled in the plan. `filled`: contact
    field -> the batch's rows that fill it (where a field's last value is, when an interview's
    rows are apart in the file). The table is taken from the plan, not passed: a caller's
    reference would hold the untrimmed columns beside the trimmed ones (a backfill's peak)."""
    table, plan.table = plan.table, RequestTable.empty()
    if not len(table):
        plan.table = table
        return
    fields = _fields(table)
    loaded = _confirmed(table, fields, options, memory)
    confirmed = loaded or {}
    if loaded is not None:
        plan.confirmed = loaded
    codes = _contact_codes(plan, table)
    n, contacts = len(table), int(codes.max()) + 1
    if not confirmed and int(np.bincount(codes).max()) == 1:
        plan.table = table  # a contact a request: each carries its own fields
        return
    sent: dict[str, pa.Array] = {}
    carrier = np.zeros(n, dtype=bool)
    carries_changed = np.zeros(n, dtype=bool)  # holds a contact field whose contact's changed
    firsts = _carriers(table, codes, contacts, memory)
    changed_contacts = np.zeros(contacts, dtype=bool)
    finals: dict[str, tuple[Ints, np.ndarray]] = {}
    for name in CONTACT_FIELDS:
        if name not in fields:
            continue
        values, present = fields[name]
        last = _last_holders(table, codes, contacts, present, (filled or {}).get(name))
        changed = last >= 0  # nothing confirmed: every value is new
        if confirmed:
            final = values.take(pa.array(np.where(changed, last, 0)))
            known = _known(confirmed, table.contact, firsts, name)
            changed &= _differs(final, known)
        finals[name] = (last, changed)
        changed_contacts |= changed
        carries_changed |= present & changed[codes]
    if options.coalesce:
        carrier = (np.arange(n) == firsts[codes]) & changed_contacts[codes]
        for name, (last, changed) in finals.items():
            values, _present = fields[name]
            keep = carrier & changed[codes]
            sent[name] = _carried(values, keep, last[codes])
    else:
        for name, (last, changed) in finals.items():  # every request, its contact's last value
            values, _present = fields[name]
            sent[name] = _carried(values, changed[codes], last[codes])
    ids = pa.array(table.interview_id.astype(str)) if confirmed else None
    for name in INTERVIEW_FIELDS:
        if name not in fields:
            continue
        values, present = fields[name]
        if ids is None:
            sent[name] = values  # nothing confirmed: every value is sent
            continue
        own = _known(confirmed, ids, np.arange(n), name)
        sent[name] = _masked(values, present & _differs(values, own))
    carries = np.zeros(n, dtype=bool)
    modified = np.zeros(n, dtype=bool)
    for name, values in sent.items():
        before, present = fields[name]
        if values is before:
            carries |= present
            continue
        now = pc.is_valid(values).to_numpy(zero_copy_only=False)
        carries |= now
        same = pc.fill_null(pc.equal(values, before), False).to_numpy(zero_copy_only=False)
        modified |= (now != present) | (now & ~same)
    rider = ~carries & carries_changed & options.coalesce
    unchanged = ~carries & ~rider
    role = np.where(
        carrier, CARRIER, np.where(carries_changed & ~carrier & options.coalesce, LEAN, PLAIN)
    )
    plan.settled.set_aside(Status.SKIPPED_UNCHANGED, table, np.flatnonzero(unchanged))
    table = _with_bodies(table, sent, modified, role, options.for_sending)
    fields.clear()  # the untrimmed fields go before the take below copies the rest
    sent.clear()
    _ride(plan, table, np.flatnonzero(rider), firsts[codes], options.for_sending)
    plan.contacts_sent_to = int(np.count_nonzero(np.bincount(codes[carries], minlength=1)))
    if not options.for_sending:  # `plan` prints neither: not carried through the take below
        table.contact = table.context_json = pa.chunked_array([pa.nulls(n, pa.string())])
    if not carries.all():
        table.keep(np.flatnonzero(carries))
    plan.table = table


def _carriers(table: RequestTable, codes: Ints, contacts: int, memory: Memory) -> Ints:
    """Each contact's carrier: its first request in file order whose interview the API has
    confirmed a send of before; else its first the API has not refused (400, 404); else its
    first. An interview never confirmed may not exist (a 404 every night would hold the
    contact's fields back for good); one confirmed does."""
    n = len(table)
    order = np.arange(n, dtype=np.int64)
    firsts = np.full(contacts, n, dtype=np.int64)
    preferred = []
    several = np.bincount(codes, minlength=contacts)[codes] > 1  # where there is a choice
    if memory.answers is not None and several.any():
        confirmed, refused = memory.answers(table.interview_id[several])
        if len(confirmed):  # its own send, not one riding with another interview's
            preferred.append(np.isin(table.interview_id, confirmed))
        if len(refused):
            preferred.append(~np.isin(table.interview_id, refused))
    preferred.append(np.ones(n, dtype=bool))
    for chosen in preferred:  # each kind only for the contacts no better kind gave a carrier
        at = np.flatnonzero(chosen & (firsts[codes] == n))
        np.minimum.at(firsts, codes[at], order[at])
    return firsts


def _last_holders(
    table: RequestTable,
    codes: Ints,
    contacts: int,
    present: np.ndarray,
    filled: np.ndarray | None,
) -> Ints:
    """Each contact's request holding the field's last value in file order (-1: none): the
    one whose last row filling the field comes last. A request is at its first row, but an
    interview whose rows are apart in the file fills the field at its last such row."""
    at = np.flatnonzero(present)
    rank = table.position.copy()
    if table.more_rows and filled is not None:
        for first, rows in table.more_rows.items():
            index = int(np.searchsorted(table.position, first))
            filling = [row for row in rows if filled[row]]
            if filling:
                rank[index] = max(filling)
    best = np.full(contacts, -1, dtype=np.int64)
    np.maximum.at(best, codes[at], rank[at])
    holders = at[rank[at] == best[codes[at]]]
    last = np.full(contacts, -1, dtype=np.int64)
    last[codes[holders]] = holders
    return last


def _contact_codes(plan: Plan, table: RequestTable) -> Ints:
    """Each request's contact as a number: as merging numbered them (free), else found."""
    known, plan.contact_codes = plan.contact_codes, None
    if known is not None:
        codes = known[table.position]
        if len(codes) and int(codes.min()) >= 0:  # numbered 0..k-1 (the plan's contacts only)
            if np.bincount(codes).all():  # every contact still has a request: dense already
                return codes
            return np.unique(codes, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return numbered(table.contact)


def _carried(values: pa.Array, keep: np.ndarray, last: Ints) -> pa.Array:
    """Each carrier (`keep`) with its contact's last value of the field (at `last`), all other
    requests without it. Usually a carrier's own value is that last one, and only the nulls
    change; else the values are made anew."""
    at = np.flatnonzero(keep)
    at = at[last[at] != at]  # carriers that are not their contact's last holder of the field
    final = pa.array(last[at])
    same = pc.fill_null(pc.equal(values.take(pa.array(at)), values.take(final)), False)
    if pc.all(same).as_py() is not False:  # a carrier without a value of its own: not same
        return _masked(values, keep)
    carried = values.take(pa.array(last[keep]))
    return pc.replace_with_mask(pa.nulls(len(values), pa.string()), pa.array(keep), carried)


def _masked(values: pa.Array, keep: np.ndarray) -> pa.Array:
    """`values` where `keep`, null elsewhere: a new validity bitmap over the same strings (a
    million texts are not copied to leave some out)."""
    if values.offset != 0 or (
        values.null_count
        and not bool((keep <= pc.is_valid(values).to_numpy(zero_copy_only=False)).all())
    ):
        return pc.if_else(pa.array(keep), values, NONE)
    bitmap = pa.py_buffer(np.packbits(keep, bitorder="little"))
    return pa.Array.from_buffers(values.type, len(values), [bitmap, *values.buffers()[1:]])


def _fields(table: RequestTable) -> dict[str, tuple[pa.Array, np.ndarray]]:
    """Each sent field's JSON literals (null where a request leaves it out) and where present.
    The table keeps the field in one piece from then on: its chunks are let go, not held
    beside the piece (a backfill's peak is here)."""
    found = {}
    for name, column in table.fields.items():
        values = column.combine_chunks()
        table.fields[name] = pa.chunked_array([values])
        present = pc.is_valid(values).to_numpy(zero_copy_only=False)
        if present.any():
            found[name] = (values, present)
    return found


def _confirmed(
    table: RequestTable, fields: Mapping[str, object], options: PlanOptions, memory: Memory
) -> dict[FieldKey, str] | None:
    """The state's last confirmed values of these requests' contacts and interviews (None:
    not looked up, `--force` sends every field)."""
    if options.force or memory.confirmed is None or not fields:
        return None
    keys = set(table.contact.to_pylist()) | set(table.interview_id.astype(str).tolist())
    return dict(memory.confirmed(sorted(keys)))


def _known(
    confirmed: Mapping[FieldKey, str], keys: pa.Array | pa.ChunkedArray, at: Ints, name: str
) -> pa.Array:
    """The confirmed value of field `name` for the keys at `at` (its contacts, or interview ids
    as text; null: never confirmed)."""
    if not confirmed:
        return pa.nulls(len(at), pa.string())
    level = level_of(name)
    picked = keys.take(pa.array(at)).to_pylist()
    return pa.array([confirmed.get((level, key, name)) for key in picked], pa.string())


def _differs(values: pa.Array, known: pa.Array) -> np.ndarray:
    """Where a value is not the one confirmed (never confirmed: differs)."""
    same = pc.fill_null(pc.equal(values, known), False)
    return np.asarray(~same.to_numpy(zero_copy_only=False), dtype=bool)


def _with_bodies(
    table: RequestTable,
    sent: Mapping[str, pa.Array],
    modified: np.ndarray,
    role: Ints,
    for_sending: bool,
) -> RequestTable:
    """`table` with the fields each request now sends (its body is made from them when first
    needed), and, when sending, each trimmed request's whole-body hash (the state remembers
    it) and the context a lean request no longer sends dropped."""
    trimmed = RequestTable(
        position=table.position,
        interview_id=table.interview_id,
        fields=table.fields,
        context_json=table.context_json,
        contact=table.contact,
        merge=table.merge,
        more_rows=dict(table.more_rows),
        role=role.astype(np.int8),
        _body=table._body,
        _sha256=table._sha256,
    )
    if not modified.any():
        return trimmed
    trimmed.fields = {name: pa.chunked_array([values]) for name, values in sent.items()}
    trimmed._body = trimmed._sha256 = None
    if not for_sending:
        return trimmed
    if CONTEXT in sent:
        context = pc.if_else(pc.is_valid(sent[CONTEXT]), sent[CONTEXT], table.context_json)
        trimmed.context_json = pc.if_else(pa.array(role == LEAN), NONE, context)
    at = np.flatnonzero(modified)
    picked = pa.array(at)
    if table._sha256 is not None:
        whole = table._sha256.combine_chunks().take(picked)
    else:  # the whole bodies of the trimmed requests only
        kept = {name: column.take(picked) for name, column in table.fields.items()}
        texts = pc.cast(bodies_of(kept, len(at)), pa.binary()).to_pylist()
        whole = pa.array([hashlib.sha256(text).digest() for text in texts], DIGEST)
    nulls = pa.nulls(len(table), DIGEST)
    trimmed.full_sha256 = pa.chunked_array([pc.replace_with_mask(nulls, pa.array(modified), whole)])
    return trimmed


def _ride(plan: Plan, table: RequestTable, riders: Ints, carriers: Ints, for_sending: bool) -> None:
    """The rows of each rider become its carrier's (`carriers`: each request's carrier): its
    rows join the carrier's, and `Plan.sent_with` names the carrier for each; when sending,
    `Plan.riders` lists each carrier's riders with their whole-body hashes (the state
    remembers them when the carrier succeeds)."""
    if not len(riders):
        return
    order = np.argsort(carriers[riders], kind="stable")
    riders = riders[order]
    by = carriers[riders]
    ids, positions = table.interview_id, table.position
    more_rows = table.more_rows
    # each rider's rows (one, but for an interview of several rows), and its carrier's id
    own = [more_rows.get(p) or [p] for p in positions[riders].tolist()] if more_rows else None
    rider_rows = (
        [row for rows in own for row in rows] if own is not None else positions[riders].tolist()
    )
    counts = [len(rows) for rows in own] if own is not None else None
    carrier_ids = ids[by]
    carried_by = np.repeat(carrier_ids, counts) if counts is not None else carrier_ids
    plan.sent_with.update(zip(rider_rows, carried_by.tolist(), strict=True))
    starts = np.flatnonzero(np.diff(by, prepend=-1))
    stops = [*starts[1:].tolist(), len(riders)]
    bounds = np.cumsum([0, *counts]) if counts is not None else np.arange(len(riders) + 1)
    for start, stop in zip(starts.tolist(), stops, strict=True):
        first = int(positions[by[start]])
        rows = more_rows.get(first) or [first]
        more_rows[first] = sorted([*rows, *rider_rows[bounds[start] : bounds[stop]]])
    if not for_sending:
        return
    fulls = (
        [d.hex() if d else "" for d in table.full_sha256.take(pa.array(riders)).to_pylist()]
        if table.full_sha256 is not None
        else [""] * len(riders)
    )
    listed = ids[riders].tolist()
    for start, stop in zip(starts.tolist(), stops, strict=True):
        plan.riders[int(carrier_ids[start])] = list(
            zip(listed[start:stop], fulls[start:stop], strict=True)
        )
