"""The column road, a speed-up: requests of the common row built for whole columns with Arrow.

The common row has a valid id, plain-text cells, is its interview's only row, and is not merged.
Its canonical JSON is built for all such rows at once (`vectorjson`), where the row road
(`rows.py`, the reference) would build a million Python objects. Both roads give the same bytes;
the tests hold them side by side (tests/test_planner.py).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import CONTACT_KEY, CONTEXT, NOTES_KEY, TEXT_FIELDS
from sync_worker.plan import vectorjson as vj
from sync_worker.plan.cells import Cells, nonempty
from sync_worker.plan.contacts import contact_keys, lower, pick
from sync_worker.plan.model import Memory
from sync_worker.plan.pieces import two_at_a_time
from sync_worker.plan.request_table import RequestTable, concat
from sync_worker.store.digests import Ints

HALVES_FROM = 100_000  # rows from which they are built in two halves at once (pieces.py)


def column_requests(cells: Cells, mask: np.ndarray, memory: Memory) -> RequestTable:
    """One request per row of `mask`, its canonical JSON built for whole columns, with its
    contact and each field on its own (a contact's fields travel once: coalesce.py)."""
    positions = np.flatnonzero(mask).astype(np.int64)
    if len(positions) < HALVES_FROM:
        return _requests(cells, positions, memory)
    halves = np.array_split(positions, 2)
    return concat(list(two_at_a_time(lambda half: _requests(cells, half, memory), halves)))


def _requests(cells: Cells, positions: Ints, memory: Memory) -> RequestTable:
    """The requests of the rows at `positions` (in file order)."""
    length = len(positions)

    def take(column: pa.ChunkedArray) -> pa.ChunkedArray:
        return pick(column, positions)  # consecutive rows: a slice, not a copy

    text = take(cells.text[CONTEXT])
    has_text = nonempty(text)
    cells_by_key = {key: take(column) for key, column in cells.context.items()}
    present = {key: nonempty(column) for key, column in cells_by_key.items()}
    members = [
        vj.text_member(key, cells_by_key[key], present[key])
        if key in cells_by_key
        else vj.text_member(NOTES_KEY, text, has_text)
        for key in sorted({*cells_by_key, NOTES_KEY})
    ]
    any_cell = np.logical_or.reduce([*present.values(), np.zeros(length, bool)])
    context = _context_literal(members, text, any_cell, has_text, length)
    has_context = any_cell | has_text
    none = pa.scalar(None, pa.string())
    context_json = (
        context if has_context.all() else pc.if_else(pa.array(has_context), context, none)
    )
    fields = {CONTEXT: _chunked(context_json)} if has_context.any() else {}
    for name in TEXT_FIELDS:
        column = take(cells.text[name])
        filled = nonempty(column)
        if filled.any():
            fields[name] = vj.text_literals(column, filled)
    emails = take(cells.text[CONTACT_KEY])
    return RequestTable(
        position=positions,
        interview_id=cells.id_numbers[positions],
        fields=fields,
        context_json=_chunked(context_json),
        contact=_chunked(contact_keys(cells.id_numbers[positions], lower(emails), memory)),
        merge=_repeat("off", length),
    )


def _repeat(value: str, length: int) -> pa.ChunkedArray:
    return pa.chunked_array([pa.repeat(pa.scalar(value, pa.string()), length)])


def _context_literal(
    members: list[vj.Pieces],
    text: pa.ChunkedArray,
    any_cell: np.ndarray,
    has_text: np.ndarray,
    length: int,
) -> vj.Text:
    """The context as JSON: an object where a context.* cell is filled, else the plain text."""
    if any_cell.all():
        return vj.join_object(members, length)
    if not has_text.any():
        return vj.join_object(members, length) if any_cell.any() else pa.nulls(length, pa.string())
    return pc.if_else(pa.array(any_cell), vj.join_object(members, length), vj.quoted(text))


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
