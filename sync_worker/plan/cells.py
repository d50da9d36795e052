"""The cells of a batch, checked for whole columns at once: ids, what each row fills, and the
rows that cannot be sent (settled `invalid` with file, row and column)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import (
    CANONICAL_COLUMNS,
    CONTEXT,
    CONTEXT_PREFIX,
    ID,
    ID_DIGITS,
    MAX_ID,
    NOTES_KEY,
    SENT_FIELDS,
    nothing_to_update,
)
from sync_worker.plan.model import Outcomes, PlanOptions, invalid
from sync_worker.read.reader import Batch
from sync_worker.store.digests import Ints

MAX_ID_TEXT = str(MAX_ID)


@dataclass
class Cells:
    """Stripped text columns and the row masks every later step needs."""

    ids: pa.ChunkedArray  # interview_id as written, stripped
    id_numbers: Ints  # as integers where valid, 0 elsewhere
    valid_id: np.ndarray  # bool per row
    text: dict[str, pa.ChunkedArray]  # every canonical column but the id
    context: dict[str, pa.ChunkedArray]  # context key -> column
    has_fields: np.ndarray  # something to update: any sent field or context cell
    conflicting: np.ndarray  # bool per row: its interview's rows carry two emails (invalid)

    @classmethod
    def of(cls, batch: Batch) -> Cells:
        frame = batch.frame

        def stripped(column: str) -> pa.ChunkedArray:
            values = pa.array(frame[column], pa.string())
            if not isinstance(values, pa.ChunkedArray):
                values = pa.chunked_array([values])
            return pc.utf8_trim_whitespace(values) if _may_need_trimming(values) else values

        ids = stripped(ID)
        valid = _valid_ids(ids)
        if batch.bad_rows:  # a row read only in part is never sent, whatever its id
            whole = np.ones(len(frame), dtype=bool)
            whole[list(batch.bad_rows)] = False
            valid = pc.and_(valid, pa.chunked_array([whole]))
        numbers = pc.cast(pc.if_else(valid, ids, "0"), pa.int64()).to_numpy()
        text = {c: stripped(c) for c in CANONICAL_COLUMNS if c != ID}
        context = {k: stripped(CONTEXT_PREFIX + k) for k in batch.context_keys}
        filled = [nonempty(text[c]) for c in SENT_FIELDS]
        filled += [nonempty(column) for column in context.values()]
        has_fields = np.logical_or.reduce(filled) if filled else np.zeros(len(frame), bool)
        valid_ids = valid.to_numpy(zero_copy_only=False)
        unclaimed = np.zeros(len(frame), dtype=bool)
        return cls(ids, numbers, valid_ids, text, context, has_fields, unclaimed)

    @property
    def sendable(self) -> np.ndarray:
        return np.asarray(self.valid_id & self.has_fields & ~self.conflicting, dtype=bool)

    def needs_rows(self, options: PlanOptions) -> np.ndarray:
        """Rows the column road cannot build: the row-by-row road takes them."""
        if options.merge:
            return np.ones(len(self.valid_id), dtype=bool)
        context = self.text[CONTEXT]
        needs = pc.starts_with(context, "{").to_numpy(zero_copy_only=False)  # JSON to parse
        if NOTES_KEY in self.context:  # plain text would collide with a context.notes column
            needs |= nonempty(context)
        several = np.zeros(len(needs), dtype=bool)  # several rows of one interview
        several[self.sendable] = pd.Series(self.id_numbers[self.sendable]).duplicated(keep=False)
        return np.asarray(needs | several, dtype=bool)


def _valid_ids(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whole positive numbers that fit in 64 bits."""
    digits = pc.match_substring_regex(ids, f"^{ID_DIGITS}$")
    positive = pc.not_equal(pc.utf8_ltrim(ids, characters="0"), "")
    too_big = pc.and_(pc.equal(pc.utf8_length(ids), 19), pc.greater(ids, MAX_ID_TEXT))
    return pc.and_(pc.and_(digits, positive), pc.invert(too_big))


def _may_need_trimming(column: pa.ChunkedArray) -> bool:
    """Could a cell start or end with white space? Looks only at each cell's first and last
    byte, straight from the Arrow buffers, so a clean column is neither copied nor scanned."""
    for chunk in column.chunks:
        _validity, offsets_buffer, data = chunk.buffers()
        if data is None or len(chunk) == 0:
            continue
        offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        starts, ends = offsets[:-1], offsets[1:]
        filled = ends > starts
        raw = np.frombuffer(data, dtype=np.uint8)
        edges = np.concatenate([raw[starts[filled]], raw[ends[filled] - 1]])
        # ASCII white space, or any non-ASCII byte (which might start Unicode white space)
        if ((edges <= 0x20) | (edges >= 0x80)).any():
            return True
    return False


def nonempty(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.not_equal(column, "").to_numpy(zero_copy_only=False), dtype=bool)


def settle_invalid(batch: Batch, cells: Cells, settled: Outcomes) -> None:
    """Rows the reader could read only in part, rows with an id that is not a positive whole
    number, and rows with nothing to update."""
    for position, bad in batch.bad_rows.items():
        settled[position] = invalid(batch, position, bad.code, bad.column, bad.message)
    bad_ids = np.flatnonzero(~cells.valid_id)
    if batch.bad_rows:
        bad_ids = bad_ids[~np.isin(bad_ids, list(batch.bad_rows))]
    for position, raw in zip(bad_ids.tolist(), cells.ids.take(bad_ids).to_pylist(), strict=True):
        message = f"{ID} {raw!r} is not a positive whole number"
        settled[position] = invalid(batch, position, "invalid_interview_id", ID, message)
    for position in np.flatnonzero(cells.valid_id & ~cells.has_fields).tolist():
        settled[position] = invalid(batch, position, "no_fields", "", nothing_to_update())
