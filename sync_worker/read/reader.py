"""Read CRM exports into one frame of text cells with canonical column names.

Every cell is text ("" for empty): an id must never become 4821.0. Each row keeps the index of
its file and its 1-based data row, so every later message and ledger line can point at it.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, NamedTuple, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sync_worker.errors import InputError
from sync_worker.fields import CANONICAL_COLUMNS, CONTACT_KEY, CONTEXT_PREFIX, ID
from sync_worker.read.footer import IdHeaders, SetAside, byte_length, id_cells, trailing_lines
from sync_worker.settings.config import FRAME_SOURCE

FILE_COL = "_file"
ROW_COL = "_row"
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
SHEET_SUFFIXES = (".xlsx",)
# Byte-order marks, longest first: UTF-32 LE starts with the UTF-16 LE mark.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
LIKELY_DELIMITERS = (";", "\t", "|", ",")
MAX_BLOCK = 1 << 30  # the largest CSV block (so the longest row) Arrow is asked to take
QUOTE_SCAN_CHUNK = 1 << 24
# The end of a file looked at for lines that are not rows: Salesforce's footer is ~200 bytes, and
# 64 KiB holds 20,000 lines of Excel's `,,`. Lines past it stay rows (invalid), never lost.
TAIL_BYTES = 1 << 16

# Picks, from a file's headers, the ones to read.
HeaderFilter = Callable[[Sequence[str]], Sequence[str]]


@dataclass(frozen=True)
class ReadOptions:
    encoding: str | None = None
    delimiter: str | None = None
    columns: Mapping[str, str] | None = None  # canonical field -> export header
    context_columns: Mapping[str, str] | None = None  # context key -> export header
    sheet: str | None = None  # the XLSX sheet to read; None: the first


@dataclass(frozen=True)
class BadRow:
    """A row the reader could read only in part (a line with a field too many, a number Excel
    cannot hold exactly): it is `invalid`, whatever its cells say."""

    code: str
    column: str  # the column to blame, "" for the whole row
    message: str


@dataclass
class RawFile:
    """One file as read: text cells with headers as written, and what was not a clean row."""

    frame: pd.DataFrame
    warnings: list[str] = dataclasses.field(default_factory=list)
    set_aside: SetAside | None = None  # lines that are not rows (a report footer, ...)
    # 0-based row -> its problem
    bad_rows: dict[int, BadRow] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """All inputs as one frame: canonical columns, `context.<key>` columns, _file, _row."""

    frame: pd.DataFrame
    files: tuple[str, ...]
    context_keys: tuple[str, ...]
    warnings: tuple[str, ...]
    set_aside: tuple[SetAside, ...] = ()  # per file that set lines aside
    bad_rows: Mapping[int, BadRow] = dataclasses.field(default_factory=dict)  # position -> problem

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def lines_set_aside(self) -> int:
        return sum(aside.count for aside in self.set_aside)

    def locate(self, position: int) -> tuple[int, int, str, str]:
        """(file index, 1-based row, interview_id as written, contact_email) of a row."""
        files, rows, ids, emails = self._columns
        return (
            int(files[position]),
            int(rows[position]),
            ids[position].as_py(),
            emails[position].as_py(),
        )

    @cached_property
    def _columns(self) -> tuple[np.ndarray, np.ndarray, pa.Array, pa.Array]:
        """The columns `locate_all` takes from: the texts in one piece each, nulls as "" (a take
        from a column of many chunks cost ~6x as much, and a run's recorder takes a few dozen
        rows a hundred times a second)."""
        frame = self.frame

        def text(column: str) -> pa.Array:
            values = pa.array(frame[column], pa.string())
            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks()
            return pc.fill_null(values, "")

        emails = pc.utf8_trim_whitespace(text(CONTACT_KEY))  # trimmed, as every cell is read
        return frame[FILE_COL].to_numpy(), frame[ROW_COL].to_numpy(), text(ID), emails

    def locate_all(self, positions: np.ndarray) -> Located:
        """`locate` for many rows at once, as columns (a nightly run's million skipped rows, the
        rows of the requests that ended since the recorder last wrote)."""
        files, rows, ids, emails = self._columns
        at = pa.array(positions)
        return Located(
            [self.files[index] for index in files[positions].tolist()],
            rows[positions].tolist(),
            ids.take(at).to_pylist(),
            emails.take(at).to_pylist(),
        )


class Located(NamedTuple):
    """Rows' places, as columns: file, 1-based row, interview_id as written, contact_email."""

    files: list[str]
    rows: list[int]
    ids: list[str]
    emails: list[str]


JEMALLOC_DECAY_MS = 1000  # Arrow's own setting for its jemalloc pool, put back after a command


@contextmanager
def lean_memory_pool() -> Iterator[None]:
    """Arrow's default pool (mimalloc) keeps the pages it frees; jemalloc told to hand them
    back at once keeps a million-row plan's peak near what pandas alone needs (`make bench`).
    For one command only: the process's default pool (and jemalloc's decay) are put back after,
    so a host process (a notebook, a task runner) keeps the pool it had. Buffers made meanwhile
    go back to the pool they came from, whenever they are freed."""
    previous = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowException):  # a pyarrow built without jemalloc
        yield
        return
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
        pa.jemalloc_set_decay_ms(JEMALLOC_DECAY_MS)


@contextmanager
def arrow_keeps_off_signals() -> Iterator[None]:
    """For one command: Arrow does not swap in its own SIGINT/SIGTERM handlers for a long read.
    It hands a signal back to Python's handler when the read ends, and one that landed in that
    hand-over was lost: a run stopped while it read went on and sent every row. The run's own
    handlers record a stop while it reads (the rows are read, then each gets its line); Arrow's
    default is put back after."""
    pa.enable_signal_handlers(False)
    try:
        yield
    finally:
        pa.enable_signal_handlers(True)


def read_batch(sources: Sequence[str | pd.DataFrame], options: ReadOptions) -> Batch:
    """Read every input (a file, or a DataFrame read as a file would be) in order and stack
    them into one batch."""
    frames: list[pd.DataFrame] = []
    warnings: list[str] = []
    context_keys: dict[str, None] = {}
    set_aside: list[SetAside] = []
    bad_rows: dict[int, BadRow] = {}
    names = [s if isinstance(s, str) else FRAME_SOURCE for s in sources]
    _refuse_repeated_inputs(sources)
    for index, (source, name) in enumerate(zip(sources, names, strict=True)):
        picker = _ColumnPicker(name, options)
        if isinstance(source, str):
            raw = read_raw(Path(source), options, picker)
        else:
            raw = RawFile(read_frame(source, picker))
        warnings.extend(raw.warnings)
        warnings.extend(picker.warnings)
        set_aside.extend([raw.set_aside] if raw.set_aside is not None else [])
        before = sum(map(len, frames))
        bad_rows.update((before + row, bad) for row, bad in raw.bad_rows.items())
        frame = raw.frame.rename(columns=picker.renames)
        context_keys.update(dict.fromkeys(_context_keys(frame)))
        frame[FILE_COL] = index
        frame[ROW_COL] = range(1, len(frame) + 1)
        frames.append(frame)
    keys = tuple(context_keys)
    columns = [*CANONICAL_COLUMNS, *(CONTEXT_PREFIX + k for k in keys), FILE_COL, ROW_COL]
    aligned = [_align(frame, columns) for frame in frames]
    combined = pd.concat(aligned, ignore_index=True) if len(aligned) > 1 else aligned[0]
    return Batch(combined, tuple(names), keys, tuple(warnings), tuple(set_aside), bad_rows)


def _refuse_repeated_inputs(sources: Sequence[str | pd.DataFrame]) -> None:
    """One file given twice (`a.csv ./a.csv`, an overlapping glob, a link) would send its rows
    twice and write two ledger lines for each of its rows: refused, naming both. So is one
    DataFrame given twice."""
    frames: dict[int, int] = {}
    for index, source in enumerate(sources):
        if not isinstance(source, str) and frames.setdefault(id(source), index) != index:
            raise InputError(
                f"{FRAME_SOURCE} (input {index + 1}): the same DataFrame as input "
                f"{frames[id(source)] + 1}; give each input once"
            )
    paths = [s for s in sources if isinstance(s, str)]
    seen: dict[tuple[int, int], int] = {}
    for index, path in enumerate(paths):
        try:
            info = os.stat(path)
        except OSError:
            continue  # missing or unreadable: read_raw names it
        first = seen.setdefault((info.st_dev, info.st_ino), index)
        if first != index:
            same = "given twice" if path == paths[first] else f"the same file as {paths[first]}"
            raise InputError(
                f"{path}: {same}; give each input once "
                "(its rows would be sent, and written to the ledger, twice)"
            )


class _ColumnPicker:
    """Picks the headers a run uses from a file's header row, and keeps what it found: how
    to rename them, and warnings. Only those columns are kept, so a Parquet column nobody
    asked for is never even read."""

    def __init__(self, path: str, options: ReadOptions) -> None:
        self.path = path
        self.options = options
        self.renames: dict[str, str] = {}  # header as written -> batch column
        self.warnings: list[str] = []

    def __call__(self, headers: Sequence[str]) -> list[str]:
        self.renames, self.warnings = column_plan(headers, self.path, self.options)
        return list(self.renames)


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


def id_headers(options: ReadOptions) -> IdHeaders:
    """The headers that may hold the interview id (as written, or as mapped), lower case."""
    mapped = (options.columns or {}).get(ID)
    return frozenset(name.strip().lower() for name in (ID, mapped) if name)


def read_raw(path: Path, options: ReadOptions, wanted: HeaderFilter | None = None) -> RawFile:
    """Read one file as text cells, headers as written. `wanted` picks the headers to keep
    (and, for Parquet, to read at all); None keeps every column."""
    name = path.name.lower()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    if name.endswith(PARQUET_SUFFIXES):
        return RawFile(_read_parquet(path, wanted))
    if name.endswith(SHEET_SUFFIXES):
        from sync_worker.read.workbook import read_xlsx  # here: only a workbook needs calamine

        return read_xlsx(path, options.sheet, wanted, id_headers(options))
    if name.endswith(CSV_SUFFIXES):
        raw = _read_csv(path, options)
        if wanted is not None:
            raw.frame = raw.frame[list(dict.fromkeys(wanted([str(h) for h in raw.frame.columns])))]
        return raw
    raise InputError(f"{path}: unsupported file type (use .csv, .csv.gz, .tsv, .xlsx or .parquet)")


# -- DataFrame ------------------------------------------------------------------------------------


def read_frame(frame: pd.DataFrame, wanted: HeaderFilter | None = None) -> pd.DataFrame:
    """A DataFrame's columns read as a file's would be: headers as text, picked and mapped by
    the same rules, every cell as text ("" for None and NaN; 4821, never 4821.0)."""
    headers = [str(column) for column in frame.columns]
    picked = list(dict.fromkeys(wanted(headers))) if wanted is not None else headers
    position = {header: headers.index(header) for header in picked}  # the first of a name
    as_text = [_series_as_text(frame.iloc[:, position[header]], header) for header in picked]
    return _frame(pa.table(as_text, names=picked))


def _series_as_text(series: pd.Series, name: str) -> pa.ChunkedArray:
    """Typed columns go through Arrow, as a Parquet file's do; an object column of mixed
    values (ints, floats, text, None, as a frame built in Python holds) cell by cell."""
    try:
        array = pa.chunked_array([pa.array(series, from_pandas=True)])
    except (pa.ArrowException, TypeError, ValueError):
        array = pa.chunked_array([pa.array([_cell_text(v) for v in series], pa.string())])
    return _column_as_text(array, name, Path(FRAME_SOURCE))


def _cell_text(value: object) -> str | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# -- CSV ------------------------------------------------------------------------------------------


def _read_csv(path: Path, options: ReadOptions) -> RawFile:
    is_tsv = path.name.lower().endswith((".tsv", ".tsv.gz"))
    delimiter = options.delimiter or ("\t" if is_tsv else ",")
    sniff = options.delimiter is None
    ids = id_headers(options)
    marked, warnings = _encoding_from_bom(path, options.encoding)
    if marked or options.encoding:
        encoding = marked or options.encoding or ""
        what = f"a {encoding.upper()} byte-order mark" if marked else "the configured encoding"
        raw = _decoded(path, delimiter, encoding, sniff, f"not {encoding} text ({what})", ids)
        raw.warnings[:0] = warnings
        return raw
    try:
        return _read_csv_as(path, delimiter, "utf-8", sniff, ids)
    except UnicodeDecodeError:
        warning = (
            f"{path}: not valid UTF-8, read as cp1252 (Excel on Windows); "
            "set [input] encoding in the config to silence this"
        )
        what = "neither UTF-8 nor cp1252 text" + (
            " (or a damaged gzip file)" if path.name.lower().endswith(".gz") else ""
        )
        raw = _decoded(path, delimiter, "cp1252", sniff, what, ids)
        raw.warnings.insert(0, warning)
        return raw


def _decoded(
    path: Path, delimiter: str, encoding: str, sniff: bool, what: str, ids: IdHeaders
) -> RawFile:
    """Read in a known encoding; bytes it cannot decode make one line that says so."""
    try:
        return _read_csv_as(path, delimiter, encoding, sniff, ids)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: {what}: byte {exc.start} does not decode; set [input] encoding in the "
            "config to the file's encoding"
        ) from None


def _encoding_from_bom(path: Path, configured: str | None) -> tuple[str | None, list[str]]:
    """A byte-order mark says the encoding for sure: Excel's "Unicode text" is UTF-16 with
    one. It wins over a configured encoding, with a warning when the two disagree."""
    start = _first_bytes(path, 4)
    marked = next((name for bom, name in BOMS if start.startswith(bom)), None)
    if marked is None or configured is None or _same_family(configured, marked):
        return marked, []
    return marked, [
        f"{path}: starts with a {marked.upper()} byte-order mark, so it is read as {marked}, "
        f"not as the configured {configured}"
    ]


def _same_family(configured: str, marked: str) -> bool:
    return codecs.lookup(configured).name.startswith(marked)


def _first_bytes(path: Path, count: int) -> bytes:
    try:
        with _open_binary(path) as handle:
            return handle.read(count)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read: {_gzip_problem(path, exc)}") from None


def _gzip_problem(path: Path, exc: Exception) -> str:
    if isinstance(exc, gzip.BadGzipFile) or "gzip" in str(exc).lower():
        return f"not a gzip file ({exc}); if it is plain CSV, drop the .gz from its name"
    if isinstance(exc, EOFError | zlib.error):
        return f"the gzip data is truncated or damaged ({exc})"
    return str(exc)


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _read_csv_as(path: Path, delimiter: str, encoding: str, sniff: bool, ids: IdHeaders) -> RawFile:
    """Parse with Arrow's CSV reader (the engine pandas uses for engine="pyarrow"), every
    column declared text up front so nothing is ever inferred: "004821" stays "004821".

    `sniff`: no delimiter was configured, so a header with tabs and no `delimiter` is read as
    tab-separated (Excel's "Unicode text" is, whatever the file is called).

    The lines after the data that are not rows (footer.py) are cut off before Arrow reads the
    file. Only when Arrow then finds a line whose field count is not the header's is the file
    read again line by line, so that line alone is `invalid`: a clean file pays nothing."""
    header = _header(path, delimiter, encoding)
    if sniff and len(header) == 1 and "\t" in header[0]:
        delimiter = "\t"
        header = _header(path, delimiter, encoding)
    quotes, end, size = _scan(path, encoding)
    tail = trailing_lines(end, delimiter, encoding, id_cells(header, ids))
    del end  # not kept through the parse
    length = size - tail.size if tail.size else None
    _check_quotes_closed(path, delimiter, encoding, quotes - tail.quotes, length)
    bad_rows: dict[int, BadRow] = {}
    try:
        table = _parse_csv(path, delimiter, encoding, header, length)
    except _RaggedRows:
        table, bad_rows = _parse_by_lines(path, delimiter, encoding, header, length)
    return RawFile(_frame(table), [], SetAside.of(str(path), tail.kinds), bad_rows)


class _RaggedRows(Exception):
    """Arrow met a line whose field count is not the header's."""


def _parse_csv(
    path: Path, delimiter: str, encoding: str, header: list[str], length: int | None
) -> pa.Table:
    """Arrow needs a whole row inside one block: a row longer than the block (a cell of
    megabytes) is read again with bigger blocks. `length`: read only the file's first bytes.
    A signal does not cut a read short: commands keep Arrow off the signals
    (`arrow_keeps_off_signals`), and the run's own handlers record the stop."""
    block_size = 1 << 20  # Arrow's default
    while True:
        try:
            return _arrow_csv(path, delimiter, encoding, header, block_size, length)
        except pa.ArrowInvalid as exc:
            if "columns, got" in str(exc):
                raise _RaggedRows from None
            if "straddl" not in str(exc) or block_size >= MAX_BLOCK:
                raise _csv_error(path, delimiter, encoding, exc) from None
            block_size *= 16
        except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read: {_gzip_problem(path, exc)}") from None


def _arrow_csv(
    path: Path,
    delimiter: str,
    encoding: str,
    header: list[str],
    block_size: int,
    length: int | None,
) -> pa.Table:
    source: Path | pa.NativeFile = path if length is None else pa.BufferReader(_head(path, length))
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(encoding=encoding, use_threads=True, block_size=block_size),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _csv_error(path: Path, delimiter: str, encoding: str, exc: pa.ArrowInvalid) -> Exception:
    if "invalid UTF8" in str(exc) and encoding == "utf-8":
        return UnicodeDecodeError("utf-8", b"", 0, 1, str(exc))
    where = _locate_csv_problem(path, delimiter, encoding, exc)
    return InputError(f"{path}: cannot parse as CSV: {where}")


def _open_text(path: Path, encoding: str) -> IO[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding=encoding, newline="")


def _header(path: Path, delimiter: str, encoding: str) -> list[str]:
    try:
        with _open_text(path, encoding) as handle:
            header = next((row for row in csv.reader(handle, delimiter=delimiter) if row), None)
    except (OSError, EOFError, zlib.error, csv.Error) as exc:
        raise InputError(f"{path}: cannot read: {_gzip_problem(path, exc)}") from None
    if header:
        header = [header[0].removeprefix("\ufeff"), *header[1:]]
    if not header or header == [""]:
        raise InputError(f"{path}: file is empty (no header row)")
    if any("\x00" in cell for cell in header):
        raise InputError(
            f"{path}: the header holds NUL bytes: the file is not text, or is UTF-16 without a "
            'byte-order mark (then set [input] encoding = "utf-16-le" in the config)'
        )
    return header


def _head(path: Path, length: int) -> pa.Buffer:
    """The first `length` bytes of the file (decompressed): mapped, not copied, when plain."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return pa.py_buffer(handle.read(length))
    return pa.memory_map(str(path)).read_buffer(length)


def _parse_by_lines(
    path: Path, delimiter: str, encoding: str, header: list[str], length: int | None
) -> tuple[pa.Table, dict[int, BadRow]]:
    """Every record with Python's csv module: one with a field too many or too few is kept as
    a row (its cells as far as they go), marked `malformed_row` with its line and both counts."""
    csv.field_size_limit(MAX_BLOCK)  # a cell of megabytes, as Arrow takes
    width = len(header)
    columns: list[list[str]] = [[] for _ in header]
    bad_rows: dict[int, BadRow] = {}
    line = 0  # the last line read
    try:
        with _text_head(path, encoding, length) as handle:
            records = csv.reader(handle, delimiter=delimiter)
            next((record for record in records if record), None)  # the header
            line = records.line_num
            for record in records:
                first, line = line + 1, records.line_num
                if not record:
                    continue  # a blank line is no row, as for Arrow
                if len(record) != width:
                    bad_rows[len(columns[0])] = _malformed(first, len(record), width)
                    record = (record + [""] * width)[:width]
                for column, cell in zip(columns, record, strict=True):
                    column.append(cell)
    except csv.Error as exc:
        raise InputError(f"{path}: cannot parse as CSV: line {line + 1}: {exc}") from None
    arrays = [pa.array(column, pa.string()) for column in columns]
    return pa.table(arrays, names=header), bad_rows


def _malformed(line: int, fields: int, width: int) -> BadRow:
    return BadRow(
        "malformed_row",
        "",
        f"line {line} has {fields} fields where the header has {width}; "
        "fix that line in the export (a stray delimiter, or a cell that needed quotes)",
    )


def _text_head(path: Path, encoding: str, length: int | None) -> IO[str]:
    if length is None:
        return _open_text(path, encoding)
    return io.TextIOWrapper(io.BytesIO(_head(path, length).to_pybytes()), encoding, newline="")


def _check_quotes_closed(
    path: Path, delimiter: str, encoding: str, quotes: int, length: int | None
) -> None:
    """A quote never closed swallows the rest of the file into one cell, and Arrow accepts
    that silently. Every closed quote comes in a pair, so only an odd count of quote marks
    (one fast pass over the bytes) makes it worth finding the row with Python's csv module."""
    if quotes % 2 == 0:
        return
    complete = 0  # records read whole, the header included
    try:
        with _text_head(path, encoding, length) as handle:
            for record in csv.reader(handle, delimiter=delimiter, strict=True):
                complete += bool(record)  # blank lines are no rows, for Arrow either
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            where = f"row {complete}" if complete else "the header"
            raise InputError(
                f"{path}: {where}: a quote opened there is never closed, so the rest of the "
                "file would be one cell; close or remove the quote"
            ) from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError):
        pass  # the parse that follows says what is wrong


class _Scan(NamedTuple):
    quotes: int  # how many `"` the file holds
    tail: str  # its last TAIL_BYTES, decoded (the first line may be cut short)
    size: int  # its length in bytes (decompressed)


def _scan(path: Path, encoding: str) -> _Scan:
    """One pass over the file: its quote marks, counted in the bytes where the encoding keeps
    ASCII as one byte (UTF-8, cp1252, ...), else in the decoded text; and its end."""
    if '"\n'.encode(encoding, errors="replace") != b'"\n':
        return _scan_text(path, encoding)
    count, size, tail = 0, 0, b""
    try:
        with _open_binary(path) as raw:
            while chunk := raw.read(QUOTE_SCAN_CHUNK):
                count += chunk.count(b'"')
                size += len(chunk)
                tail = chunk[-TAIL_BYTES:] if len(chunk) >= TAIL_BYTES else tail + chunk
                tail = tail[-TAIL_BYTES:]
    except (OSError, EOFError, zlib.error):
        return _Scan(0, "", 0)  # the parse that follows says what is wrong
    return _Scan(count, tail.decode(encoding, "surrogateescape"), size)


def _scan_text(path: Path, encoding: str) -> _Scan:
    count, size, tail = 0, 0, ""
    try:
        with _open_text(path, encoding) as text:
            while piece := text.read(QUOTE_SCAN_CHUNK):
                count += piece.count('"')
                size += byte_length(piece, encoding)
                tail = (tail + piece)[-TAIL_BYTES:]
    except (OSError, EOFError, zlib.error, UnicodeError):
        return _Scan(0, "", 0)  # the parse that follows says what is wrong
    return _Scan(count, tail, size + _bom_length(path))


def _bom_length(path: Path) -> int:
    start = _first_bytes(path, 4)
    return next((len(bom) for bom, _name in BOMS if start.startswith(bom)), 0)


def _locate_csv_problem(path: Path, delimiter: str, encoding: str, exc: Exception) -> str:
    """Arrow says what is wrong but not where: find the row with Python's csv module."""
    try:
        with _open_text(path, encoding) as handle:
            rows = csv.reader(handle, delimiter=delimiter)
            width = len(next(rows))
            for number, row in enumerate(rows, start=1):
                if len(row) != width:
                    return f"row {number} has {len(row)} fields where the header has {width}"
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error, StopIteration):
        pass
    return str(exc).removeprefix("CSV parse error: ")


def _frame(table: pa.Table) -> pd.DataFrame:
    """A pandas frame over the Arrow columns (no copy into Python objects)."""
    frame: pd.DataFrame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return frame


# -- Parquet --------------------------------------------------------------------------------------


def _read_parquet(path: Path, wanted: HeaderFilter | None) -> pd.DataFrame:
    """Only the columns the run uses are read and turned into text: a list, struct or binary
    column nobody maps does not matter."""
    import pyarrow.parquet as pq  # here: a CSV-only run never pays its ~12 ms import

    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read as Parquet: {exc}") from None
    picked = list(dict.fromkeys(wanted(names))) if wanted is not None else names
    try:
        table = pq.read_table(path, columns=picked)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read as Parquet: {exc}") from None
    as_text = [_column_as_text(table.column(name), name, path) for name in picked]
    return _frame(pa.table(as_text, names=picked))


def _column_as_text(column: pa.ChunkedArray, name: str, path: Path) -> pa.ChunkedArray:
    """Integral floats become "4821", not "4821.0"; nulls and NaN become ""; bytes become
    text only when they are UTF-8. A list, struct or map column cannot be one text cell.
    large_string (how pandas 3 writes its text columns) becomes string, whose 32-bit offsets
    the planner reads."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = pc.cast(column, kind.value_type), kind.value_type
    if pa.types.is_nested(kind):
        raise InputError(
            f"{path}: column {name!r} holds {kind} values, not text: export it as a text "
            "column (e.g. JSON text), or map another column"
        )
    if pa.types.is_floating(kind):
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
    try:
        if not pa.types.is_string(kind):
            column = pc.cast(column, pa.string())
        column.validate(full=True)  # Parquet strings are not checked to be UTF-8 on read
    except pa.ArrowInvalid:
        raise _not_utf8(column, name, path) from None
    except pa.ArrowException as exc:
        raise InputError(
            f"{path}: column {name!r} of type {kind} cannot be read as text ({exc})"
        ) from None
    return pc.fill_null(column, "")


def _not_utf8(column: pa.ChunkedArray, name: str, path: Path) -> InputError:
    row = next(
        (i for i, v in enumerate(pc.cast(column, pa.binary()).to_pylist(), 1) if not _utf8(v)),
        None,
    )
    where = f" (row {row})" if row is not None else ""
    return InputError(
        f"{path}: column {name!r} holds bytes that are not UTF-8 text{where}: export it as "
        "text, or map another column"
    )


def _utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def empty_text(length: int) -> pd.Series:
    """A column of empty text, for a column one file lacks."""
    return pd.Series(pa.array([""] * length, pa.string()), dtype=pd.ArrowDtype(pa.string()))


def column_plan(
    headers: Sequence[str], path: str, options: ReadOptions
) -> tuple[dict[str, str], list[str]]:
    """Which header gives which batch column (header -> canonical or `context.<key>`), and
    warnings for mappings that found nothing. Two headers giving one column, or one header
    mapped to two, is ambiguous: refused, never resolved silently."""
    by_norm: dict[str, list[int]] = {}
    for position, header in enumerate(headers):
        by_norm.setdefault(_norm(header), []).append(position)
    sources: dict[str, dict[int, str]] = {}  # batch column -> {position: how it was found}
    warnings: list[str] = []
    _canonical_sources(headers, by_norm, path, options, sources, warnings)
    _context_sources(headers, by_norm, path, options, sources, warnings)
    return _unambiguous(headers, sources, path), warnings


def _canonical_sources(
    headers: Sequence[str],
    by_norm: Mapping[str, list[int]],
    path: str,
    options: ReadOptions,
    sources: dict[str, dict[int, str]],
    warnings: list[str],
) -> None:
    mapping = options.columns or {}
    for field in CANONICAL_COLUMNS:
        found = dict.fromkeys(by_norm.get(field, []), "by name")
        mapped = mapping.get(field)
        also = by_norm.get(_norm(mapped), []) if mapped and _norm(mapped) != field else []
        if found and also:  # SPEC 5: a canonical header is used as it is, the mapping after it
            warnings.append(
                f"{path}: column {field!r} is used as it is; the mapped column "
                f"{mapped!r} for {field} is ignored"
            )
        elif also:
            found = dict.fromkeys(also, f"[columns] {field} = {mapped!r}")
        if found:
            sources[field] = found
        elif field == ID:
            raise InputError(_missing_id_message(path, headers, mapped))
        elif mapped is not None:
            warnings.append(f"{path}: mapped column {mapped!r} for {field} not found")


def _context_sources(
    headers: Sequence[str],
    by_norm: Mapping[str, list[int]],
    path: str,
    options: ReadOptions,
    sources: dict[str, dict[int, str]],
    warnings: list[str],
) -> None:
    for position, header in enumerate(headers):
        if not _norm(header).startswith(CONTEXT_PREFIX):
            continue
        key = header.strip()[len(CONTEXT_PREFIX) :]
        if key.strip():
            sources.setdefault(CONTEXT_PREFIX + key, {})[position] = "by name"
        else:
            warnings.append(
                f"{path}: column {header!r} names no context key and is ignored; "
                "name it context.<key>"
            )
    for key, wanted in (options.context_columns or {}).items():
        found = by_norm.get(_norm(wanted), [])
        if not found:
            warnings.append(f"{path}: mapped context column {wanted!r} for {key} not found")
        how = f"[context_columns] {key} = {wanted!r}"
        sources.setdefault(CONTEXT_PREFIX + key, {}).update(dict.fromkeys(found, how))


def _unambiguous(
    headers: Sequence[str], sources: Mapping[str, dict[int, str]], path: str
) -> dict[str, str]:
    renames: dict[str, str] = {}
    given: dict[int, str] = {}
    for column, found in sources.items():
        if len(found) > 1:
            raise InputError(_ambiguous_message(path, headers, column, found))
        for position in found:
            if position in given:
                raise InputError(
                    f"{path}: column {headers[position]!r} is mapped to both {given[position]} "
                    f"and {column}; map it to one of them in the config"
                )
            given[position] = column
            renames[headers[position]] = column
    return renames


def _ambiguous_message(
    path: str, headers: Sequence[str], column: str, found: Mapping[int, str]
) -> str:
    (first, how_first), (second, how_second) = list(found.items())[:2]
    return (
        f"{path}: columns {first + 1} {headers[first]!r} ({how_first}) and {second + 1} "
        f"{headers[second]!r} ({how_second}) both give {column}: ambiguous; remove or rename "
        "one in the export, or change the mapping in the config"
    )


def _missing_id_message(path: str, headers: Sequence[str], mapped: str | None) -> str:
    found = ", ".join(repr(h) for h in headers) or "none"
    wanted = f"interview_id column (nor the mapped {mapped!r})" if mapped else "interview_id column"
    delimiter = _delimiter_hint(headers)
    if delimiter is not None:
        return (
            f"{path}: no {wanted} (columns found: {found}); the header looks separated "
            f"by {delimiter!r}: set [input] delimiter = {json.dumps(delimiter)} in the config"
        )
    title = (
        "; if that one cell is a report's title, delete the lines above the header (a report "
        "saved as .xlsx has its title rows set aside)"
        if len(headers) == 1
        else ""
    )
    return (
        f"{path}: no {wanted} (columns found: {found}); "
        'map one in the config: [columns] interview_id = "<your header>"' + title
    )


def _delimiter_hint(headers: Sequence[str]) -> str | None:
    """A header read as one column that holds a likely separator was split on the wrong one."""
    if len(headers) != 1:
        return None
    return next((d for d in LIKELY_DELIMITERS if d in headers[0]), None)


def _norm(header: str) -> str:
    return header.strip().lower()
