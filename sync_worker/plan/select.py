"""Which planned requests a run sends: unchanged ones are skipped, `--max-rows` keeps the first."""

from __future__ import annotations

import numpy as np

from sync_worker.plan.model import NOT_ATTEMPTED, SKIPPED, Memory, Plan, PlanOptions, Settled
from sync_worker.request_table import Ints


def skip_unchanged(plan: Plan, options: PlanOptions, memory: Memory) -> None:
    """A request whose payload equals the last one sent successfully is skipped (unless --force)."""
    table = plan.table
    if options.force or not memory.sent_hashes or not len(table):
        return
    sent = memory.sent_hashes
    ids, hashes = table.interview_id.tolist(), table.sha256()
    unchanged = [
        i for i, (id_, h) in enumerate(zip(ids, hashes, strict=True)) if sent.get(id_) == h
    ]
    _set_aside(plan, np.array(unchanged, dtype=np.int64), SKIPPED)


def apply_max_rows(plan: Plan, max_rows: int | None) -> None:
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
