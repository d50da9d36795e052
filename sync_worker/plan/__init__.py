"""Turn a batch of rows into the requests a run sends, and settle the rows it will not send.

Pure: takes the batch, the merge inputs and what the state remembers; returns a Plan. Rows of
one interview become one request; requests of one contact form a chain sent in file order.

- `cells`: the cells checked for whole columns; rows that cannot be sent settled `invalid`;
- `rows`: the row road, the reference (JSON contexts, several rows of one interview, merging);
- `columns`: the column road, a speed-up for the common row (must give the same bytes);
- `contacts`, `merged`: merging by columns for flat contacts, by chunks of whole contacts for
  the rest (must give the same bytes as the row road);
- `remembered`: what the state remembers (payload hashes, contexts), as columns;
- `select`: skipping unchanged requests and `--max-rows`;
- `coalesce`: what each request still carries: changed fields only, a contact's once;
- `output`: the lines `sync-worker plan` prints.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from sync_worker.fields import CONTACT_FIELDS, CONTEXT
from sync_worker.plan.cells import Cells, nonempty, settle_invalid
from sync_worker.plan.coalesce import trim
from sync_worker.plan.columns import column_requests
from sync_worker.plan.contacts import Contacts, adopt, settle_conflicts, unparsable
from sync_worker.plan.merged import flat_rows, merged_requests
from sync_worker.plan.model import (
    Memory,
    Outcomes,
    Plan,
    PlanOptions,
    Settled,
    SettledRows,
)
from sync_worker.plan.output import plan_lines
from sync_worker.plan.request_table import RequestTable, concat
from sync_worker.plan.rows import row_requests
from sync_worker.plan.select import apply_max_rows, skip_unchanged
from sync_worker.read.reader import Batch
from sync_worker.store.digests import Ints
from sync_worker.store.remembered import StateNotes

__all__ = [
    "Memory",
    "Outcomes",
    "Plan",
    "PlanOptions",
    "Settled",
    "SettledRows",
    "build_plan",
    "plan_lines",
]


def build_plan(batch: Batch, options: PlanOptions, memory: Memory) -> Plan:
    """Validate rows, combine them per interview and contact, merge, hash and skip."""
    cells = Cells.of(batch)
    settled = Outcomes()
    settle_invalid(batch, cells, settled)
    settle_conflicts(batch, cells, settled)
    plan = Plan(RequestTable.empty(), settled)
    memory, plan.email_changes = adopt(cells, np.flatnonzero(cells.sendable), memory, options.rules)
    if options.merge and options.vectorise:
        tables = _merged(batch, cells, options, memory, plan)
    else:
        tables = iter(_unmerged(batch, cells, options, memory, plan))
    # skipped whole contacts at a time: a contact's rows may come in tables of both roads (a
    # JSON context, an interview of several rows); the tables hold fields, not yet bodies
    plan.table = skip_unchanged(plan, concat(list(tables)), options, memory)
    if options.for_sending and not options.merge:
        plan.count_several_contexts()
    trim(plan, options, memory, _filled(cells, plan.table))
    apply_max_rows(plan, options.max_rows)
    return plan


def _filled(cells: Cells, table: RequestTable) -> dict[str, np.ndarray] | None:
    """Contact field -> the rows that fill it; asked only when an interview has several rows
    (its request's value may come from a row after another interview's)."""
    if not table.more_rows:
        return None
    filled = {name: nonempty(cells.text[name]) for name in CONTACT_FIELDS}
    for column in cells.context.values():  # `context.<key>` cells fill the context too
        filled[CONTEXT] = filled[CONTEXT] | nonempty(column)
    return filled


def _unmerged(
    batch: Batch, cells: Cells, options: PlanOptions, memory: Memory, plan: Plan
) -> list[RequestTable]:
    """The common row by columns, the rest row by row (and every row when not vectorising:
    the reference the tests compare with)."""
    by_columns = cells.sendable & ~cells.needs_rows(options)
    if not options.vectorise:
        by_columns = np.zeros(len(batch), dtype=bool)
    by_rows = np.flatnonzero(cells.sendable & ~by_columns)
    requests = row_requests(batch, cells, by_rows, options, memory, plan)
    return [
        column_requests(cells, by_columns, memory),
        RequestTable.from_requests(requests),
    ]


def _merged(
    batch: Batch, cells: Cells, options: PlanOptions, memory: Memory, plan: Plan
) -> Iterator[RequestTable]:
    """Flat contacts by columns (`merged.py`), the others by the row road a chunk of whole
    contacts at a time, so its Python objects never outgrow a chunk."""
    sendable = np.flatnonzero(cells.sendable)
    dropped = unparsable(cells, sendable)
    contacts = Contacts.of(cells, sendable[~dropped], memory)
    plan.contact_codes = np.full(len(batch), -1, dtype=np.int64)  # each row's contact, as a
    plan.contact_codes[contacts.positions] = contacts.codes  # number: trimming groups by it
    flat = flat_rows(cells, contacts, options.rules)
    yield from merged_requests(cells, contacts.subset(flat), options, memory, plan)
    dropped_rows = row_requests(batch, cells, sendable[dropped], options, memory, plan, {})
    yield RequestTable.from_requests(dropped_rows)  # settles them invalid: no request
    others = contacts.subset(~flat)
    remembered = memory.state.find(others.keys) if len(memory.state) and len(others) else None
    for chunk in others.chunks(options.chunk_rows):
        known = _remembered(chunk, remembered, memory)
        requests = row_requests(batch, cells, chunk.positions, options, memory, plan, known)
        yield RequestTable.from_requests(requests)


def _remembered(chunk: Contacts, found: Ints | None, memory: Memory) -> dict[str, StateNotes]:
    """What the state remembers of a chunk's contacts (`found`: each contact's index in it,
    looked up once for all chunks)."""
    if found is None:
        return {}
    codes = np.unique(chunk.codes)
    return memory.state.entries(chunk.keys.take(pa.array(codes)).to_pylist(), found[codes])
