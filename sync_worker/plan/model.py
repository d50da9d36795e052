"""What planning decides: the requests to send, the rows settled up front, and its inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sync_worker.merger import Context, MergeRules
from sync_worker.reader import Batch
from sync_worker.request_table import RequestTable, contacts_with_several_contexts

INVALID = "invalid"
SKIPPED = "skipped_unchanged"
NOT_ATTEMPTED = "not_attempted"


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of a row decided before any request: invalid, skipped or left out."""

    status: str
    error_code: str = ""
    error_message: str = ""
    sha256: str = ""
    merge: str = "off"


def invalid(batch: Batch, position: int, code: str, column: str, message: str) -> Settled:
    """An invalid row, its message naming the file, the row and (where one is to blame) the
    column."""
    file_index, row, _id, _email = batch.locate(position)
    where = f"{batch.files[file_index]} row {row}" + (f", column {column}" if column else "")
    return Settled(INVALID, code, f"{where}: {message}")


class Known(NamedTuple):
    """A contact's notes before the run, as merging chose them (SPEC section 6)."""

    context: Context
    source: str  # notes_file | earlier_send (history.py)


class Note(NamedTuple):
    """A usable row of the notes file."""

    row: int  # 1-based data row in the notes file
    context: Context
    time: str  # ISO time: its updated_at, the file's mtime, or its first sighting


@dataclass
class Plan:
    table: RequestTable  # the requests to send, in file order
    settled: dict[int, Settled]  # row position -> outcome decided up front
    contacts_merged: int = 0
    contacts_no_existing: int = 0
    known_before: dict[str, Known] = field(default_factory=dict)  # contact -> notes merged onto

    def rows_to_send(self) -> int:
        return self.table.row_count()

    def contacts_with_several_contexts(self) -> int:
        return contacts_with_several_contexts(self.table)


@dataclass(frozen=True)
class PlanOptions:
    merge: bool = False
    rules: MergeRules = field(default_factory=MergeRules)
    force: bool = False
    max_rows: int | None = None
    vectorise: bool = True  # False: every row takes the row-by-row road (tests compare both)
    for_sending: bool = True  # False (`plan`): skip what only sending needs (contacts, contexts)


@dataclass(frozen=True)
class Memory:
    """What is known before the run: the state's last sends and a notes export."""

    sent_hashes: Mapping[int, str] = field(default_factory=dict)
    state_contexts: Mapping[str, Context] = field(default_factory=dict)
    state_times: Mapping[str, str] = field(default_factory=dict)  # contact -> last confirmed send
    notes_by_email: Mapping[str, Sequence[Note]] = field(default_factory=dict)
    notes_by_interview: Mapping[int, Sequence[Note]] = field(default_factory=dict)
