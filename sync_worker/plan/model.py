"""What planning decides: the requests to send, the rows settled up front, and its inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, ItemsView, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.merger import Context, MergeRules
from sync_worker.plan.request_table import CHUNK, RequestTable, contacts_with_several_contexts
from sync_worker.read.notes import Note
from sync_worker.read.reader import Batch
from sync_worker.store.digests import Ints, digest_texts
from sync_worker.store.history import EARLIER_SEND, FieldKey
from sync_worker.store.remembered import Links, Remembered, Sent
from sync_worker.vocabulary import Status

# Merging: rows the row road takes at a time (whole contacts), ~1.7 KiB of Python objects a row.
CHUNK_ROWS = 100_000


class Settled(NamedTuple):
    """The outcome of a row decided before any request: invalid, skipped or left out. A named
    tuple: a nightly run makes one for each skipped row as it writes the row's ledger line,
    ~1 us each, where a frozen dataclass took ~1.6 us."""

    status: Status
    error_code: str = ""
    error_message: str = ""
    sha256: str = ""
    merge: str = "off"


def invalid(batch: Batch, position: int, code: str, column: str, message: str) -> Settled:
    """An invalid row, its message naming the file, the row and (where one is to blame) the
    column."""
    file_index, row, _id, _email = batch.locate(position)
    where = f"{batch.files[file_index]} row {row}" + (f", column {column}" if column else "")
    return Settled(Status.INVALID, code, f"{where}: {message}")


class Outcomes(Mapping[int, Settled]):
    """Row position -> the outcome decided up front, in position order.

    Rows settled one by one (invalid ones) are a dict. Requests set aside in bulk (a nightly
    run skips a million unchanged ones) are kept as columns and made into Settled objects only
    as they are read, a chunk at a time: a million of them as objects in a dict took 270 MB,
    and 6 s to make. A row settled one by one wins over the same row set aside in bulk."""

    def __init__(self, rows: dict[int, Settled] | None = None) -> None:
        self._rows: dict[int, Settled] = rows if rows is not None else {}
        self._bulk: list[_Aside] = []

    def __setitem__(self, position: int, outcome: Settled) -> None:
        self._rows[position] = outcome

    def set_aside(self, status: Status, table: RequestTable, indices: Ints) -> None:
        """Every row of the requests of `table` at `indices` settles with `status`, carrying
        its request's hash and merge label."""
        if not len(indices):
            return
        firsts = table.position[indices]
        rows, requests = firsts, np.asarray(indices, dtype=np.int64)
        if table.more_rows:  # a request of several rows settles each of them
            spans = [table.more_rows.get(first, [first]) for first in firsts.tolist()]
            rows = np.array([p for span in spans for p in span], dtype=np.int64)
            requests = np.repeat(requests, [len(span) for span in spans])
        if len(rows) > 1 and not bool((rows[1:] > rows[:-1]).all()):
            order = np.argsort(rows, kind="stable")
            rows, requests = rows[order], requests[order]
        # the table's whole columns, not copies: the table is dropped, these stay
        self._bulk.append(_Aside(status, rows, requests, table.sha256(), table.merge))

    @classmethod
    def never_planned(cls, rows: int) -> Outcomes:
        """Every row of a batch `not_attempted` with no hash: a run stopped before its plan was
        made (as columns: a stopped backfill leaves a million)."""
        outcomes = cls()
        if rows:
            every = np.arange(rows, dtype=np.int64)
            outcomes._bulk.append(_Aside(Status.NOT_ATTEMPTED, every, every, None, None))
        return outcomes

    def __getitem__(self, position: int) -> Settled:
        if position in self._rows:
            return self._rows[position]
        for aside in self._bulk:
            at = int(np.searchsorted(aside.rows, position))
            if at < len(aside.rows) and aside.rows[at] == position:
                return aside.outcome(at)
        raise KeyError(position)

    def __iter__(self) -> Iterator[int]:
        return (position for position, _outcome in self.items())

    def __len__(self) -> int:
        return len(self._rows) + sum(len(self._kept(aside)) for aside in self._bulk)

    def items(self) -> ItemsView[int, Settled]:
        return _InOrder(self)

    def in_order(self) -> Iterator[tuple[int, Settled]]:
        """Every (position, outcome), in position order, made a chunk at a time."""
        for chunk in self.chunks():
            yield from chunk.outcomes()

    def chunks(self) -> Iterator[SettledRows]:
        """Every row in position order, CHUNK rows at a time, as columns (the ledger writes
        them so): each chunk takes its rows from each bulk set-aside at once, however the
        set-asides interleave (a file mixing JSON and text contexts alternates two of them row
        by row: taken a run at a time, 50,000 rows took 46 s)."""
        singles = sorted(self._rows.items())
        listed = np.array([p for p, _s in singles], dtype=np.int64)
        positions, sources, at = [listed], [np.full(len(listed), -1)], [np.arange(len(listed))]
        for number, aside in enumerate(self._bulk):
            kept = self._kept(aside)
            positions.append(aside.rows[kept])
            sources.append(np.full(len(kept), number))
            at.append(kept)
        position, source, index = (np.concatenate(parts) for parts in (positions, sources, at))
        if sum(1 for part in positions if len(part)) > 1:
            order = np.argsort(position, kind="stable")
            position, source, index = position[order], source[order], index[order]
        for start in range(0, len(position), CHUNK):
            part = slice(start, start + CHUNK)
            yield self._chunk(position[part], source[part], index[part], singles)

    def _chunk(
        self, positions: Ints, source: Ints, index: Ints, singles: list[tuple[int, Settled]]
    ) -> SettledRows:
        size = len(positions)
        rows = SettledRows(
            positions, [""] * size, [""] * size, [""] * size, [""] * size, ["off"] * size
        )
        for number in np.unique(source).tolist():
            at = np.flatnonzero(source == number)
            if number < 0:
                for row, single in zip(at.tolist(), index[at].tolist(), strict=True):
                    settled = singles[single][1]
                    rows.statuses[row], rows.codes[row], rows.messages[row] = settled[:3]
                    rows.hashes[row], rows.merges[row] = settled.sha256, settled.merge
                continue
            aside = self._bulk[number]
            hashes, merges = aside.columns(index[at])
            for row, digest, merge in zip(at.tolist(), hashes, merges, strict=True):
                rows.statuses[row], rows.hashes[row], rows.merges[row] = aside.status, digest, merge
        return rows

    def invalid(self) -> list[tuple[int, Settled]]:
        """The invalid rows, in position order (always settled one by one)."""
        return sorted((p, s) for p, s in self._rows.items() if s.status == Status.INVALID)

    def _kept(self, aside: _Aside) -> np.ndarray:
        """Indices of the rows of `aside` not also settled one by one (those count once, as
        that)."""
        if not self._rows:
            return np.arange(len(aside.rows))
        listed = np.fromiter(self._rows, dtype=np.int64, count=len(self._rows))
        return np.flatnonzero(~np.isin(aside.rows, listed))


class _InOrder(ItemsView[int, Settled]):
    _mapping: Outcomes

    def __iter__(self) -> Iterator[tuple[int, Settled]]:
        return self._mapping.in_order()


@dataclass(frozen=True)
class _Aside:
    status: Status
    rows: Ints  # row positions, sorted
    requests: Ints  # each row's request: an index into hashes and merges
    hashes: pa.ChunkedArray | None  # DIGEST; None: rows never planned (no hash, merge off)
    merges: pa.ChunkedArray | None

    def outcome(self, at: int) -> Settled:
        if self.hashes is None or self.merges is None:
            return Settled(self.status)
        request = int(self.requests[at])
        return Settled(
            self.status,
            sha256=self.hashes[request].as_py().hex(),
            merge=self.merges[request].as_py(),
        )

    def columns(self, at: Ints) -> tuple[list[str], list[str]]:
        """The hashes (hex) and merge labels of the rows at indices `at` (into `rows`)."""
        if self.hashes is None or self.merges is None:
            return [""] * len(at), ["off"] * len(at)
        requests = pa.array(self.requests[at])
        return digest_texts(self.hashes.take(requests)), self.merges.take(requests).to_pylist()


class SettledRows(NamedTuple):
    """Rows settled before any request, in position order, as columns."""

    positions: Ints
    statuses: list[str]
    codes: list[str]
    messages: list[str]
    hashes: list[str]
    merges: list[str]

    def outcomes(self) -> Iterator[tuple[int, Settled]]:
        columns = (self.statuses, self.codes, self.messages, self.hashes, self.merges)
        for position, *outcome in zip(self.positions.tolist(), *columns, strict=True):
            yield position, Settled(*outcome)


class Known(NamedTuple):
    """A contact's notes before the run, as merging chose them (SPEC section 6)."""

    context: Context
    source: str  # notes_file | earlier_send (history.py)


@dataclass
class Plan:
    table: RequestTable  # the requests to send, in file order
    settled: Outcomes  # row position -> outcome decided up front
    contacts_merged: int = 0
    contacts_no_existing: int = 0
    email_changes: int = 0  # interviews the export gives another email than they were sent as
    known_before: dict[str, Known] = field(default_factory=dict)  # contact -> notes merged onto
    # contacts whose notes merged onto are the state's, and exactly the context they send (the
    # nightly case): made into Known entries only for the requests left to send (`known_notes`)
    known_as_sent: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    # A contact's fields once per contact (coalesce.py): the rows that ride in another
    # interview's request (row position -> that interview), and each carrier's riders (its
    # interview -> (rider interview, the rider's whole-body hash)), remembered when it succeeds
    sent_with: dict[int, int] = field(default_factory=dict)
    riders: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    several_contexts: int = 0  # contacts whose requests carry different contexts (no merge)
    contacts_sent_to: int | None = None  # distinct contacts of the requests, when trimming knew
    contact_codes: Ints | None = None  # each row's contact as a number, when merging found it
    confirmed: dict[FieldKey, str] | None = None  # last confirmed values, as trimming read them

    def known_notes(self) -> dict[str, Known]:
        """Contact -> the notes merged onto, for the contacts of the requests to send. A nightly
        run knows 750,000 contacts' notes; as parsed objects they took ~400 MB, for the few
        contacts whose requests are sent at all."""
        known = dict(self.known_before)
        for contact, text in self.known_texts().items():
            known.setdefault(contact, Known(json.loads(text), EARLIER_SEND))
        return known

    def known_texts(self) -> dict[str, str]:
        """`known_as_sent` for the contacts of the requests to send, as JSON text (each parsed
        only when its request is about to be sent)."""
        if not len(self.known_as_sent) or not len(self.table):
            return {}
        contacts = self.table.contact
        hit = pc.is_in(contacts, value_set=self.known_as_sent)
        texts = self.table.context_json.filter(hit).to_pylist()
        found: dict[str, str] = {}
        for contact, text in zip(contacts.filter(hit).to_pylist(), texts, strict=True):
            found.setdefault(contact, text)
        return found

    def rows_to_send(self) -> int:
        return self.table.row_count()

    def count_several_contexts(self) -> None:
        """Before trimming: afterwards a contact's context travels in one request only."""
        self.several_contexts = contacts_with_several_contexts(self.table)


@dataclass(frozen=True)
class PlanOptions:
    merge: bool = False
    rules: MergeRules = field(default_factory=MergeRules)
    force: bool = False
    max_rows: int | None = None
    vectorise: bool = True  # False: every row takes the row-by-row road (tests compare both)
    for_sending: bool = True  # False (`plan`): skip what only sending needs (the notes before)
    coalesce: bool = True  # a contact's fields once per contact (False: `--no-coalesce`)
    chunk_rows: int = CHUNK_ROWS  # merging: rows the row road takes at a time


@dataclass(frozen=True)
class Memory:
    """What is known before the run: the state's last sends and a notes export."""

    sent: Sent = field(default_factory=lambda: Sent.of({}))  # interview -> last payload hash
    state: Remembered = field(default_factory=Remembered.empty)  # contact -> last context sent
    notes_by_email: Mapping[str, Sequence[Note]] = field(default_factory=dict)
    notes_by_interview: Mapping[int, Sequence[Note]] = field(default_factory=dict)
    links: Links = field(default_factory=Links.empty)  # interview -> the key it was sent as
    resolved: Links = field(default_factory=Links.empty)  # interview -> contact:<id> (the API's)
    # of some interviews, those whose last own answer from the API was a 200, and a 400 or
    # 404 (each sorted; None: none known)
    answers: Callable[[Ints], tuple[Ints, Ints]] | None = None
    # the last confirmed value of each field of these keys (contacts, interview ids as text)
    confirmed: Callable[[list[str]], Mapping[FieldKey, str]] | None = None
