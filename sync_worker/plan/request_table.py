"""The requests of a plan as columns: a million of them cost a few Arrow arrays, not a million
Python objects. A `Request` object is made only when a request is about to be sent."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import SENT_FIELDS
from sync_worker.plan import vectorjson as vj
from sync_worker.store.digests import DIGEST, Ints, sha256_hex

CHUNK = 100_000  # requests materialised or printed at a time
# What a request is to its contact's other requests (SPEC section 7, `coalesce.py`): a carrier
# takes the contact's fields for them all; a lean request leaves them to its carrier.
PLAIN, CARRIER, LEAN = 0, 1, 2


@dataclass(slots=True)
class Request:
    """One PATCH: an interview's combined rows."""

    interview_id: int
    body_json: bytes  # canonical JSON: sorted keys, no spaces; what is sent and hashed
    sha256: str
    rows: list[int]  # positions in the batch frame, in file order
    contact: str
    merge: str  # off | merged | no_existing
    context_json: str | None  # the contact_context sent, remembered by the state on success
    full_sha256: str = ""  # the hash of the whole body before trimming ("": `sha256`)
    role: int = PLAIN


@dataclass
class RequestTable:
    """Requests in file order (of each one's first row); row i of every column is request i.

    A request is its fields: each sent field's value as a JSON literal, null where the body
    leaves it out. Its body, the canonical JSON of those fields, is made from them when first
    needed (`body_json`), once the fields are final: a backfill's bodies are made once, after
    a contact's fields are coalesced (coalesce.py), not once by the roads and again there."""

    position: Ints  # the first input row of each request (a position in the batch frame)
    interview_id: Ints
    fields: dict[str, pa.ChunkedArray]  # sent field -> its JSON literal per request (string)
    context_json: pa.ChunkedArray  # string: the context the state remembers (null: none)
    contact: pa.ChunkedArray  # string: the contact_email, or interview:<id>
    merge: pa.ChunkedArray  # string
    more_rows: dict[int, list[int]] = field(default_factory=dict)  # first position -> all rows
    full_sha256: pa.ChunkedArray | None = None  # DIGEST, null where the body was not trimmed
    role: Ints | None = None  # PLAIN, CARRIER or LEAN per request (None: all PLAIN)
    _body: pa.ChunkedArray | None = None  # string: the bodies, once made
    _sha256: pa.ChunkedArray | None = None  # DIGEST: each body's hash, once computed

    def __len__(self) -> int:
        return len(self.position)

    @property
    def body_json(self) -> pa.ChunkedArray:
        """Each request's canonical JSON (what is sent and hashed), made from its fields a
        chunk of requests at a time, when first asked for."""
        if self._body is None:
            self._body = bodies_of(self.fields, len(self))
        return self._body

    def bodies(self, start: int, stop: int) -> pa.ChunkedArray:
        """The bodies of requests start..stop: made for them alone unless all are made already
        (printing or sending a million never holds all their bodies at once)."""
        count = min(stop, len(self)) - start
        if self._body is not None:
            return self._body.slice(start, count)
        return bodies_of({k: v.slice(start, count) for k, v in self.fields.items()}, count)

    @classmethod
    def empty(cls) -> RequestTable:
        return cls.from_requests([])

    @classmethod
    def from_requests(cls, requests: Sequence[Request]) -> RequestTable:
        """A table of these requests in file order (of each one's first row)."""
        requests = sorted(requests, key=lambda r: r.rows[0])

        def column(values: list[Any]) -> pa.ChunkedArray:
            return pa.chunked_array([pa.array(values, pa.string())])

        bodies = [r.body_json.decode("utf-8") for r in requests]
        return cls(
            position=np.array([r.rows[0] for r in requests], dtype=np.int64),
            interview_id=np.array([r.interview_id for r in requests], dtype=np.int64),
            fields=_fields_of_bodies(bodies),
            context_json=column([r.context_json for r in requests]),
            contact=column([r.contact for r in requests]),
            merge=column([r.merge for r in requests]),
            more_rows={r.rows[0]: r.rows for r in requests if len(r.rows) > 1},
            _body=column(bodies),
        )

    def rows_of(self, index: int) -> list[int]:
        first = int(self.position[index])
        return self.more_rows.get(first, [first])

    def row_count(self) -> int:
        extra = sum(len(rows) - 1 for rows in self.more_rows.values())
        return len(self) + extra

    def sha256(self) -> pa.ChunkedArray:
        """Every request's payload hash as a digest (DIGEST), computed once, when first
        needed, a chunk of bodies at a time (bodies not made yet are made for the hashing and
        let go: a nightly run hashes a million bodies it will not send): a million cost 32 MB,
        where a list of hex strings took 121 MB. `Request.sha256` is its hex text."""
        if self._sha256 is None:
            parts = []
            for start in range(0, len(self), CHUNK):
                bodies = self.bodies(start, start + CHUNK)
                for chunk in bodies.chunks:
                    texts = pc.cast(chunk, pa.binary()).to_pylist()
                    parts.append(pa.array([hashlib.sha256(t).digest() for t in texts], DIGEST))
            self._sha256 = pa.chunked_array(parts, DIGEST)
        return self._sha256

    def take(self, indices: Ints) -> RequestTable:
        """The requests at `indices`, in that order (a new table; this one is left as it is)."""
        table = copy.copy(self)  # the same columns, each replaced by `keep`, never changed
        table.keep(indices)
        return table

    def keep(self, indices: Ints) -> None:
        """Only the requests at `indices` stay, in that order, a column at a time: each
        column's old values let go before the next is copied (a backfill's peak is its table
        and one column, not two tables)."""
        picked = pa.array(indices, pa.int64())
        self.more_rows = self._more_rows_of(self.position[indices])
        self.position, self.interview_id = self.position[indices], self.interview_id[indices]
        if self.role is not None:
            self.role = self.role[indices]
        fields, self.fields = dict(self.fields), {}  # another table may share the dict
        for name in list(fields):
            self.fields[name] = fields.pop(name).take(picked)
        self.context_json = self.context_json.take(picked)
        self.contact = self.contact.take(picked)
        self.merge = self.merge.take(picked)
        if self.full_sha256 is not None:
            self.full_sha256 = self.full_sha256.take(picked)
        if self._body is not None:
            self._body = self._body.take(picked)
        if self._sha256 is not None:
            self._sha256 = self._sha256.take(picked)

    def _more_rows_of(self, positions: Ints) -> dict[int, list[int]]:
        """The entries of `more_rows` of requests at these first positions: looked up by array
        (a set of a million positions as Python ints took ~60 MB at a backfill's peak)."""
        if not self.more_rows:
            return {}
        firsts = np.fromiter(self.more_rows, dtype=np.int64, count=len(self.more_rows))
        kept = firsts[np.isin(firsts, positions)].tolist()
        return {first: self.more_rows[first] for first in kept}

    def __iter__(self) -> Iterator[Request]:
        for start in range(0, len(self), CHUNK):
            yield from self.slice(start, start + CHUNK)

    def slice(self, start: int, stop: int) -> list[Request]:
        """Requests start..stop as objects."""
        stop = min(stop, len(self))
        count = stop - start
        bodies = [body.encode("utf-8") for body in self.bodies(start, stop).to_pylist()]
        hashes = (
            [digest.hex() for digest in self._sha256.slice(start, count).to_pylist()]
            if self._sha256 is not None
            else [None] * count
        )
        fulls = (
            [
                digest.hex() if digest else ""
                for digest in self.full_sha256.slice(start, count).to_pylist()
            ]
            if self.full_sha256 is not None
            else [""] * count
        )
        roles = self.role[start:stop].tolist() if self.role is not None else [PLAIN] * count
        more_rows = self.more_rows
        return [
            Request(
                interview_id,
                body,
                sha256 or sha256_hex(body),
                more_rows.get(first) or [first],
                contact,
                merge,
                context,
                full,
                role,
            )
            for interview_id, body, sha256, first, contact, merge, context, full, role in zip(
                self.interview_id[start:stop].tolist(),
                bodies,
                hashes,
                self.position[start:stop].tolist(),
                self.contact.slice(start, count).to_pylist(),
                self.merge.slice(start, count).to_pylist(),
                self.context_json.slice(start, count).to_pylist(),
                fulls,
                roles,
                strict=True,
            )
        ]


def concat(tables: Sequence[RequestTable]) -> RequestTable:
    """One table, in file order of each request's first row. Tables that follow each other
    in file order (the merge road's parts) are joined as they are, never copied."""
    filled = [t for t in tables if len(t)]
    if len(filled) <= 1:
        return filled[0] if filled else RequestTable.empty()  # each table is in order already
    tables = filled
    position = np.concatenate([t.position for t in tables])
    hashes = [t._sha256 for t in tables]
    bodies = [t._body for t in tables]
    merged = RequestTable(
        position=position,
        interview_id=np.concatenate([t.interview_id for t in tables]),
        fields=_concat_fields(tables),
        context_json=pa.chunked_array(
            [c for t in tables for c in t.context_json.chunks], pa.string()
        ),
        contact=pa.chunked_array([c for t in tables for c in t.contact.chunks], pa.string()),
        merge=pa.chunked_array([c for t in tables for c in t.merge.chunks], pa.string()),
        more_rows={k: v for t in tables for k, v in t.more_rows.items()},
    )
    if all(b is not None for b in bodies):
        merged._body = pa.chunked_array([c for b in bodies if b is not None for c in b.chunks])
    if all(h is not None for h in hashes):
        merged._sha256 = pa.chunked_array(
            [c for h in hashes if h is not None for c in h.chunks], DIGEST
        )
    if bool((position[1:] > position[:-1]).all()):
        return merged
    return merged.take(np.argsort(position, kind="stable"))


def _concat_fields(tables: Sequence[RequestTable]) -> dict[str, pa.ChunkedArray]:
    """The field columns of tables joined; a field some tables lack is null in their rows.
    (Only untrimmed tables are joined: their roles and whole-body hashes are not kept.)"""
    names = sorted({name for t in tables for name in t.fields})
    return {
        name: pa.chunked_array(
            [
                chunk
                for t in tables
                for chunk in (
                    t.fields[name].chunks if name in t.fields else [pa.nulls(len(t), pa.string())]
                )
            ],
            pa.string(),
        )
        for name in names
    }


def bodies_of(fields: Mapping[str, pa.ChunkedArray], count: int) -> pa.ChunkedArray:
    """The canonical JSON of each request's fields (sorted keys; a null field left out), made
    CHUNK requests at a time so the pieces of a million never live at once."""
    names = sorted(fields)
    parts: list[pa.Array] = []
    for start in range(0, count, CHUNK):
        length = min(CHUNK, count - start)
        members = []
        for name in names:
            values = fields[name].slice(start, length)
            present = pc.is_valid(values).to_numpy(zero_copy_only=False)
            members.append(vj.literal_member(name, values, present))
        joined = vj.join_object(members, length)
        parts.extend(joined.chunks if isinstance(joined, pa.ChunkedArray) else [joined])
    return pa.chunked_array(parts, pa.string())


_DECODER = json.JSONDecoder()


def fields_of(body: str) -> list[tuple[str, str]]:
    """(name, canonical JSON of its value) for each field of a canonical body, cut from its
    text: the canonical text of a whole is made of its parts' canonical texts, so no value is
    serialised again (that took half of this module's ~30 us a request)."""
    found: list[tuple[str, str]] = []
    at = 1  # past the opening brace
    while body[at] == '"':
        name, at = _DECODER.raw_decode(body, at)  # `at`: on the colon after the name
        _value, end = _DECODER.raw_decode(body, at + 1)
        found.append((name, body[at + 1 : end]))
        at = end + 1 if body[end] == "," else end
    return found


def _fields_of_bodies(bodies: list[str]) -> dict[str, pa.ChunkedArray]:
    """The fields of canonical bodies as JSON literals (the row road's requests, which are
    objects already), null where a body does not send one."""
    values: dict[str, list[str | None]] = {name: [None] * len(bodies) for name in SENT_FIELDS}
    for at, body in enumerate(bodies):
        for name, literal in fields_of(body):
            if name in values:
                values[name][at] = literal
    return {
        name: pa.chunked_array([pa.array(column, pa.string())])
        for name, column in values.items()
        if any(value is not None for value in column)
    }


def chain_bounds(table: RequestTable) -> tuple[Ints, Ints]:
    """Requests grouped by contact, each group in file order; the longest groups first, the
    rest by first appearance.

    A chain of k requests takes k answers one after another. Started last, a long chain holds
    the run's end open at one request per answer while the rest of the pool idles (measured at
    2 s an answer, 1-4 rows a contact: 0.88 of the allowed rate in first-appearance order,
    0.999 longest first).

    Returns (order, starts): chain k is table indices order[starts[k]:starts[k + 1]]."""
    codes, _uniques = pd.factorize(table.contact.to_numpy(zero_copy_only=False))
    longest_first = np.argsort(-np.bincount(codes), kind="stable")
    rank = np.empty_like(longest_first)
    rank[longest_first] = np.arange(len(longest_first))
    keys = rank[codes]
    order = np.argsort(keys, kind="stable").astype(np.int64)
    starts = np.flatnonzero(np.diff(keys[order], prepend=-1)).astype(np.int64)
    return order, np.append(starts, len(order)).astype(np.int64)


class ChainQueue:
    """Contact chains handed out one at a time; requests are made into objects a thousand
    chains at a time, in the order the chains are taken. `made` is told of each thousand before
    any of them is handed out (the run writes their planned changes to the state then)."""

    CHAINS = 1_000  # chains made into objects at a time

    def __init__(
        self, table: RequestTable, made: Callable[[list[Request]], None] | None = None
    ) -> None:
        self._made = made
        order, self._bounds = chain_bounds(table)
        self._longest = int(np.diff(self._bounds).max()) if len(self._bounds) > 1 else 0
        self._ordered = table.take(order)  # requests in chain order
        self._next = 0  # the next chain not yet made into objects
        self._ready: deque[deque[Request]] = deque()  # made, not yet taken
        self._returned: deque[deque[Request]] = deque()  # chains given back, partly sent

    def __len__(self) -> int:
        return len(self._returned) + len(self._ready) + len(self._bounds) - 1 - self._next

    @property
    def longest(self) -> int:
        """Requests in the longest chain: at least that many answers one after another."""
        return self._longest

    def popleft(self) -> deque[Request]:
        if self._returned:
            return self._returned.popleft()
        if not self._ready:
            self._make_next()
        return self._ready.popleft()

    def appendleft(self, chain: deque[Request]) -> None:
        if chain:
            self._returned.appendleft(chain)

    def _make_next(self) -> None:
        first, last = self._next, min(self._next + self.CHAINS, len(self._bounds) - 1)
        bounds = self._bounds[first : last + 1].tolist()
        requests = self._ordered.slice(bounds[0], bounds[-1])
        if self._made is not None:
            self._made(requests)
        offset = bounds[0]
        self._ready.extend(
            deque(requests[start - offset : stop - offset])
            for start, stop in itertools.pairwise(bounds)
        )
        self._next = last


def contacts_with_several_contexts(table: RequestTable) -> int:
    """Contacts whose requests carry more than one distinct context: the distinct (contact,
    context) pairs, as numbers, counted by contact. Not `Table.group_by`: its first call imports
    Arrow's query engine (acero, datasets, file systems: ~25 ms of every run's start), and it
    took twice as long for a million requests."""
    sent = pc.is_valid(table.context_json)  # no context: the contact's notes are not touched
    contacts = numbered(table.contact.filter(sent))
    contexts = numbered(table.context_json.filter(sent))
    width = int(contexts.max(initial=0)) + 1
    pairs = pc.unique(pa.array(contacts * width + contexts)).to_numpy()
    return int(np.count_nonzero(np.bincount(pairs // width) > 1))


def numbered(column: pa.ChunkedArray) -> Ints:
    """Each value as a number, equal values the same number (one dictionary for all chunks)."""
    numbers = [np.asarray(c.indices, dtype=np.int64) for c in pc.dictionary_encode(column).chunks]
    return np.concatenate(numbers) if numbers else np.empty(0, dtype=np.int64)
