"""What `sync-worker plan` prints: one JSON line per request, built a chunk at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.plan.model import Plan
from sync_worker.plan.request_table import CHUNK
from sync_worker.read.reader import FILE_COL, ROW_COL, Batch


def plan_lines(plan: Plan, batch: Batch) -> Iterator[memoryview]:
    """One JSON line per request, built a chunk of requests at a time, as UTF-8 bytes."""
    table = plan.table
    files = batch.frame[FILE_COL].to_numpy()
    rows = batch.frame[ROW_COL].to_numpy()
    names = [json.dumps(name, ensure_ascii=False) for name in batch.files]
    for start in range(0, len(table), CHUNK):
        stop = min(start + CHUNK, len(table))
        positions = table.position[start:stop]
        sources = _sources(names, files[positions], rows[positions])
        if table.more_rows:
            sources = _patch_sources(sources, plan, start, stop, names, files, rows)
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
        yield _concatenated(line)


def _sources(names: list[str], files: Any, rows: Any) -> pa.Array:
    """`[{"source_file": ..., "source_row": N}]` for single-row requests."""
    prefix = pa.array([f'[{{"source_file": {n}, "source_row": ' for n in names]).take(
        pa.array(files)
    )
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(rows), pa.string()), "}]", "")


def _patch_sources(
    sources: pa.Array,
    plan: Plan,
    start: int,
    stop: int,
    names: list[str],
    files: Any,
    rows: Any,
) -> pa.Array:
    """The rows of requests of several rows: its own, not those that ride with it (the
    contact's interviews whose rows end as it ends). Only requests with several rows are
    looked at (a backfill's riders make many carriers so)."""
    values = sources.to_pylist()
    riding = plan.sent_with
    table = plan.table
    firsts = np.fromiter(table.more_rows, dtype=np.int64, count=len(table.more_rows))
    several = np.flatnonzero(np.isin(table.position[start:stop], firsts))
    for index in (several + start).tolist():
        positions = [p for p in table.rows_of(index) if p not in riding]
        if len(positions) > 1:
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
