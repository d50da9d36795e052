"""The results ledger: one line per input row, appended and flushed as results arrive.

CSV or JSONL by extension. Never the key (every text cell is scrubbed) nor the payload (only its
SHA-256). A CSV cell that a spreadsheet would run as a formula is escaped with a leading quote.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

from sync_worker.errors import ConfigError, InputError
from sync_worker.logs import redact
from sync_worker.settings.paths import check_writable, open_private, unwritable


class SettledColumns(Protocol):
    """Rows settled before any request, as columns (plan.model.SettledRows)."""

    @property
    def statuses(self) -> Sequence[str]: ...
    @property
    def codes(self) -> Sequence[str]: ...
    @property
    def messages(self) -> Sequence[str]: ...
    @property
    def hashes(self) -> Sequence[str]: ...
    @property
    def merges(self) -> Sequence[str]: ...


class Where(NamedTuple):
    """The input row a ledger line is about."""

    run_id: str
    source_file: str
    source_row: int
    interview_id: str  # as written in the file
    contact_email: str


class Result(NamedTuple):
    """What became of it."""

    status: str
    http_status: int | None = None
    error_code: str = ""
    error_message: str = ""
    attempts: int = 0
    merge: str = "off"
    payload_sha256: str = ""
    finished_at: str | None = None
    duration_ms: int | None = None
    sent_with: str = ""  # the interview whose request carried this row (SPEC section 7)


COLUMNS = Where._fields + Result._fields  # SPEC section 8, in this order; later columns go last
# What a ledger must hold to be read back (`report`): the columns of every release
REQUIRED = COLUMNS[: COLUMNS.index("duration_ms") + 1]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ERROR_MESSAGE = COLUMNS.index("error_message")
# Cells that may hold text from the input or the server (the others are ours: numbers, codes).
TEXT_CELLS = tuple(
    COLUMNS.index(c)
    for c in ("source_file", "interview_id", "contact_email", "error_code", "error_message")
)
# A cell the csv module would write other than as it is: quoted (a comma, quote or line end in
# it) or escaped (a formula start).
_QUOTED = (",", '"', "\r", "\n")
_NOT_PLAIN = re.compile(
    "[" + re.escape("".join(_QUOTED)) + "]|^[" + re.escape("".join(FORMULA_STARTS)) + "]"
)


# How every ledger begins: its CSV header, or its first JSON line's first key.
LEDGER_STARTS = (",".join(COLUMNS[:2]).encode(), f'{{"{COLUMNS[0]}": '.encode())

DEFAULT_PATH = "ledgers/sync-{run_id}.csv"
PLACEHOLDERS = ("{run_id}", "{date}")


def ledger_path(template: str | None, run_id: str, date: str) -> Path:
    """This run's ledger: `{run_id}` and `{date}` filled in. A ledger never mixes two runs: a path
    without either that already exists is refused; a `{date}` ledger of an earlier run that day
    gets this run's id added."""
    text = template or DEFAULT_PATH
    path = Path(text.replace("{run_id}", run_id).replace("{date}", date))
    if path.is_dir():
        raise unwritable(path, "ledger", "--ledger", IsADirectoryError(errno.EISDIR, "", text))
    if not path.exists() and not path.is_symlink():
        return path
    if fills_in(text):
        return _with_run_id(path, run_id)
    raise _exists(path)


def fills_in(template: str | None) -> bool:
    """Does the ledger path have a placeholder (so a name taken gets the run id added)?"""
    text = template or DEFAULT_PATH
    return any(placeholder in text for placeholder in PLACEHOLDERS)


def _with_run_id(path: Path, run_id: str) -> Path:
    return path.with_name(f"{path.stem}-{run_id}{path.suffix}")


def _exists(path: Path) -> ConfigError:
    return ConfigError(
        f"ledger {path} already exists: a ledger never mixes two runs; give a new --ledger "
        f"path, or put {{run_id}} or {{date}} in it (e.g. ledgers/sync-{{date}}-{{run_id}}.csv)"
    )


def escape_formula(value: str) -> str:
    """Keep a spreadsheet from running a cell: '=cmd()' is written as "'=cmd()"."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


class Ledger:
    """Open for the whole run; `write` buffers a line, `flush` puts what is buffered on disk."""

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        """`run_id`: given when the path came from a `{date}`/`{run_id}` template, so a name
        another run took while this one read and planned gets this run's id added."""
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            raise ConfigError(f"ledger {path}: use a .csv or .jsonl file name")
        if (path.exists() or path.is_symlink()) and run_id is not None:
            path = _with_run_id(path, run_id)  # another run made it since ledger_path chose it
        self.path = path
        self._jsonl = suffix == ".jsonl"
        check_writable(summary_path(path), "ledger summary", "--ledger")
        if path.exists() or path.is_symlink():  # made since ledger_path chose it
            raise _exists(path)
        fd = open_private(path, "ledger", "--ledger", os.O_WRONLY | os.O_APPEND)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8", newline="")
        try:
            os.fchmod(fd, 0o600)
        except OSError as exc:
            self._file.close()
            raise unwritable(path, "ledger", "--ledger", exc) from None
        self._csv = csv.writer(self._file, lineterminator="\n")
        if not self._jsonl:
            self._csv.writerow(COLUMNS)
        self.lines = 0

    def write(self, where: Where, result: Result) -> None:
        """One line: which row, and what became of it."""
        values: list[Any] = [*where, *result]
        if values[ERROR_MESSAGE]:
            values[ERROR_MESSAGE] = redact(values[ERROR_MESSAGE])  # the server's own words
        if self._jsonl:
            self._file.write(json.dumps(dict(zip(COLUMNS, values, strict=True))) + "\n")
        else:
            returns = False
            for index in TEXT_CELLS:
                value = values[index]
                if value:
                    if value[0] in FORMULA_STARTS:
                        values[index] = escape_formula(value)
                    returns = returns or "\r" in value
            if returns:  # quoted only by a writer whose line end holds it
                self._file.write(_crlf_line(values)[:-2] + "\n")
            else:
                self._csv.writerow(values)
        self.lines += 1

    def write_settled(
        self,
        run_id: str,
        where: Sequence[Sequence[Any]],
        rows: SettledColumns,
        sent_with: Sequence[str] | None = None,
    ) -> None:
        """Lines for rows settled before any request, given as columns (`where`: source files,
        source rows, interview ids, emails): no HTTP status, attempt or time. A nightly run
        writes a million of these: joined as text here, ~10x faster than a `write` each."""
        files, source_rows, ids, emails = where
        messages = [redact(message) if message else "" for message in rows.messages]
        carried = sent_with if sent_with is not None else [""] * len(source_rows)
        if self._jsonl:
            for file, row, interview_id, email, status, code, message, merge, digest, by in zip(
                files,
                source_rows,
                ids,
                emails,
                rows.statuses,
                rows.codes,
                messages,
                rows.merges,
                rows.hashes,
                carried,
                strict=True,
            ):
                self.write(
                    Where(run_id, file, row, interview_id, email),
                    Result(status, None, code, message, 0, merge, digest, sent_with=by),
                )
            return
        cells = [
            _csv_cells(column)
            for column in (files, ids, emails, rows.statuses, rows.codes, messages, rows.merges)
        ]
        lined = zip(*cells[:1], source_rows, *cells[1:], rows.hashes, carried, strict=True)
        self._file.write(
            "".join(
                [
                    f"{run_id},{file},{row},{interview},{email},{status},,{code},{text},0,{merge},"
                    f"{digest},,,{by}\n"
                    for file, row, interview, email, status, code, text, merge, digest, by in lined
                ]
            )
        )
        self.lines += len(source_rows)

    def write_results(
        self, run_id: str, where: Sequence[Sequence[Any]], results: Sequence[Result]
    ) -> None:
        """Lines for rows whose requests ended, as columns (`where`: the rows' places; `results`:
        each row's, the rows of one request sharing one object): the cells of each result made
        once, the places checked a column at a time: what `write` writes, a line each."""
        if self._jsonl:
            for file, row, interview_id, email, result in zip(*where, results, strict=True):
                self.write(Where(run_id, file, row, interview_id, email), result)
            return
        files, rows, ids, emails = where
        files, ids, emails = (_csv_cells(column) for column in (files, ids, emails))
        tails: dict[int, str] = {}  # id(result) -> its cells as text (the objects live in results)
        lines = []
        for file, row, interview, email, result in zip(
            files, rows, ids, emails, results, strict=True
        ):
            tail = tails.get(id(result))
            if tail is None:
                tail = tails[id(result)] = _result_cells(result)
            lines.append(f"{run_id},{file},{row},{interview},{email},{tail}\n")
        self._file.write("".join(lines))
        self.lines += len(lines)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _result_cells(result: Result) -> str:
    """A result's cells of a CSV line, as `write` writes them: the code and the message may
    hold the server's words; the others are ours (a status, a merge, a digest, a time, an id
    or a number), never quoted."""
    status, http, code, message, attempts, merge, digest, finished, took, carried = result
    cells = (
        status,
        "" if http is None else str(http),
        _csv_cell(code),
        _csv_cell(redact(message)) if message else "",
        str(attempts),
        merge,
        digest,
        finished or "",
        "" if took is None else str(took),
        carried,
    )
    return ",".join(cells)


def _csv_cells(values: Sequence[str]) -> Sequence[str]:
    """Text cells as the csv module writes them in a line (formulas escaped): a few scans of
    the whole column joined, and only where they find something, a look at each value."""
    text = "\0" + "\0".join(values)
    if not any(c in text for c in _QUOTED) and not any("\0" + c in text for c in FORMULA_STARTS):
        return values
    return [_csv_cell(value) for value in values]


def _csv_cell(value: str) -> str:
    if not value or not _NOT_PLAIN.search(value):
        return value
    return _crlf_line([escape_formula(value)])[:-2]


def _crlf_line(values: Sequence[Any]) -> str:
    """A CSV line ended by CR LF. The csv module quotes a cell holding any character of the
    line end it writes, and only those: with the ledger's LF, a cell holding a lone CR went
    unquoted, and every reader (`report` included) took it for the end of the line."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def summary_path(ledger_path: Path) -> Path:
    """`<ledger>.summary.json`, beside the ledger."""
    return ledger_path.with_name(ledger_path.name + ".summary.json")


class LoadedLedger(NamedTuple):
    rows: list[dict[str, Any]]
    cut_off: bool  # its last line was cut short (the run was killed writing it): left out


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Read a ledger back (for `report` and the tests)."""
    return load_ledger(path).rows


def load_ledger(path: Path) -> LoadedLedger:
    """A ledger's lines, by content (JSON lines, else CSV); InputError says what is wrong."""
    text = _ledger_text(path)
    cut = not text.endswith("\n")  # a whole line always ends with one
    if text.lstrip().startswith("{"):
        return _jsonl_rows(path, text, cut)
    return _csv_rows(path, text, cut)


def _not_a_ledger(path: Path, why: str) -> InputError:
    return InputError(
        f"ledger {path}: {why}; give report the .csv or .jsonl ledger that a run wrote "
        "(ledgers/sync-<run_id>.csv by default)"
    )


def _ledger_text(path: Path) -> str:
    if path.is_dir():
        raise _not_a_ledger(path, "it is a folder")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _not_a_ledger(path, "no such file") from None
    except OSError as exc:
        raise _not_a_ledger(path, f"cannot be read ({exc.strerror})") from None
    if b"\0" in data and not data.startswith(LEDGER_STARTS):  # in a ledger, a cell's own
        raise _not_a_ledger(path, "a binary file, not a ledger")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_a_ledger(path, "not UTF-8 text, so not a ledger") from None
    if not text.strip():
        raise _not_a_ledger(path, "the file is empty")
    return text


def _csv_rows(path: Path, text: str, cut: bool) -> LoadedLedger:
    try:
        records = [record for record in csv.reader(io.StringIO(text, newline="")) if record]
    except csv.Error as exc:
        raise _not_a_ledger(path, f"not a CSV file ({exc})") from None
    header, lines = records[0], records[1:]
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        found = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
        raise _not_a_ledger(path, f"no column {', '.join(missing[:3])} (its columns: {found})")
    rows: list[dict[str, Any]] = []
    for number, record in enumerate(lines, 2):
        if len(record) != len(header):
            if cut and number == len(records):
                return LoadedLedger(rows, cut_off=True)
            raise _not_a_ledger(
                path, f"record {number} has {len(record)} cells where the header has {len(header)}"
            )
        rows.append(dict(zip(header, record, strict=True)))
    return LoadedLedger(rows, cut_off=False)


def _jsonl_rows(path: Path, text: str, cut: bool) -> LoadedLedger:
    lines = text.split("\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            if cut and number == len(lines):
                return LoadedLedger(rows, cut_off=True)
            raise _not_a_ledger(path, f"line {number} is not JSON ({exc})") from None
        missing = [column for column in REQUIRED if not isinstance(row, dict) or column not in row]
        if missing:
            raise _not_a_ledger(path, f"line {number} is not a ledger line (no {missing[0]})")
        rows.append(row)
    return LoadedLedger(rows, cut_off=False)
