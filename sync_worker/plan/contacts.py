"""Which contact each row belongs to, for whole columns, and chunks of whole contacts.

A contact is what the row road (`rows.py`) makes of its rows one at a time: rows of one
interview are one interview, whose contact is the first non-empty `contact_email` among its rows
(lower case), else `interview:<id>`. Here the same key is derived for a million rows with Arrow
and numpy (about 0.4 s, most of it hashing 750,000 distinct keys), so merging can work by
columns where a contact's shape allows, and hand the rest to the row road a chunk of whole
contacts at a time: a chunk never splits a contact, so the row road sees every row of each
contact it is given and builds what it would build for the whole batch, while its Python objects
(about 1.7 KiB a row: 1.7 GB for a million) live for one chunk only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import CONTACT_KEY, CONTEXT, NO_EMAIL, email_key
from sync_worker.merger import parse_context
from sync_worker.plan.cells import Cells, nonempty
from sync_worker.store.digests import Ints


def lower(emails: pa.ChunkedArray) -> pa.ChunkedArray:
    """fields.email_key (Python's str.lower), which the row road uses, for a whole column.
    Arrow's utf8_lower maps some letters differently (U+0130 `İ` becomes `i`, where Python
    gives `i` and a combining dot) and follows its own Unicode version, so only ASCII cells are
    lowered by Arrow; the rare others go through Python, a cell at a time."""
    lowered = pc.ascii_lower(emails)
    other = np.flatnonzero(~pc.string_is_ascii(emails).to_numpy(zero_copy_only=False))
    if not len(other):
        return lowered
    texts = [email_key(text) for text in emails.take(pa.array(other)).to_pylist()]
    mask = np.zeros(len(emails), dtype=bool)
    mask[other] = True
    replaced = pc.replace_with_mask(
        lowered.combine_chunks(), pa.array(mask), pa.array(texts, pa.string())
    )
    return pa.chunked_array([replaced])


def unparsable(cells: Cells, positions: Ints) -> np.ndarray:
    """Rows (a mask over `positions`) of interviews with several rows whose JSON context does
    not parse. The row road settles them `invalid` before it groups rows, so they never key
    their interview's contact; they are left out of `Contacts.of` for the same reason. Only
    these few are parsed here: a single-row interview whose row is dropped keys nothing."""
    context = cells.text[CONTEXT]
    json_like = pc.starts_with(context, "{").to_numpy(zero_copy_only=False)[positions]
    bad = np.zeros(len(positions), dtype=bool)
    if not json_like.any():
        return bad
    _codes, several = interviews(cells.id_numbers[positions])
    suspects = np.flatnonzero(several & json_like)
    texts = context.take(pa.array(positions[suspects], pa.int64())).to_pylist()
    for index, text in zip(suspects.tolist(), texts, strict=True):
        try:
            parse_context(text)
        except ValueError:
            bad[index] = True
    return bad


def interviews(ids: Ints) -> tuple[Ints, np.ndarray]:
    """Each row's interview (a code, the same for rows of one id) and whether that interview
    has several rows. By sorting, not hashing: a million ids cost ~80 ms and ~20 MB, where a
    hash table (pandas.factorize) took ~55 MB."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    starts = np.empty(len(ids), dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    codes = np.empty(len(ids), dtype=np.int64)
    codes[order] = np.cumsum(starts) - 1
    sizes = np.bincount(codes)
    return codes, np.asarray(sizes[codes] > 1, dtype=bool)


def keyed_by_id(ids: Ints) -> pa.Array:
    """`interview:<id>` for each id."""
    return pc.binary_join_element_wise(NO_EMAIL, pc.cast(pa.array(ids), pa.string()), "")


def pick(column: pa.ChunkedArray, positions: Ints) -> pa.ChunkedArray:
    """The cells at `positions` (distinct, in file order): a slice, not a copy, when they are
    consecutive rows (usually every row of the batch, or a run of them)."""
    if not len(positions):
        return column.slice(0, 0)
    first = int(positions[0])
    if int(positions[-1]) - first + 1 == len(positions):
        return column.slice(first, len(positions))
    return column.take(pa.array(positions, pa.int64()))


@dataclass
class Contacts:
    """Rows (batch positions, in file order) with the contact each belongs to."""

    positions: Ints
    codes: Ints  # the contact of each row: an index into `keys`
    keys: pa.Array  # string: each contact's key, in order of first appearance
    several: np.ndarray  # bool per row: its interview has several rows

    @classmethod
    def of(cls, cells: Cells, positions: Ints) -> Contacts:
        ids = cells.id_numbers[positions]
        emails = lower(pick(cells.text[CONTACT_KEY], positions))
        has_email = nonempty(emails)
        codes, several = interviews(ids)
        if several.any():  # an interview's contact is its first row with an email
            rows = np.arange(len(positions), dtype=np.int64)
            first = np.full(len(ids), len(positions), dtype=np.int64)
            np.minimum.at(first, codes[has_email], rows[has_email])
            source = first[codes]
            has_email = source < len(positions)
            emails = emails.take(pa.array(np.where(has_email, source, 0)))
        keys = emails
        if not has_email.all():
            keys = pc.if_else(pa.array(has_email), emails, keyed_by_id(ids))
        return cls(positions, *_encoded(keys), several)

    def __len__(self) -> int:
        return len(self.positions)

    def whole(self, rows: np.ndarray) -> np.ndarray:
        """Every row of each contact that has a row in `rows` (a mask per row)."""
        touched = np.zeros(len(self.keys), dtype=bool)
        touched[self.codes[rows]] = True
        return np.asarray(touched[self.codes], dtype=bool)

    def subset(self, rows: np.ndarray) -> Contacts:
        """The rows of `rows` (a mask per row, of whole contacts); the keys stay as they are."""
        return Contacts(self.positions[rows], self.codes[rows], self.keys, self.several[rows])

    def chunks(self, rows_per_chunk: int) -> Iterator[Contacts]:
        """A chunk of whole contacts at a time, each chunk's rows in file order: a contact's
        rows are never split, and a contact larger than a chunk is a chunk of its own."""
        if not len(self):
            return
        sizes = np.bincount(self.codes, minlength=len(self.keys))
        before = np.cumsum(sizes) - sizes  # rows of the contacts that came first
        chunk = (before // max(1, rows_per_chunk))[self.codes]
        order = np.argsort(chunk, kind="stable")  # stable: file order within each chunk
        bounds = np.flatnonzero(np.diff(chunk[order], prepend=-1))
        for start, stop in zip(bounds, [*bounds[1:], len(order)], strict=True):
            rows = order[start:stop]
            yield Contacts(self.positions[rows], self.codes[rows], self.keys, self.several[rows])


def _encoded(keys: pa.ChunkedArray) -> tuple[Ints, pa.Array]:
    """Each key's code and the distinct keys, in order of first appearance. Arrow encodes a
    chunked column with one dictionary for all its chunks (the last chunk's is complete)."""
    encoded = pc.dictionary_encode(keys)
    if not encoded.num_chunks:
        return np.zeros(0, dtype=np.int64), pa.array([], pa.string())
    last = encoded.chunks[-1].dictionary
    if not all(chunk.dictionary.equals(last) for chunk in encoded.chunks):
        encoded = pc.dictionary_encode(pa.chunked_array([keys.combine_chunks()]))  # never seen
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks])
    return codes.astype(np.int64), encoded.chunks[-1].dictionary
