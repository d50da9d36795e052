"""Read CRM exports into one frame of text cells with canonical column names.

Every cell is text ("" for empty): an id must never become 4821.0. Each row keeps the index of
its file and its 1-based data row, so every later message and ledger line can point at it.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sync_worker.errors import InputError
from sync_worker.fields import CANONICAL_COLUMNS, CONTACT_KEY, CONTEXT_PREFIX, ID

FILE_COL = "_file"
ROW_COL = "_row"
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class ReadOptions:
    encoding: str | None = None
    delimiter: str | None = None
    columns: Mapping[str, str] | None = None  # canonical field -> export header
    context_columns: Mapping[str, str] | None = None  # context key -> export header


@dataclass(frozen=True)
class Batch:
    """All inputs as one frame: canonical columns, `context.<key>` columns, _file, _row."""

    frame: pd.DataFrame
    files: tuple[str, ...]
    context_keys: tuple[str, ...]
    warnings: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.frame)

    @cached_property
    def _lookup(self) -> tuple[list[int], list[int], list[str], list[str]]:
        frame = self.frame
        return (
            frame[FILE_COL].tolist(),
            frame[ROW_COL].tolist(),
            pa.array(frame[ID], pa.string()).to_pylist(),
            pa.array(frame[CONTACT_KEY], pa.string()).to_pylist(),
        )

    def locate(self, position: int) -> tuple[int, int, str, str]:
        """(file index, 1-based row, interview_id as written, contact_email) of a row."""
        files, rows, ids, emails = self._lookup
        return files[position], rows[position], ids[position], emails[position]


def use_lean_memory_pool() -> None:
    """Arrow's default pool (mimalloc) keeps the pages it frees; jemalloc told to hand them
    back at once keeps a million-row plan's peak near what pandas alone needs (`make bench`)."""
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowException):  # a pyarrow built without jemalloc
        pass


def read_batch(paths: Sequence[str], options: ReadOptions) -> Batch:
    """Read every input in order and stack them into one batch."""
    frames: list[pd.DataFrame] = []
    warnings: list[str] = []
    context_keys: dict[str, None] = {}
    for index, path in enumerate(paths):
        raw, read_warnings = read_raw(Path(path), options)
        warnings.extend(read_warnings)
        frame, map_warnings = to_canonical(raw, path, options)
        warnings.extend(map_warnings)
        context_keys.update(dict.fromkeys(_context_keys(frame)))
        frame[FILE_COL] = index
        frame[ROW_COL] = range(1, len(frame) + 1)
        frames.append(frame)
    keys = tuple(context_keys)
    columns = [*CANONICAL_COLUMNS, *(CONTEXT_PREFIX + k for k in keys), FILE_COL, ROW_COL]
    aligned = [_align(frame, columns) for frame in frames]
    combined = pd.concat(aligned, ignore_index=True) if len(aligned) > 1 else aligned[0]
    return Batch(combined, tuple(paths), keys, tuple(warnings))


def _align(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Every batch column, in order; a column this file lacks is empty text."""
    for column in columns:
        if column not in frame.columns:
            frame[column] = empty_text(len(frame))
    return frame[columns]


def _context_keys(frame: pd.DataFrame) -> list[str]:
    return [
        str(c)[len(CONTEXT_PREFIX) :] for c in frame.columns if str(c).startswith(CONTEXT_PREFIX)
    ]


def read_raw(path: Path, options: ReadOptions) -> tuple[pd.DataFrame, list[str]]:
    """Read one file as text cells, headers as written."""
    name = path.name.lower()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    if name.endswith(PARQUET_SUFFIXES):
        return _read_parquet(path), []
    if name.endswith(CSV_SUFFIXES):
        return _read_csv(path, options)
    raise InputError(f"{path}: unsupported file type (use .csv, .csv.gz, .tsv or .parquet)")


def _read_csv(path: Path, options: ReadOptions) -> tuple[pd.DataFrame, list[str]]:
    is_tsv = path.name.lower().endswith((".tsv", ".tsv.gz"))
    delimiter = options.delimiter or ("\t" if is_tsv else ",")
    if options.encoding:
        return _read_csv_as(path, delimiter, options.encoding), []
    try:
        return _read_csv_as(path, delimiter, "utf-8"), []
    except UnicodeDecodeError:
        warning = (
            f"{path}: not valid UTF-8, read as cp1252 (Excel on Windows); "
            "set [input] encoding in the config to silence this"
        )
        return _read_csv_as(path, delimiter, "cp1252"), [warning]


def _read_csv_as(path: Path, delimiter: str, encoding: str) -> pd.DataFrame:
    """Parse with Arrow's CSV reader (the engine pandas uses for engine="pyarrow"), every
    column declared text up front so nothing is ever inferred: "004821" stays "004821"."""
    header = _header(path, delimiter, encoding)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(encoding=encoding, use_threads=True),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        if "invalid UTF8" in str(exc) and encoding == "utf-8":
            raise UnicodeDecodeError("utf-8", b"", 0, 1, str(exc)) from None
        raise InputError(
            f"{path}: cannot parse as CSV: {_locate_csv_problem(path, delimiter, encoding, exc)}"
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    return _frame(table)


def _open_text(path: Path, encoding: str) -> IO[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding=encoding, newline="")


def _header(path: Path, delimiter: str, encoding: str) -> list[str]:
    try:
        with _open_text(path, encoding) as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
    except (OSError, EOFError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    if not header:
        raise InputError(f"{path}: file is empty (no header row)")
    return [header[0].removeprefix("\ufeff"), *header[1:]]


def _locate_csv_problem(path: Path, delimiter: str, encoding: str, exc: Exception) -> str:
    """Arrow says what is wrong but not where: find the row with Python's csv module."""
    try:
        with _open_text(path, encoding) as handle:
            rows = csv.reader(handle, delimiter=delimiter)
            width = len(next(rows))
            for number, row in enumerate(rows, start=1):
                if len(row) != width:
                    return f"row {number} has {len(row)} fields where the header has {width}"
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return str(exc).removeprefix("CSV parse error: ")


def _frame(table: pa.Table) -> pd.DataFrame:
    """A pandas frame over the Arrow columns (no copy into Python objects)."""
    frame: pd.DataFrame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read as Parquet: {exc}") from None
    as_text = [_column_as_text(table.column(i)) for i in range(table.num_columns)]
    return _frame(pa.table(as_text, names=table.column_names))


def _column_as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integral floats become "4821", not "4821.0"; nulls become ""."""
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    return pc.fill_null(column, "")


def empty_text(length: int) -> pd.Series:
    """A column of empty text, for a column one file lacks."""
    return pd.Series(pa.array([""] * length, pa.string()), dtype=pd.ArrowDtype(pa.string()))


def to_canonical(
    raw: pd.DataFrame, path: str, options: ReadOptions
) -> tuple[pd.DataFrame, list[str]]:
    """Rename a file's headers to canonical names: as-is first, then via the mapping."""
    by_norm = {_norm(str(h)): str(h) for h in raw.columns}
    mapping = options.columns or {}
    renames: dict[str, str] = {}
    warnings: list[str] = []
    for field in CANONICAL_COLUMNS:
        header = _find(field, by_norm, mapping.get(field))
        if header is not None:
            renames[header] = field
        elif field == ID:
            raise InputError(_missing_id_message(path, raw, mapping.get(field)))
        elif field in mapping:
            warnings.append(f"{path}: mapped column {mapping[field]!r} for {field} not found")
    for header in raw.columns:
        norm = _norm(str(header))
        if norm.startswith(CONTEXT_PREFIX) and len(norm) > len(CONTEXT_PREFIX):
            renames[str(header)] = CONTEXT_PREFIX + str(header).strip()[len(CONTEXT_PREFIX) :]
    for key, wanted in (options.context_columns or {}).items():
        header = by_norm.get(_norm(wanted))
        if header is None:
            warnings.append(f"{path}: mapped context column {wanted!r} for {key} not found")
        else:
            renames[header] = CONTEXT_PREFIX + key
    frame = raw[list(renames)].rename(columns=renames)
    return frame.loc[:, ~frame.columns.duplicated()].copy(), warnings


def _find(field: str, by_norm: Mapping[str, str], mapped: str | None) -> str | None:
    if field in by_norm:
        return by_norm[field]
    if mapped is not None:
        return by_norm.get(_norm(mapped))
    return None


def _missing_id_message(path: str, raw: pd.DataFrame, mapped: str | None) -> str:
    found = ", ".join(repr(str(h)) for h in raw.columns) or "none"
    wanted = f"interview_id or the mapped column {mapped!r}" if mapped else "interview_id"
    return (
        f"{path}: no {wanted} column (columns found: {found}); "
        'map one in the config: [columns] interview_id = "<your header>"'
    )


def _norm(header: str) -> str:
    return header.strip().lower()
