"""Which planned requests a run sends: unchanged ones are skipped, `--max-rows` keeps the first."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from sync_worker.plan.model import Memory, Plan, PlanOptions
from sync_worker.plan.request_table import RequestTable, numbered
from sync_worker.store.digests import Ints
from sync_worker.vocabulary import Status


def skip_unchanged(
    plan: Plan, table: RequestTable, options: PlanOptions, memory: Memory
) -> RequestTable:
    """A request whose payload equals the last one sent successfully is skipped (unless
    --force): its rows settle in the plan, and the requests of `table` left are returned.

    Whole contacts at a time: a contact with any request changed keeps all its requests, so
    trimming (coalesce.py) sees every value each of its fields takes, the last one included; it
    settles those that need nothing after all. (Skipping them here sent an earlier row's
    notes over a later one's: the later row unchanged and skipped, the earlier one resent.)"""
    if options.force or not len(memory.sent) or not len(table):
        return table
    unchanged = _unchanged(table, memory)
    if len(unchanged) < len(table):
        codes = numbered(table.contact)
        changed = np.ones(len(table), dtype=bool)
        changed[unchanged] = False
        dirty = np.zeros(int(codes.max()) + 1, dtype=bool)
        dirty[codes[changed]] = True
        unchanged = unchanged[~dirty[codes[unchanged]]]
    return _set_aside(plan, table, unchanged, Status.SKIPPED_UNCHANGED)


def _unchanged(table: RequestTable, memory: Memory) -> Ints:
    """The requests whose payload hash is the one last sent for their interview, compared as
    columns of 32-byte digests."""
    same = pc.equal(table.sha256(), memory.sent.hashes_of(table.interview_id))
    return np.flatnonzero(pc.fill_null(same, False).to_numpy(zero_copy_only=False))


def apply_max_rows(plan: Plan, max_rows: int | None) -> None:
    """--max-rows: send the first N requests in file order; the rest are not attempted."""
    if max_rows is None or len(plan.table) <= max_rows:
        return
    left_out = np.arange(max_rows, len(plan.table), dtype=np.int64)
    plan.contacts_sent_to = None  # fewer requests: counted again from them
    plan.table = _set_aside(plan, plan.table, left_out, Status.NOT_ATTEMPTED)


def _set_aside(plan: Plan, table: RequestTable, aside: Ints, status: Status) -> RequestTable:
    """Settle every row of the requests of `table` at `aside` with `status`; the rest."""
    plan.settled.set_aside(status, table, aside)
    kept = np.ones(len(table), dtype=bool)
    kept[aside] = False
    return table.take(np.flatnonzero(kept)) if len(aside) else table
