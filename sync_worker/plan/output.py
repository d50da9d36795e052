"""What `sync-worker plan` prints: one JSON line per request, built a chunk at a time."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.plan.model import Plan
from sync_worker.plan.pieces import two_at_a_time
from sync_worker.plan.request_table import CHUNK
from sync_worker.read.reader import FILE_COL, ROW_COL, Batch
from sync_worker.store.digests import Ints

PRINTED = CHUNK // 2  # requests a piece of the output holds; two are made at once


def plan_lines(plan: Plan, batch: Batch) -> Iterator[memoryview]:
    """One JSON line per request, as UTF-8 bytes, a piece of requests at a time, two pieces
    made at once (pieces.py), each half the chunk that was made alone before."""
    table = plan.table
    files = batch.frame[FILE_COL].to_numpy()
    rows = batch.frame[ROW_COL].to_numpy()
    names = [json.dumps(name, ensure_ascii=False) for name in batch.files]
    several = _several(plan)

    def piece(start: int) -> memoryview:
        stop = min(start + PRINTED, len(table))
        positions = table.position[start:stop]
        sources = _sources(names, files[positions], rows[positions])
        patched = several[(several >= start) & (several < stop)]
        if len(patched):
            sources = _patch_sources(sources, plan, start, patched, names, files, rows)
        line = pc.binary_join_element_wise(
            '{"interview_id": ',
            pc.cast(pa.array(table.interview_id[start:stop]), pa.string()),
            ', "body": ',
            table.bodies(start, stop),
            ', "source_rows": ',
            sources,
            ', "merge": "',
            table.merge.slice(start, stop - start),
            '"}\n',
            "",
        )
        return _concatenated(line)

    yield from two_at_a_time(piece, range(0, len(table), PRINTED))


def _sources(names: list[str], files: Any, rows: Any) -> pa.Array:
    """`[{"source_file": ..., "source_row": N}]` for single-row requests."""
    prefix = pa.array([f'[{{"source_file": {n}, "source_row": ' for n in names]).take(
        pa.array(files)
    )
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(rows), pa.string()), "}]", "")


def _several(plan: Plan) -> Ints:
    """The requests (indices into the plan's table) that send several rows of their own: rows
    that ride with a request (a contact's interviews whose rows end as it ends) are not its
    own, and a backfill's riders make many requests of several rows, few of them its own."""
    table = plan.table
    if not table.more_rows:
        return np.empty(0, dtype=np.int64)
    firsts = np.fromiter(table.more_rows, dtype=np.int64, count=len(table.more_rows))
    lists = list(table.more_rows.values())
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    rows = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=counts.sum())
    riding = np.fromiter(plan.sent_with, dtype=np.int64, count=len(plan.sent_with))
    starts = np.cumsum(counts) - counts
    rides = np.add.reduceat(np.isin(rows, riding).astype(np.int64), starts)
    own = firsts[counts - rides > 1]
    return np.sort(np.searchsorted(table.position, own))


def _patch_sources(
    sources: pa.Array,
    plan: Plan,
    start: int,
    several: Ints,
    names: list[str],
    files: Any,
    rows: Any,
) -> pa.Array:
    """The rows of the requests at `several` (of this chunk, from `start`), which send several
    rows of their own, all listed."""
    riding = plan.sent_with
    table = plan.table
    values = sources.to_pylist()
    for index in several.tolist():
        positions = [p for p in table.rows_of(index) if p not in riding]
        values[index - start] = json.dumps(
            [
                {"source_file": json.loads(names[files[p]]), "source_row": int(rows[p])}
                for p in positions
            ],
            ensure_ascii=False,
        )
    return pa.array(values, pa.string())


def _concatenated(lines: pa.Array | pa.ChunkedArray) -> memoryview:
    """All strings of an Arrow string array back to back: a view of its data buffer, not a
    copy (the view keeps the buffer alive)."""
    array = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    if len(array) == 0:
        return memoryview(b"")
    _validity, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    first, last = offsets[array.offset], offsets[array.offset + len(array)]
    return memoryview(data.slice(int(first), int(last - first)))
