"""Which contact each row belongs to, for whole columns, and chunks of whole contacts.

A contact is what the row road (`rows.py`) makes of its rows one at a time: rows of one
interview are one interview, and `contact_keys` (the one rule, used by every road) names its
contact from what is known, best first:
- the contact the API named for it (`[merge] resolve_contacts`): `contact:<id>`;
- the key the state knows it was sent as, unless that was only `interview:<id>` (the state
  never knew its contact): the server never moves an interview to another contact, so a later
  export that gives it no email or another one does not make it another contact;
- the first non-empty `contact_email` among its rows (lower case), else `interview:<id>`.
Rows of one interview with two different emails are settled `invalid` first
(`conflicting_contact`). Where an interview's key is no longer the one it was sent as, the
contact adopts what the state remembers of the old key (`adopt`; merged with what it remembers
under the new key, and under any other old key, in the order they were sent), so merging never
starts from nothing, or from only part of what was sent, for a contact the state knows under
another name.

Here the same key is derived for a million rows with Arrow
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

from sync_worker.fields import CONTACT_KEY, CONTEXT, NO_EMAIL, RESOLVED, email_key
from sync_worker.merger import MergeRules, canonical, fold, parse_context
from sync_worker.plan.cells import Cells, nonempty
from sync_worker.plan.model import Memory, Outcomes, invalid
from sync_worker.read.reader import Batch
from sync_worker.store.digests import Ints
from sync_worker.store.remembered import Remembered

CONFLICTING = "conflicting_contact"


def contact_keys(ids: Ints, emails: pa.Array | pa.ChunkedArray, memory: Memory) -> pa.Array:
    """Each interview's contact key (see the module's docstring): `ids` and their `emails`
    (lower case, as `lower` makes them; empty: none), aligned. Every road keys contacts here,
    the row road a chunk's interviews at a time, the column roads whole columns."""
    given = emails.combine_chunks() if isinstance(emails, pa.ChunkedArray) else emails
    named = nonempty(given)  # every row with an email (usual): no id key is made
    keys = given if named.all() else pc.if_else(pa.array(named), given, keyed_by_id(ids))
    if len(memory.links):
        sent_as = memory.links.keys_of(ids)
        named = pc.invert(pc.starts_with(sent_as, NO_EMAIL)).fill_null(False)
        keys = pc.if_else(named, sent_as, keys)
    if len(memory.resolved):
        resolved = memory.resolved.keys_of(ids)
        keys = pc.if_else(pc.is_valid(resolved), resolved, keys)
    return _plain(keys)


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def interview_emails(cells: Cells, positions: Ints) -> tuple[Ints, pa.Array, np.ndarray]:
    """Each row's interview id, its interview's email (the first non-empty one among its rows,
    lower case) and whether its interview has several rows."""
    ids = cells.id_numbers[positions]
    emails = _plain(lower(pick(cells.text[CONTACT_KEY], positions)))
    codes, several = interviews(ids)
    if several.any():  # an interview's contact is its first row with an email
        has_email = nonempty(emails)
        rows = np.arange(len(positions), dtype=np.int64)
        first = np.full(len(ids), len(positions), dtype=np.int64)
        np.minimum.at(first, codes[has_email], rows[has_email])
        source = first[codes]
        found = source < len(positions)
        picked = emails.take(pa.array(np.where(found, source, 0)))
        emails = pc.if_else(pa.array(found), picked, "")
    return ids, emails, several


def settle_conflicts(batch: Batch, cells: Cells, settled: Outcomes) -> None:
    """Rows of an interview that carry two different emails: which contact it belongs to is
    unknown, so every row of it is `invalid` (the emails named), and none keys a contact."""
    rows = np.flatnonzero(cells.valid_id)
    rows = rows[_repeated(cells.id_numbers[rows])]  # an interview of one row has one email
    emails = _plain(lower(pick(cells.text[CONTACT_KEY], rows)))
    with_email = nonempty(emails)
    rows, emails = rows[with_email], emails.filter(pa.array(with_email))
    if len(rows) < 2:
        return
    codes = np.asarray(pc.dictionary_encode(emails).indices.to_numpy(zero_copy_only=False))
    ids = cells.id_numbers[rows]
    order = np.lexsort((codes, ids))
    same_id = ids[order][1:] == ids[order][:-1]
    other = same_id & (codes[order][1:] != codes[order][:-1])
    if not other.any():
        return
    bad_ids = np.unique(ids[order][1:][other])
    _settle(batch, cells, settled, bad_ids, rows, ids, emails)


def _repeated(ids: Ints) -> np.ndarray:
    """Where an id is one that more than one row has (a sort of the ids: a backfill's million
    interviews of one row each are done with before any email is lowered or hashed)."""
    ordered = np.sort(ids)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(twice):
        return np.zeros(len(ids), dtype=bool)
    return np.isin(ids, twice)


def _settle(
    batch: Batch,
    cells: Cells,
    settled: Outcomes,
    bad_ids: Ints,
    rows: Ints,
    ids: Ints,
    emails: pa.Array,
) -> None:
    named: dict[int, list[str]] = {}
    hit = np.isin(ids, bad_ids)
    for interview, email in zip(
        ids[hit].tolist(), emails.filter(pa.array(hit)).to_pylist(), strict=True
    ):
        seen = named.setdefault(interview, [])
        if email not in seen:
            seen.append(email)
    conflicting = np.isin(cells.id_numbers, bad_ids) & cells.valid_id
    cells.conflicting = conflicting
    for position in np.flatnonzero(conflicting).tolist():
        interview = int(cells.id_numbers[position])
        first, second = named[interview][:2]
        message = (
            f"interview {interview} has rows with two emails, {first} and {second}: which "
            "contact it belongs to is unclear; give all its rows one email (or none)"
        )
        settled[position] = invalid(batch, position, CONFLICTING, CONTACT_KEY, message)


def adopt(cells: Cells, positions: Ints, memory: Memory, rules: MergeRules) -> tuple[Memory, int]:
    """What the state remembers, with each contact key that is no longer the one its interviews
    were sent as given the old key's remembered notes (merged with its own and with those
    other interviews bring, in the order they were sent); and how many interviews the export
    now gives another email than the one they were sent as (they stay with the contact the
    state knows).
    Done once per batch, before either road plans, so both see the same notes."""
    if not len(memory.links) or not len(positions):
        return memory, 0
    ids, emails, _several = interview_emails(cells, positions)
    ids, first = np.unique(ids, return_index=True)
    emails = emails.take(pa.array(first))
    sent_as = memory.links.keys_of(ids)
    was_email = pc.invert(
        pc.or_(pc.starts_with(sent_as, NO_EMAIL), pc.starts_with(sent_as, RESOLVED))
    )
    changed = pc.and_(was_email.fill_null(False), pc.not_equal(emails, sent_as).fill_null(False))
    changed = pc.and_(changed, pa.array(nonempty(emails)))
    moves = int(pc.sum(changed).as_py() or 0)
    if not len(memory.state):
        return memory, moves
    keys = contact_keys(ids, emails, memory)
    # an interview never sent that the API names a contact of: its export email is what the
    # state may know that contact's notes under (another interview of it was sent with it)
    resolved_unsent = pc.and_(
        pc.and_(pc.starts_with(keys, RESOLVED).fill_null(False), pc.is_null(sent_as)),
        pa.array(nonempty(emails)),
    )
    old = pc.if_else(resolved_unsent, emails, sent_as)
    moved = pc.and_(pc.is_valid(old), pc.not_equal(keys, old).fill_null(False))
    moved_at = pa.array(np.flatnonzero(moved.to_numpy(zero_copy_only=False)))
    new_keys, old_keys = keys.take(moved_at), old.take(moved_at)
    if len(memory.resolved) and len(new_keys):  # the API's contact: all its interviews known
        also = pc.is_in(memory.resolved.keys, value_set=new_keys).to_numpy(zero_copy_only=False)
        others = memory.resolved.ids[also]
        new_keys = pa.concat_arrays([new_keys, memory.resolved.keys.filter(pa.array(also))])
        old_keys = pa.concat_arrays([old_keys, memory.links.keys_of(others)])
    return _adopted(memory, new_keys, old_keys, rules), moves


def _adopted(memory: Memory, new_keys: pa.Array, old_keys: pa.Array, rules: MergeRules) -> Memory:
    """`memory` with each of `new_keys` given what the state remembers of its `old_keys`
    (aligned): one old entry, where the new key has none, as it is; else every entry, its own
    included, merged in the order they were sent (the merge rules: nothing any of them holds
    is lost, and the one sent last wins a key both give)."""
    import dataclasses

    state: Remembered = memory.state
    if not len(new_keys):
        return memory
    old_at = state.find(old_keys.fill_null(""))
    usable = (old_at >= 0) & (
        pc.not_equal(new_keys, old_keys).fill_null(True).to_numpy(zero_copy_only=False)
    )
    if not usable.any():
        return memory
    new_keys = new_keys.filter(pa.array(usable))
    own_at = state.find(new_keys)
    entries: dict[str, list[int]] = {}  # new key -> the entries it brings together
    for key, own, at in zip(
        new_keys.to_pylist(), own_at.tolist(), old_at[usable].tolist(), strict=True
    ):
        found = entries.setdefault(key, [own] if own >= 0 else [])
        if at not in found:
            found.append(at)
    alone = {key: found[0] for key, found in entries.items() if len(found) == 1}  # none own
    several = {key: found for key, found in entries.items() if len(found) > 1}
    merged = _merged_entries(state, several, rules)  # read before either change moves entries
    at = np.array(list(alone.values()), dtype=np.int64)
    state = state.adopting(pa.array(list(alone), pa.string()), at)  # appended: none moves
    if several:
        state = state.replacing(*merged)
    return dataclasses.replace(memory, state=state)


def _merged_entries(
    state: Remembered, entries: dict[str, list[int]], rules: MergeRules
) -> tuple[list[str], list[str], list[str | None]]:
    """Each key's entries (`entries`: their places in `state`) merged in the order they were
    sent, with the latest time. An entry whose time was not read counts as sent first, in
    the order given (a key's own entry first)."""
    keys: list[str] = []
    texts: list[str] = []
    times: list[str | None] = []
    for key, found in entries.items():
        sent = sorted(
            ((state.times[at].as_py() or "", order, at) for order, at in enumerate(found)),
        )
        contexts = [context for _t, _o, at in sent if (context := state.context(at)) is not None]
        keys.append(key)
        texts.append(canonical(fold(None, contexts, rules)))
        times.append(sent[-1][0] or None)
    return keys, texts, times


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
    def of(cls, cells: Cells, positions: Ints, memory: Memory | None = None) -> Contacts:
        ids, emails, several = interview_emails(cells, positions)
        keys = contact_keys(ids, emails, memory or Memory())
        return cls(positions, *_encoded(pa.chunked_array([keys])), several)

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
