"""Read an export of the contacts' current notes (`--existing-notes`), keyed by email or id."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sync_worker.config import Settings
from sync_worker.errors import InputError
from sync_worker.fields import CONTACT_KEY, ID
from sync_worker.merger import Context, parse_context
from sync_worker.reader import ReadOptions, read_raw

NotesByEmail = dict[str, Context]
NotesById = dict[int, Context]
NOTES_COLUMNS = ("notes", "contact_email", "interview_id")


def read_notes(path: Path, settings: Settings) -> tuple[NotesByEmail, NotesById]:
    """Columns `notes` and `contact_email` and/or `interview_id`; notes text or a JSON object."""
    options = ReadOptions(settings.encoding, settings.delimiter)
    raw, _warnings = read_raw(path, options, lambda headers: _notes_headers(headers, path))
    columns = _columns(raw, path)
    by_email: NotesByEmail = {}
    by_id: NotesById = {}
    blank = [""] * len(raw)
    emails = _texts(raw, columns.get(CONTACT_KEY)) or blank
    ids = _texts(raw, columns.get(ID)) or blank
    texts = _texts(raw, columns["notes"])
    for index, (text, email, raw_id) in enumerate(zip(texts, emails, ids, strict=True)):
        notes = _parse(text.strip(), path, index + 1)
        if email.strip():
            by_email[email.strip().lower()] = notes
        if raw_id.strip().isascii() and raw_id.strip().isdigit():
            by_id[int(raw_id)] = notes
    return by_email, by_id


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


def _texts(raw: pd.DataFrame, column: str | None) -> list[str]:
    return [str(v) for v in raw[column].tolist()] if column is not None else []


def _parse(text: str, path: Path, row: int) -> Context:
    try:
        return parse_context(text)
    except ValueError as problem:
        raise InputError(f"{path} row {row}, column notes: {problem}") from None
