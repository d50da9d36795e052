"""Read an export of the contacts' current notes (`--existing-notes`), keyed by email or id.

Nothing in it is dropped without a word (SPEC section 6): a row that cannot be used (a bad id,
bad JSON, neither key, a bad `updated_at`) is reported with file, row and reason, and the other
rows go on. Every usable row carries its time for the freshness rule: its `updated_at` cell
(UTC where it names no zone), else the file's modification time, but a row whose notes were seen
in an earlier notes file keeps the time of that first sighting (a stale export copied afresh is
still stale). No row is newer than its file's modification time or the moment it is read: a
cell dated in the future (a local time east of UTC read as UTC, a clock set wrong) would
otherwise beat every later send of the worker's own for good.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from sync_worker.clock import iso, now_iso
from sync_worker.errors import InputError
from sync_worker.fields import CONTACT_KEY, ID, contact_key, email_key, interview_id
from sync_worker.merger import Context, canonical, parse_context
from sync_worker.read.reader import ReadOptions, read_raw
from sync_worker.settings.config import Settings

UPDATED_AT = "updated_at"
NOTES_COLUMNS = ("notes", CONTACT_KEY, ID, UPDATED_AT)  # only these columns are read


class Note(NamedTuple):
    """A usable row of the notes file."""

    row: int  # 1-based data row in the notes file
    context: Context
    time: str  # ISO time: its updated_at, the file's mtime, or its first sighting


@dataclass
class NotesFile:
    by_email: dict[str, list[Note]] = field(default_factory=dict)
    by_interview: dict[int, list[Note]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # "<file> row N: reason", one per row
    warnings: list[str] = field(default_factory=list)  # about the whole file (its encoding)
    sightings: list[tuple[str, str]] = field(default_factory=list)  # new: (digest, time)


class _Unusable(ValueError):
    pass


# contact keys (an email, `interview:<id>`) -> the other keys the same contact is known by
Aliases = Callable[[list[str]], Mapping[str, Sequence[str]]]


def read_notes(
    path: Path,
    settings: Settings,
    seen: Mapping[str, str] | None = None,
    aliases: Aliases | None = None,
) -> NotesFile:
    """Columns `notes` and `contact_email` and/or `interview_id`, optional `updated_at`; notes
    text or a JSON object. `seen`: digests of rows seen in earlier notes files -> first seen.
    `aliases`: the other keys each row's contact is known by (an interview's emails, an
    email's interviews, in the export or as the state sent them), asked once: a row's notes
    are sightings under all of them, so a file keyed by id one night and by email the next
    (or by both) is still stale."""
    options = ReadOptions(settings.encoding, settings.delimiter)  # a workbook: its first sheet
    read = read_raw(path, options, lambda headers: _notes_headers(headers, path))
    raw = read.frame
    columns = _columns(raw, path)
    aside = [read.set_aside.message()] if read.set_aside is not None else []
    notes = NotesFile(warnings=[*read.warnings, *aside])
    blank = [""] * len(raw)
    emails = _texts(raw, columns.get(CONTACT_KEY)) or blank
    ids = _texts(raw, columns.get(ID)) or blank
    times = _texts(raw, columns.get(UPDATED_AT)) or blank
    file_time = min(iso(datetime.fromtimestamp(path.stat().st_mtime, UTC)), now_iso())
    known_as = aliases(_row_keys(ids, emails)) if aliases is not None else {}
    cells = zip(_texts(raw, columns["notes"]), emails, ids, times, strict=True)
    for row, (text, email, raw_id, updated) in enumerate(cells, start=1):
        if row - 1 in read.bad_rows:
            bad = read.bad_rows[row - 1]
            column = f"column {bad.column}: " if bad.column else ""
            notes.problems.append(f"{path} row {row}: {column}{bad.message}; the row is not used")
            continue
        try:
            _add_row(
                notes,
                row,
                text,
                email_key(email.strip()),
                _interview_id(raw_id),
                min(_time(updated) or file_time, file_time),
                seen or {},
                known_as,
            )
        except _Unusable as problem:
            notes.problems.append(f"{path} row {row}: {problem}; the row is not used")
    return notes


def _add_row(
    notes: NotesFile,
    row: int,
    text: str,
    email: str,
    interview_id: int | None,
    time: str,
    seen: Mapping[str, str],
    known_as: Mapping[str, Sequence[str]],
) -> None:
    if not email and interview_id is None:
        raise _Unusable(f"neither {CONTACT_KEY} nor {ID} is filled")
    try:
        context = parse_context(text.strip())
    except ValueError as problem:
        raise _Unusable(f"column notes: {problem}") from None
    by_id = contact_key("", interview_id) if interview_id is not None else ""
    keys = list(dict.fromkeys(filter(None, [contact_key(email, interview_id), email, by_id])))
    for key in list(keys):
        keys += [alias for alias in known_as.get(key, ()) if alias not in keys]
    digests = [sighting_digest(key, context) for key in keys]
    earlier = [seen[digest] for digest in digests if digest in seen]
    if earlier:
        time = min(earlier)
    notes.sightings += [(digest, time) for digest in digests if digest not in seen]
    note = Note(row, context, time)
    if email:
        notes.by_email.setdefault(email, []).append(note)
    if interview_id is not None:
        notes.by_interview.setdefault(interview_id, []).append(note)


def _row_keys(ids: Sequence[str], emails: Sequence[str]) -> list[str]:
    """The contact keys the rows name: their emails, and their ids as `interview:<id>`
    (unusable ids are reported later)."""
    found: dict[str, None] = {}
    for raw_id, email in zip(ids, emails, strict=True):
        if email.strip():
            found[email_key(email.strip())] = None
        try:
            number = _interview_id(raw_id)
        except _Unusable:
            continue
        if number is not None:
            found[contact_key("", number)] = None
    return list(found)


def _notes_headers(headers: Sequence[str], path: Path) -> list[str]:
    """Only these columns are read: any other column of the export does not matter."""
    names = {h.strip().lower() for h in headers}
    found = ", ".join(repr(h) for h in headers) or "none"
    if "notes" not in names:
        raise InputError(f"{path}: no notes column (columns found: {found})")
    if "contact_email" not in names and "interview_id" not in names:
        raise InputError(
            f"{path}: needs a contact_email or interview_id column (columns found: {found})"
        )
    return [h for h in headers if h.strip().lower() in NOTES_COLUMNS]


def _columns(raw: pd.DataFrame, path: Path) -> dict[str, str]:
    """Lower-case name -> header; two headers for one column are ambiguous."""
    columns: dict[str, str] = {}
    for header in map(str, raw.columns):
        name = header.strip().lower()
        if name in columns:
            raise InputError(
                f"{path}: columns {columns[name]!r} and {header!r} both give {name}: "
                "ambiguous; remove or rename one in the export"
            )
        columns[name] = header
    return columns


def sighting_digest(contact: str, context: Context) -> str:
    return hashlib.sha256(canonical([contact, context]).encode("utf-8")).hexdigest()


def _interview_id(text: str) -> int | None:
    """The main input's rule: a whole positive number that fits in 64 bits (`4.0` is not)."""
    text = text.strip()
    if not text:
        return None
    number = interview_id(text)
    if number is None:
        raise _Unusable(f"column {ID}: {text!r} is not a positive whole number")
    return number


def _time(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    try:
        stamp = pd.Timestamp(text)
        valid = not pd.isna(stamp)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise _Unusable(f"column {UPDATED_AT}: {text!r} is not a date and time")
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return iso(stamp.to_pydatetime())


def _texts(raw: pd.DataFrame, column: str | None) -> list[str]:
    return [str(v) for v in raw[column].tolist()] if column is not None else []
