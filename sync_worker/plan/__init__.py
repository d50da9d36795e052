"""Turn a batch of rows into the requests a run sends, and settle the rows it will not send.

Pure: takes the batch, the merge inputs and what the state remembers; returns a Plan. Rows of
one interview become one request; requests of one contact form a chain sent in file order.

- `cells`: the cells checked for whole columns; rows that cannot be sent settled `invalid`;
- `rows`: the row road, the reference (JSON contexts, several rows of one interview, merging);
- `columns`: the column road, a speed-up for the common row (must give the same bytes);
- `select`: skipping unchanged requests and `--max-rows`;
- `output`: the lines `sync-worker plan` prints.
"""

from __future__ import annotations

import numpy as np

from sync_worker.plan.cells import Cells, settle_invalid
from sync_worker.plan.columns import column_requests
from sync_worker.plan.model import (
    INVALID,
    NOT_ATTEMPTED,
    SKIPPED,
    Memory,
    Plan,
    PlanOptions,
    Settled,
)
from sync_worker.plan.output import plan_lines
from sync_worker.plan.rows import row_requests
from sync_worker.plan.select import apply_max_rows, skip_unchanged
from sync_worker.reader import Batch
from sync_worker.request_table import RequestTable, concat

__all__ = [
    "INVALID",
    "NOT_ATTEMPTED",
    "SKIPPED",
    "Memory",
    "Plan",
    "PlanOptions",
    "Settled",
    "build_plan",
    "plan_lines",
]


def build_plan(batch: Batch, options: PlanOptions, memory: Memory) -> Plan:
    """Validate rows, combine them per interview and contact, merge, hash and skip."""
    cells = Cells.of(batch)
    settled: dict[int, Settled] = {}
    settle_invalid(batch, cells, settled)
    by_columns = cells.sendable & ~cells.needs_rows(options)
    if not options.vectorise:
        by_columns = np.zeros(len(batch), dtype=bool)
    plan = Plan(RequestTable.empty(), settled)
    by_rows = np.flatnonzero(cells.sendable & ~by_columns)
    requests = row_requests(batch, cells, by_rows, options, memory, plan)
    columns = column_requests(cells, by_columns, options.for_sending)
    plan.table = concat([columns, RequestTable.from_requests(requests)])
    skip_unchanged(plan, options, memory)
    apply_max_rows(plan, options.max_rows)
    return plan
