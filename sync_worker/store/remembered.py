"""What the state remembers, as columns: each interview's last payload hash, each contact's last
context (its JSON text as sent) and the time of that send.

A nightly batch of a million rows meets a state that remembers a million sends and 750,000
contacts. Read into Python dicts, every context parsed, they took 780 MB and 6.7 s; read into
Arrow columns 150 MB and 2.3 s (most of it SQLite's cursor), and a context is parsed only where
merging needs its value: where its text differs from the contact's new context (usually a few
contacts a night).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import NO_EMAIL
from sync_worker.merger import Context, canonical
from sync_worker.store.digests import DIGEST, Ints, hex_digests

# A contact's remembered context, parsed, and the time of its last confirmed send (None: the
# time was not read, since no notes file asks for it).
StateNotes = tuple[Context, str | None]


class NotJSON(ValueError):
    """A remembered context that is not JSON: the state is damaged (the pipeline says so)."""


@dataclass(frozen=True)
class Sent:
    """Each interview's last payload hash: ids sorted, digests (DIGEST) aligned with them."""

    ids: Ints
    hashes: pa.ChunkedArray

    @classmethod
    def of(cls, hashes: Mapping[int, str]) -> Sent:
        """From hex hashes by id (a test's)."""
        ids = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
        texts = pa.array(list(hashes.values()), pa.string())
        return cls.latest(ids, pa.chunked_array([hex_digests(texts)], DIGEST))

    @classmethod
    def latest(cls, ids: Ints, hashes: pa.ChunkedArray) -> Sent:
        """From sends in arrival order (the keyed table's, then the journal's): the last of
        each id wins. The keyed table comes sorted by id, so usually nothing moves."""
        if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
            return cls(ids, hashes)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        last = np.ones(len(ordered), dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
        return cls(ordered[last], hashes.take(pa.array(order[last])))

    def __len__(self) -> int:
        return len(self.ids)

    def hashes_of(self, ids: Ints) -> pa.ChunkedArray:
        """The digest last sent for each id; null for an id never sent."""
        if not len(self.ids):
            return pa.chunked_array([pa.nulls(len(ids), DIGEST)])
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        known = self.ids[at] == ids
        found = self.hashes.take(pa.array(at))
        return pc.if_else(pa.array(known), found, pa.scalar(None, DIGEST))


@dataclass(frozen=True)
class Links:
    """Each interview's contact key as the state knows it: ids sorted, keys aligned with them.

    Two kinds: the key each interview was last sent as (the `sent` table), and the contact the
    API named for it (`GET /interviews/{id}`, kept in `resolved`, as `contact:<id>`)."""

    ids: Ints
    keys: pa.Array  # string

    @classmethod
    def empty(cls) -> Links:
        return cls(np.zeros(0, dtype=np.int64), pa.array([], pa.string()))

    @classmethod
    def of(cls, keys: Mapping[int, str]) -> Links:
        """From keys by id (a test's)."""
        ids = np.fromiter(keys, dtype=np.int64, count=len(keys))
        return cls.latest(ids, pa.chunked_array([pa.array(list(keys.values()), pa.string())]))

    @classmethod
    def latest(cls, ids: Ints, keys: pa.ChunkedArray) -> Links:
        """From links in arrival order: the last of each id wins. The keyed table comes sorted
        by id, so usually nothing moves."""
        if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
            return cls(ids, _array(keys) if len(ids) else pa.array([], pa.string()))
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        last = np.ones(len(ordered), dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
        picked = keys.take(pa.array(order[last])) if len(ids) else keys
        return cls(ordered[last], _array(picked) if len(ids) else pa.array([], pa.string()))

    def __len__(self) -> int:
        return len(self.ids)

    def any_unnamed(self) -> bool:
        """Whether any interview was sent without an email (as `interview:<id>`)."""
        return bool(len(self.ids)) and bool(pc.any(pc.starts_with(self.keys, NO_EMAIL)).as_py())

    def keys_of(self, ids: Ints) -> pa.Array:
        """The key of each id; null for an id not linked."""
        if not len(self.ids):
            return pa.nulls(len(ids), pa.string())
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        known = self.ids[at] == ids
        return pc.if_else(pa.array(known), self.keys.take(pa.array(at)), None)


@dataclass(frozen=True)
class Remembered:
    """Each contact's last context (JSON text as sent) and, when read, the time it was sent."""

    contacts: pa.Array  # string, each contact once
    texts: pa.Array  # string
    times: pa.Array  # string; null where not read

    @classmethod
    def empty(cls) -> Remembered:
        return cls.of({})

    @classmethod
    def of(cls, contexts: Mapping[str, Any], times: Mapping[str, str] | None = None) -> Remembered:
        """From parsed contexts (a test's, or an old caller's)."""
        times = times or {}
        return cls(
            pa.array(list(contexts), pa.string()),
            pa.array([canonical(value) for value in contexts.values()], pa.string()),
            pa.array([times.get(contact) for contact in contexts], pa.string()),
        )

    @classmethod
    def latest(
        cls,
        contacts: pa.ChunkedArray,
        texts: pa.ChunkedArray,
        times: pa.ChunkedArray | None,
        distinct: bool = False,
    ) -> Remembered:
        """From sends in arrival order: the last of each contact wins. `distinct`: each contact
        comes once (the keyed table alone, the usual case), so nothing is looked for."""
        if distinct:
            if times is None:
                times = pa.chunked_array([pa.nulls(len(contacts), pa.string())])
            return cls(_array(contacts), _array(texts), _array(times))
        encoded = pc.dictionary_encode(contacts).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        last = np.full(len(encoded.dictionary), -1, dtype=np.int64)
        np.maximum.at(last, codes, np.arange(len(codes), dtype=np.int64))
        picked = pa.array(last)
        if times is None:
            times = pa.chunked_array([pa.nulls(len(codes), pa.string())])
        return cls(encoded.dictionary, _array(texts.take(picked)), _array(times.take(picked)))

    def __len__(self) -> int:
        return len(self.contacts)

    def adopting(self, keys: pa.Array, at: Ints) -> Remembered:
        """With each of `keys` (contacts not remembered) given the entry at `at` (another key's,
        the one its interviews were sent as before)."""
        if not len(keys):
            return self
        picked = pa.array(at)
        return Remembered(
            pa.concat_arrays([self.contacts, _array(keys)]),
            pa.concat_arrays([self.texts, self.texts.take(picked)]),
            pa.concat_arrays([self.times, self.times.take(picked)]),
        )

    def replacing(self, keys: list[str], texts: list[str], times: list[str | None]) -> Remembered:
        """With the entries of `keys` (remembered or not) made these."""
        kept = pc.invert(pc.is_in(self.contacts, value_set=pa.array(keys, pa.string())))
        return Remembered(
            pa.concat_arrays([self.contacts.filter(kept), pa.array(keys, pa.string())]),
            pa.concat_arrays([self.texts.filter(kept), pa.array(texts, pa.string())]),
            pa.concat_arrays([self.times.filter(kept), pa.array(times, pa.string())]),
        )

    def context(self, at: int) -> Context | None:
        """The parsed context of the entry at `at` (JSON null: none)."""
        return parse(self.texts[at].as_py())

    def find(self, keys: pa.Array | pa.ChunkedArray) -> Ints:
        """Each key's index here, -1 for a contact not remembered (one hash join: look up many
        keys at once, never one by one)."""
        found = pc.index_in(keys, value_set=self.contacts).fill_null(-1)
        return np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64)

    def entries(self, keys: Iterable[str], at: Ints) -> dict[str, StateNotes]:
        """Contact -> (parsed context, time) for the keys found at `at` (>= 0). A context that is
        JSON null counts as not remembered, as it always has."""
        found = at >= 0
        texts = self.texts.take(pa.array(at[found])).to_pylist()
        times = self.times.take(pa.array(at[found])).to_pylist()
        chosen = [key for key, hit in zip(keys, found.tolist(), strict=True) if hit]
        entries: dict[str, StateNotes] = {}
        for key, text, time in zip(chosen, texts, times, strict=True):
            context = parse(text)
            if context is not None:
                entries[key] = (context, time)
        return entries


def parse(text: str) -> Context | None:
    try:
        value: Context | None = json.loads(text)
    except ValueError:
        raise NotJSON(f"a remembered context that is not JSON: {text[:40]!r}") from None
    return value


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
