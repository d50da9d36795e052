"""Read an export of the contacts' current notes (`--existing-notes`), keyed by email or id."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sync_worker.config import Settings
from sync_worker.errors import InputError
from sync_worker.fields import CONTACT_KEY, ID
from sync_worker.merger import Context, parse_context
from sync_worker.reader import ReadOptions, read_raw

NotesByEmail = dict[str, Context]
NotesById = dict[int, Context]


def read_notes(path: Path, settings: Settings) -> tuple[NotesByEmail, NotesById]:
    """Columns `notes` and `contact_email` and/or `interview_id`; notes text or a JSON object."""
    raw, _warnings = read_raw(path, ReadOptions(settings.encoding, settings.delimiter))
    columns = {str(c).strip().lower(): str(c) for c in raw.columns}
    found = ", ".join(repr(str(c)) for c in raw.columns) or "none"
    if "notes" not in columns:
        raise InputError(f"{path}: no notes column (columns found: {found})")
    if CONTACT_KEY not in columns and ID not in columns:
        raise InputError(f"{path}: needs a {CONTACT_KEY} or {ID} column (columns found: {found})")
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
        if raw_id.strip().isdigit():
            by_id[int(raw_id)] = notes
    return by_email, by_id


def _texts(raw: pd.DataFrame, column: str | None) -> list[str]:
    return [str(v) for v in raw[column].tolist()] if column is not None else []


def _parse(text: str, path: Path, row: int) -> Context:
    try:
        return parse_context(text)
    except ValueError as problem:
        raise InputError(f"{path} row {row}, column notes: {problem}") from None
