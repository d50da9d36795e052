"""Requests needed, not rows (SPEC section 7): what each planned request still has to carry.

The API writes `contact_context` and `contact_name` on the contact, and leaves out what a body
leaves out. So, for the requests left after the unchanged ones are skipped:
- a field whose value is the one last confirmed for its interview or contact is left out (a
  field never confirmed is sent; `--force` sends every field);
- a contact's fields travel once, in the request of its first interview in file order (its
  carrier), with the last value each field takes among the contact's requests: what the server
  would hold after all of them, one after another. The contact's other requests carry only their
  interview's own fields. With `coalesce` off (`--no-coalesce`) every request of a contact whose
  fields changed carries its own values of them, as before;
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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import CONTACT_FIELDS, CONTEXT, INTERVIEW_FIELDS
from sync_worker.plan import vectorjson as vj
from sync_worker.plan.model import Memory, Plan, PlanOptions
from sync_worker.plan.request_table import CARRIER, LEAN, PLAIN, RequestTable
from sync_worker.store.digests import DIGEST, Ints
from sync_worker.store.history import FieldKey, level_of
from sync_worker.vocabulary import Status

NONE = pa.scalar(None, pa.string())


def trim(plan: Plan, table: RequestTable, options: PlanOptions, memory: Memory) -> RequestTable:
    """The requests of `table` (in file order) as they go out: each with the fields it needs,
    riders folded into their carriers, unchanged ones settled in the plan."""
    if not len(table):
        return table
    codes = pd.factorize(table.contact.to_numpy(zero_copy_only=False))[0].astype(np.int64)
    fields = _fields(table)
    loaded = _confirmed(table, fields, options, memory)
    confirmed = loaded or {}
    if loaded is not None:
        plan.confirmed = loaded
    n, contacts = len(table), int(codes.max()) + 1
    sent: dict[str, pa.Array] = {}
    carrier = np.zeros(n, dtype=bool)
    carries_changed = np.zeros(n, dtype=bool)  # holds a contact field whose contact's changed
    firsts = np.full(contacts, n, dtype=np.int64)
    np.minimum.at(firsts, codes, np.arange(n, dtype=np.int64))
    changed_contacts = np.zeros(contacts, dtype=bool)
    finals: dict[str, tuple[pa.Array, np.ndarray]] = {}
    for name in CONTACT_FIELDS:
        if name not in fields:
            continue
        values, present = fields[name]
        last = np.full(contacts, -1, dtype=np.int64)
        at = np.flatnonzero(present)
        np.maximum.at(last, codes[at], at)
        has = last >= 0
        final = values.take(pa.array(np.where(has, last, 0)))
        changed = has & _differs(final, _known(confirmed, "contact", table.contact, firsts, name))
        finals[name] = (final, changed)
        changed_contacts |= changed
        carries_changed |= present & changed[codes]
    if options.coalesce:
        carrier = (np.arange(n) == firsts[codes]) & changed_contacts[codes]
        for name, (final, changed) in finals.items():
            keep = carrier & changed[codes]
            sent[name] = pc.if_else(pa.array(keep), final.take(pa.array(codes)), NONE)
    else:
        for name, (_final, changed) in finals.items():
            values, present = fields[name]
            sent[name] = pc.if_else(pa.array(present & changed[codes]), values, NONE)
    ids = pa.array(table.interview_id.astype(str))
    for name in INTERVIEW_FIELDS:
        if name not in fields:
            continue
        values, present = fields[name]
        own = _known(confirmed, "interview", ids, np.arange(n), name)
        sent[name] = pc.if_else(pa.array(present & _differs(values, own)), values, NONE)
    carries = np.zeros(n, dtype=bool)
    modified = np.zeros(n, dtype=bool)
    for name, values in sent.items():
        now = pc.is_valid(values).to_numpy(zero_copy_only=False)
        carries |= now
        before, present = fields[name]
        same = pc.fill_null(pc.equal(values, before), False).to_numpy(zero_copy_only=False)
        modified |= (now != present) | (now & ~same)
    rider = ~carries & carries_changed & options.coalesce
    unchanged = ~carries & ~rider
    role = np.where(
        carrier, CARRIER, np.where(carries_changed & ~carrier & options.coalesce, LEAN, PLAIN)
    )
    plan.settled.set_aside(Status.SKIPPED_UNCHANGED, table, np.flatnonzero(unchanged))
    table = _with_bodies(table, sent, modified, role)
    _ride(plan, table, np.flatnonzero(rider), firsts[codes])
    return table.take(np.flatnonzero(carries))


def _fields(table: RequestTable) -> dict[str, tuple[pa.Array, np.ndarray]]:
    """Each sent field's JSON literals (null where a request leaves it out) and where present."""
    columns = {CONTEXT: table.context_json, **table.texts}
    found = {}
    for name, column in columns.items():
        values = column.combine_chunks()
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
    confirmed: Mapping[FieldKey, str],
    level: str,
    keys: pa.Array | pa.ChunkedArray,
    at: Ints,
    name: str,
) -> pa.Array:
    """The confirmed value of field `name` for the keys at `at` (null: never confirmed)."""
    if not confirmed:
        return pa.nulls(len(at), pa.string())
    assert level == level_of(name)
    picked = keys.take(pa.array(at)).to_pylist()
    return pa.array([confirmed.get((level, key, name)) for key in picked], pa.string())


def _differs(values: pa.Array, known: pa.Array) -> np.ndarray:
    """Where a value is not the one confirmed (never confirmed: differs)."""
    same = pc.fill_null(pc.equal(values, known), False)
    return np.asarray(~same.to_numpy(zero_copy_only=False), dtype=bool)


def _with_bodies(
    table: RequestTable, sent: Mapping[str, pa.Array], modified: np.ndarray, role: Ints
) -> RequestTable:
    """`table` with the bodies of the requests at `modified` made again from `sent`, each
    keeping its whole body's hash, and the context a lean request no longer sends dropped."""
    trimmed = RequestTable(
        position=table.position,
        interview_id=table.interview_id,
        body_json=table.body_json,
        context_json=table.context_json,
        contact=table.contact,
        merge=table.merge,
        more_rows=dict(table.more_rows),
        role=role.astype(np.int8),
    )
    lean = pa.array(role == LEAN)
    if CONTEXT in sent:
        trimmed.context_json = pa.chunked_array(
            [
                pc.if_else(
                    lean,
                    NONE,
                    pc.if_else(
                        pc.is_valid(sent[CONTEXT]),
                        sent[CONTEXT],
                        table.context_json.combine_chunks(),
                    ),
                )
            ]
        )
    if not modified.any():
        trimmed._sha256 = table._sha256
        return trimmed
    at = np.flatnonzero(modified)
    picked = pa.array(at)
    members = []
    for name in sorted(sent):
        values = sent[name].take(picked)
        members.append(
            vj.literal_member(name, values, pc.is_valid(values).to_numpy(zero_copy_only=False))
        )
    bodies = vj.join_object(members, len(at))
    bodies = bodies.combine_chunks() if isinstance(bodies, pa.ChunkedArray) else bodies
    mask = pa.array(modified)
    trimmed.body_json = pa.chunked_array(
        [pc.replace_with_mask(table.body_json.combine_chunks(), mask, bodies)]
    )
    if table._sha256 is not None:
        whole = table._sha256.combine_chunks().take(picked)
    else:
        texts = pc.cast(table.body_json.combine_chunks().take(picked), pa.binary()).to_pylist()
        whole = pa.array([hashlib.sha256(text).digest() for text in texts], DIGEST)
    nulls = pa.nulls(len(table), DIGEST)
    trimmed.full_sha256 = pa.chunked_array([pc.replace_with_mask(nulls, mask, whole)])
    return trimmed


def _ride(plan: Plan, table: RequestTable, riders: Ints, carriers: Ints) -> None:
    """The rows of each rider become its carrier's (`carriers`: each request's carrier)."""
    if not len(riders):
        return
    ids = table.interview_id
    fulls = table.full_sha256
    for rider in riders.tolist():
        carrier = int(carriers[rider])
        first = int(table.position[carrier])
        rows = table.rows_of(rider)
        table.more_rows[first] = sorted([*table.rows_of(carrier), *rows])
        carried_by = int(ids[carrier])
        for row in rows:
            plan.sent_with[row] = carried_by
        digest = fulls[rider].as_py() if fulls is not None else None
        plan.riders.setdefault(carried_by, []).append(
            (int(ids[rider]), digest.hex() if digest else "")
        )
