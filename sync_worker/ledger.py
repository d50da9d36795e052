"""The results ledger: one line per input row, appended and flushed as results arrive.

CSV or JSONL by extension. Never the key (every text cell is scrubbed) nor the payload (only its
SHA-256). A CSV cell that a spreadsheet would run as a formula is escaped with a leading quote.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO, Any, NamedTuple

from sync_worker.errors import ConfigError
from sync_worker.logs import redact
from sync_worker.private_files import create_private


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


COLUMNS = Where._fields + Result._fields  # SPEC section 8, in this order; later columns go last
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ERROR_MESSAGE = COLUMNS.index("error_message")
# Cells that may hold text from the input or the server (the others are ours: numbers, codes).
TEXT_CELLS = tuple(COLUMNS.index(c) for c in ("source_file", "interview_id", "contact_email",
                                              "error_code", "error_message"))  # fmt: skip


DEFAULT_PATH = "ledgers/sync-{run_id}.csv"
PLACEHOLDERS = ("{run_id}", "{date}")


def ledger_path(template: str | None, run_id: str, date: str) -> Path:
    """This run's ledger: `{run_id}` and `{date}` filled in. A ledger never mixes two runs: a path
    without either that already exists is refused; a `{date}` ledger of an earlier run that day
    gets this run's id added."""
    text = template or DEFAULT_PATH
    path = Path(text.replace("{run_id}", run_id).replace("{date}", date))
    if not path.exists() and not path.is_symlink():
        return path
    if "{run_id}" in text or "{date}" in text:
        return path.with_name(f"{path.stem}-{run_id}{path.suffix}")
    raise ConfigError(
        f"ledger {path} already exists: a ledger never mixes two runs; give a new --ledger "
        f"path, or put {{run_id}} or {{date}} in it (e.g. ledgers/sync-{{date}}-{{run_id}}.csv)"
    )


def escape_formula(value: str) -> str:
    """Keep a spreadsheet from running a cell: '=cmd()' is written as "'=cmd()"."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


class Ledger:
    """Open for the whole run; `write` buffers a line, `flush` puts what is buffered on disk."""

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            raise ConfigError(f"ledger {path}: use a .csv or .jsonl file name")
        self.path = path
        self._jsonl = suffix == ".jsonl"
        existed = path.exists() and path.stat().st_size > 0
        create_private(path)
        self._file: IO[str] = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        os.chmod(path, 0o600)
        self._csv = csv.writer(self._file, lineterminator="\n")
        if not self._jsonl and not existed:
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
            for index in TEXT_CELLS:
                value = values[index]
                if value and value[0] in FORMULA_STARTS:
                    values[index] = escape_formula(value)
            self._csv.writerow(values)
        self.lines += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Read a ledger back (for `report` and the tests)."""
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".jsonl":
            return [json.loads(line) for line in handle if line.strip()]
        return list(csv.DictReader(handle))
