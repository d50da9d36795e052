"""Read an Excel workbook (.xlsx) as text cells, the way a person sees them in Excel.

A whole number is `4821`, never `4821.0`; a date or date-time is ISO 8601 (a date-time at
midnight reads as its date: pandas gives both as one type); a boolean is `true`/`false`; an
empty cell is empty. Excel keeps 15 significant digits of a number (typing a 16-digit id into a
number cell turns its last digit into 0), so a whole number of 16 digits or more is no longer
known to be the id that was typed: its row is `invalid`, naming the column, never sent with a
rounded id.

Title rows above the header (a Salesforce "Formatted" report: the report's name, its filters)
are skipped: the header is the first row with two or more filled cells. The rows after the data
that are not rows (footer.py) are set aside, as for CSV. python-calamine reads the file, through
pandas (`engine="calamine"`), about ten times faster than openpyxl.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sync_worker.errors import InputError
from sync_worker.read.footer import TITLE, IdHeaders, SetAside, id_cells, kind_of, trailing_rows
from sync_worker.read.reader import BadRow, HeaderFilter, RawFile

MAX_EXACT = 10**15 - 1  # Excel keeps 15 significant digits: a longer whole number may be rounded
ENCRYPTED = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE file: a password-protected workbook
TITLE_ROWS_LOOKED_AT = 50
FOOTER_ROWS_LOOKED_AT = 1000


def read_xlsx(
    path: Path, sheet: str | None, wanted: HeaderFilter | None, ids: IdHeaders = frozenset()
) -> RawFile:
    """One sheet (the first, or `sheet` by name) as text cells, headers as written; `ids`: the
    headers that may hold the interview id (a subtotal's shape with an id there is a row)."""
    grid = _grid(path, sheet)
    top = _header_row(grid)
    headers = [_text(value) for value in grid.iloc[top].tolist()]
    if not any(header.strip() for header in headers):
        raise InputError(f"{path}: the sheet is empty (no header row)")
    body = grid.iloc[top + 1 :]
    at = id_cells(headers, ids)
    footer = trailing_rows(_texts(body.tail(FOOTER_ROWS_LOOKED_AT)), at)
    kinds = [TITLE] * top + [kind_of(cells, ids=at) or "" for cells in _texts(body.tail(footer))]
    body = body.iloc[: len(body) - footer]
    picked = list(dict.fromkeys(wanted(headers))) if wanted is not None else headers
    texts, bad_rows = _columns(body, picked, [headers.index(name) for name in picked], top)
    keep = _not_empty(body, texts)
    table = pa.table([pa.array(column, pa.string()).filter(keep) for column in texts], names=picked)
    if not bool(keep.all()):
        renumber = np.cumsum(keep) - 1
        bad_rows = {int(renumber[row]): bad for row, bad in bad_rows.items()}
    frame: pd.DataFrame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return RawFile(frame, [], SetAside.of(str(path), kinds), bad_rows)


def _columns(
    body: pd.DataFrame, picked: list[str], positions: list[int], top: int
) -> tuple[list[list[str]], dict[int, BadRow]]:
    """The picked columns as text, and the rows holding a number too large to be exact."""
    texts: list[list[str]] = []
    bad_rows: dict[int, BadRow] = {}
    for name, position in zip(picked, positions, strict=True):
        column, inexact = _column_text(body.iloc[:, position].to_numpy())
        texts.append(column)
        for row in inexact:
            bad_rows.setdefault(row, _inexact(name, column[row], top + 2 + row))
    return texts, bad_rows


def _not_empty(body: pd.DataFrame, texts: list[list[str]]) -> np.ndarray:
    """Rows that hold something: an empty row in the middle is no row, as a blank CSV line.
    Only rows whose picked cells are all empty are looked at whole."""
    keep = np.ones(len(body), dtype=bool)
    if not texts:
        return keep
    candidates = np.flatnonzero(np.logical_and.reduce([np.asarray(t) == "" for t in texts]))
    for row, cells in zip(candidates.tolist(), _texts(body.iloc[candidates]), strict=True):
        keep[row] = any(cell.strip() for cell in cells)
    return keep


def _grid(path: Path, sheet: str | None) -> pd.DataFrame:
    """The sheet's cells as Python values (str, int, float, bool, datetime, time), no header."""
    with open(path, "rb") as handle:
        start = handle.read(len(ENCRYPTED))
    if start == ENCRYPTED:
        raise InputError(
            f"{path}: a password-protected workbook (or an old .xls named .xlsx): open it in "
            "Excel and save it as .xlsx without a password"
        )
    try:
        import python_calamine

        book = pd.ExcelFile(path, engine="calamine")
    except (python_calamine.CalamineError, ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as an Excel workbook (.xlsx): {exc}") from None
    if not book.sheet_names:
        raise InputError(f"{path}: the workbook has no sheets")
    if sheet is not None and sheet not in book.sheet_names:
        names = ", ".join(repr(name) for name in book.sheet_names)
        raise InputError(
            f"{path}: no sheet named {sheet!r} (sheets: {names}); set [input] sheet in the "
            "config to one of them"
        )
    try:
        grid: pd.DataFrame = pd.read_excel(
            book,
            sheet_name=sheet if sheet is not None else 0,
            header=None,
            dtype=object,
            na_filter=False,
        )
    except (python_calamine.CalamineError, ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as an Excel workbook (.xlsx): {exc}") from None
    if grid.empty:
        raise InputError(f"{path}: the sheet is empty (no header row)")
    return grid


def _header_row(grid: pd.DataFrame) -> int:
    """The first row with two or more filled cells; the rows above it are titles. A sheet of
    one column has its header on top."""
    for index, cells in enumerate(_texts(grid.head(TITLE_ROWS_LOOKED_AT))):
        if sum(1 for cell in cells if cell.strip()) >= 2:
            return index
    return 0


def _texts(rows: pd.DataFrame) -> list[list[str]]:
    return [[_text(value) for value in row] for row in rows.itertuples(index=False)]


def _column_text(values: np.ndarray) -> tuple[list[str], list[int]]:
    """A column's cells as text, and the rows holding a whole number too large to be exact.
    Text-only columns (the usual export) go through untouched."""
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind == "string":
        return values.tolist(), []
    texts = [_text(value) for value in values.tolist()]
    inexact = [
        row
        for row, value in enumerate(values.tolist())
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT
    ]
    return texts, inexact


def _text(value: Any) -> str:
    """One cell as Excel shows it in General format, dates as ISO 8601."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(value)
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else f"{value:.15g}"
    return _moment(value)


def _moment(value: Any) -> str:
    if isinstance(value, datetime):
        if value.time() == time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return "" if value is None or value is pd.NaT else str(value)


def _inexact(column: str, text: str, sheet_row: int) -> BadRow:
    return BadRow(
        "inexact_number",
        column,
        f"{text} (sheet row {sheet_row}) is a number too large for Excel to hold exactly (it "
        "keeps 15 digits), so it may not be the value typed; format the column as Text in the "
        "export",
    )
