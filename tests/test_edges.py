"""The corpus of edges: every odd input, path, server and signal a demanding user tried.

Each case drives the real CLI the way the user did and asserts the exit code, one clear line on
stderr (never a traceback), and, where a ledger is due, exactly one ledger line per input row.
Keep adding to it: a new edge found is a new case here, in the section it belongs to.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import (
    API_KEY,
    Result,
    SandboxServer,
    read_ledger,
    run_cli,
    start_run,
    wait_for_arrivals,
    write_csv,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sync_worker.cli.main import main


def assert_one_line(result: Result, code: int, *words: str) -> str:
    """Exit `code`, no traceback, and exactly one non-empty line on stderr holding `words`."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_no_traceback(result: Result, code: int) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr


def assert_ledger_rows(path: Path, rows: int) -> list[dict[str, str]]:
    """One ledger line per input row: source rows 1..rows, each once."""
    ledger = read_ledger(path)
    assert sorted(int(line["source_row"]) for line in ledger) == list(range(1, rows + 1))
    return ledger


# -- inputs ------------------------------------------------------------------------------------

BAD_CONTEXTS = {  # source row -> contact_context that json.loads takes but strict JSON does not
    1: '{"a": "\\ud800"}',
    2: '{"a": NaN}',
    3: '{"a": Infinity}',
    4: '{"a": -Infinity}',
    5: '{"a": 1e400}',
}
BAD_CONTEXT_WORDS = {1: "lone surrogate", 2: "NaN", 3: "Infinity", 4: "-Infinity", 5: "1e400"}


def _strict_json(text: str) -> Any:
    """json.loads that takes only RFC 8259: no NaN, no Infinity, no number beyond a double."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    def finite(literal: str) -> float:
        if not math.isfinite(float(literal)):
            raise ValueError(f"not a finite number: {literal}")
        return float(literal)

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def _bad_contexts_csv(tmp_path: Path) -> Path:
    """Rows 1-5: contexts that are not strict JSON; 6: the plain text NaN; 7: good JSON."""
    rows = [[row, text] for row, text in BAD_CONTEXTS.items()]
    rows += [[6, "NaN"], [7, '{"title": "CTO"}']]
    return write_csv(tmp_path / "in.csv", ["interview_id", "contact_context"], rows)


def test_bad_json_contexts_are_invalid_rows_in_validate(tmp_path: Path) -> None:
    _bad_contexts_csv(tmp_path)
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 1)
    lines = result.stdout.splitlines()
    assert lines[-1] == "7 rows in 1 file(s): 2 requests to send, 5 invalid rows"
    for row, word in BAD_CONTEXT_WORDS.items():
        line = lines[row - 1]
        assert line.startswith(f"in.csv row {row}, column contact_context: not valid JSON"), line
        assert word in line and line.endswith("[invalid_json]"), line


def test_plan_never_prints_a_body_that_is_not_strict_json(tmp_path: Path) -> None:
    _bad_contexts_csv(tmp_path)
    result = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(result, 0)
    planned = [_strict_json(line) for line in result.stdout.splitlines()]
    assert [(p["interview_id"], p["body"]) for p in planned] == [
        (6, {"contact_context": "NaN"}),  # plain text NaN stays the text "NaN"
        (7, {"contact_context": {"title": "CTO"}}),
    ]


def test_run_sends_the_good_rows_and_settles_bad_json_as_invalid(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    _bad_contexts_csv(tmp_path)
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "ledger.csv",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 1)
    by_row = {
        int(line["source_row"]): line for line in assert_ledger_rows(tmp_path / "ledger.csv", 7)
    }
    for row, word in BAD_CONTEXT_WORDS.items():
        assert (by_row[row]["status"], by_row[row]["error_code"]) == ("invalid", "invalid_json")
        assert f"in.csv row {row}, column contact_context" in by_row[row]["error_message"]
        assert word in by_row[row]["error_message"]
    assert by_row[6]["status"] == by_row[7]["status"] == "ok"
    assert [r["status"] for r in sandbox.requests()] == [200, 200]  # nothing the API refuses
    assert (sandbox.interview(6) or {})["contact_context"] == "NaN"


def _parquet(path: Path, columns: dict[str, pa.Array]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


UNUSABLE_COLUMNS = {
    "list": pa.array([[1, 2], [3]]),
    "struct": pa.array([{"x": 1}, {"x": 2}]),
    "map": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
    "binary-not-utf8": pa.array([b"\xff\xfe", b"ok"]),
    "string-not-utf8": pa.array([b"\xff", b"ok"]).view(pa.string()),
}


@pytest.mark.parametrize("kind", list(UNUSABLE_COLUMNS), ids=list(UNUSABLE_COLUMNS))
def test_parquet_columns_not_used_do_not_matter(tmp_path: Path, kind: str) -> None:
    _parquet(
        tmp_path / "in.parquet",
        {
            "interview_id": pa.array(["1", "2"]),
            "objective": pa.array(["a", "b"]),
            "Extra": UNUSABLE_COLUMNS[kind],
        },
    )
    result = run_cli("validate", "in.parquet", cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert "2 requests to send, 0 invalid rows" in result.stdout


@pytest.mark.parametrize("kind", list(UNUSABLE_COLUMNS), ids=list(UNUSABLE_COLUMNS))
def test_parquet_column_used_that_is_not_text_is_one_line(tmp_path: Path, kind: str) -> None:
    _parquet(
        tmp_path / "in.parquet",
        {
            "interview_id": pa.array(["1", "2"]),
            "Details": UNUSABLE_COLUMNS[kind],
        },
    )
    (tmp_path / "sync.toml").write_text('[context_columns]\ndetails = "Details"\n')
    result = run_cli("validate", "in.parquet", "--config", "sync.toml", cwd=tmp_path)
    line = assert_one_line(result, 2, "in.parquet", "column 'Details'", "export it as")
    assert "not UTF-8" in line or "not text" in line


def test_parquet_binary_column_of_utf8_text_and_float_nan_are_read_as_text(
    tmp_path: Path,
) -> None:
    _parquet(
        tmp_path / "in.parquet",
        {
            "interview_id": pa.array([1.0, 2.0]),
            "objective": pa.array([float("nan"), 1.5]),
            "contact_name": pa.array(["José".encode(), b"Bo"]),
        },
    )
    result = run_cli("plan", "in.parquet", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(result, 0)
    bodies = [_strict_json(line)["body"] for line in result.stdout.splitlines()]
    assert bodies == [{"contact_name": "José"}, {"contact_name": "Bo", "objective": "1.5"}]


UNICODE_TEXT = "interview_id{d}contact_name{d}objective\r\n1{d}José Müller{d}Win, back\r\n"


@pytest.mark.parametrize(
    ("name", "encoding", "delimiter"),
    [
        ("in.txt", "utf-16", "\t"),  # Excel "Unicode text": UTF-16 LE with a BOM, tabs
        ("in.csv", "utf-16", "\t"),
        ("in.csv", "utf-16-be", "\t"),
        ("in.csv", "utf-16", ","),
        ("in.tsv", "utf-32", "\t"),
        ("in.csv", "utf-8-sig", "\t"),
    ],
    ids=[
        "excel-unicode-txt",
        "utf16-le-tab-csv",
        "utf16-be-tab-csv",
        "utf16-comma",
        "utf32-tsv",
        "utf8-bom-tab",
    ],
)
def test_files_with_a_byte_order_mark_are_read_in_their_encoding(
    tmp_path: Path, name: str, encoding: str, delimiter: str
) -> None:
    text = UNICODE_TEXT.format(d=delimiter)
    if delimiter == ",":
        text = text.replace("Win, back", '"Win, back"')
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    (tmp_path / name).write_bytes(data)
    result = run_cli("plan", name, "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(result, 0)
    [planned] = [_strict_json(line) for line in result.stdout.splitlines()]
    assert planned["body"] == {"contact_name": "José Müller", "objective": "Win, back"}


def test_utf16_gzip_with_configured_cp1252_still_follows_its_bom(tmp_path: Path) -> None:
    data = UNICODE_TEXT.format(d="\t").encode("utf-16")
    (tmp_path / "in.csv.gz").write_bytes(gzip.compress(data))
    (tmp_path / "sync.toml").write_text('[input]\nencoding = "cp1252"\n')
    result = run_cli("validate", "in.csv.gz", "--config", "sync.toml", cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert "1 requests to send" in result.stdout
    assert "read as utf-16, not as the configured cp1252" in result.stderr


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [("interview_id;contact_name;objective", ";"), ("interview_id|objective", "|")],
    ids=["semicolon", "pipe"],
)
def test_wrong_delimiter_suggests_the_delimiter(
    tmp_path: Path, header: str, delimiter: str
) -> None:
    (tmp_path / "in.csv").write_text(f"{header}\n1{delimiter}Ana{delimiter}x\n")
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    line = assert_one_line(result, 2, "in.csv", "[input] delimiter")
    assert f'delimiter = \\"{delimiter}\\"' in line  # JSON log line: quotes escaped
    assert "[columns] interview_id" not in line


def test_semicolon_file_with_the_delimiter_set_is_read(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("interview_id;objective\n1;Win, back\n")
    (tmp_path / "sync.toml").write_text('[input]\ndelimiter = ";"\n')
    result = run_cli("validate", "in.csv", "--config", "sync.toml", cwd=tmp_path)
    assert_no_traceback(result, 0)


@pytest.mark.parametrize(
    ("header", "config", "words"),
    [
        (
            "interview_id,Interview_ID ,objective",
            "",
            ["'interview_id'", "'Interview_ID '", "both give interview_id"],
        ),
        (
            "interview_id,objective,interview_id",
            "",
            ["1 'interview_id'", "3 'interview_id'", "both give interview_id"],
        ),
        (
            "interview_id,objective,Objective",
            "",
            ["'objective'", "'Objective'", "both give objective"],
        ),
        (
            "interview_id,Title,context.title",
            '[context_columns]\ntitle = "Title"\n',
            ["'Title'", "'context.title'", "both give context.title"],
        ),
        (
            "interview_id,Job,Role",
            '[context_columns]\ntitle = "Job"\nrole = "Job"\n',
            ["'Job'", "context.title", "context.role"],
        ),
        (
            "interview_id,Full Name",
            '[columns]\ncontact_name = "Full Name"\nobjective = "Full Name"\n',
            ["'Full Name'", "contact_name", "objective"],
        ),
    ],
    ids=[
        "case-and-space",
        "exact-duplicate",
        "duplicate-field",
        "context-column-and-mapped",
        "one-header-two-keys",
        "one-header-two-fields",
    ],
)
def test_ambiguous_headers_are_refused(
    tmp_path: Path, header: str, config: str, words: list[str]
) -> None:
    width = header.count(",") + 1
    (tmp_path / "in.csv").write_text(header + "\n" + ",".join(["1"] * width) + "\n")
    (tmp_path / "sync.toml").write_text(config)
    result = run_cli("validate", "in.csv", "--config", "sync.toml", cwd=tmp_path)
    assert_one_line(result, 2, "in.csv", *words)


def test_a_canonical_header_is_used_as_it_is_over_the_mapped_one(tmp_path: Path) -> None:
    """SPEC 5: canonical columns are used as-is when the file has them; the mapping is for files
    without them. Not silent: a warning names the mapped column left aside."""
    (tmp_path / "in.csv").write_text("interview_id,Record ID,objective\n1,2,Win\n")
    (tmp_path / "sync.toml").write_text('[columns]\ninterview_id = "Record ID"\n')
    result = run_cli("plan", "in.csv", "--config", "sync.toml", cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert json.loads(result.stdout)["interview_id"] == 1
    assert "'Record ID' for interview_id is ignored" in result.event("input_warning")["message"]


def test_duplicate_headers_of_unused_columns_do_not_matter(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("interview_id,Notes,notes ,objective\n1,a,b,x\n")
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=300)
    | st.lists(
        st.sampled_from(list(b'interview_id,objective\n\r\t;"{}\\ \x00\xef\xbb\xbf\xff\xfe1')),
        max_size=60,
    ).map(bytes),
    suffix=st.sampled_from([".csv", ".csv.gz", ".tsv"]),
    compress=st.booleans(),
)
@example(data=b"\n\r\x01", suffix=".csv", compress=False)  # a lone CR in a trailing line
def test_random_bytes_never_make_a_traceback(data: bytes, suffix: str, compress: bool) -> None:
    """Whatever the bytes, `validate` ends with 0, 1 or 2, never an exception."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(gzip.compress(data) if compress and suffix.endswith(".gz") else data)
        result = CliRunner().invoke(main, ["validate", str(path), "--config", os.devnull])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 1, 2), result.output


@pytest.mark.parametrize(
    ("name", "data", "code", "words"),
    [
        ("in.csv", b"", 2, ["in.csv: file is empty"]),
        ("in.csv", b"\xef\xbb\xbf", 2, ["in.csv: file is empty"]),
        ("in.csv", b"\n\n\n", 2, ["in.csv: file is empty"]),
        ("in.csv", b"\xff\xfe", 2, ["in.csv: file is empty"]),
        ("in.csv", b'interview_id,objective\n1,"x\n2,y\n', 2, ["in.csv: row 1", "never closed"]),
        (
            "in.csv",
            b"interview_id,objective\n1,\x81\x8d\n",
            2,
            ["in.csv", "neither UTF-8 nor cp1252", "[input] encoding"],
        ),
        (
            "in.csv",
            "interview_id,objective\n1,x\n".encode("utf-16-le"),
            2,
            ["in.csv", "NUL bytes", "utf-16-le"],
        ),
        (
            "in.csv.gz",
            b"interview_id,objective\n1,x\n",
            2,
            ["in.csv.gz", "not a gzip file", "drop the .gz"],
        ),
        (
            "in.csv.gz",
            gzip.compress(b"interview_id,objective\n" + b"1,x\n" * 1000)[:60],
            2,
            ["in.csv.gz"],
        ),
        ("in.parquet", b"interview_id,objective\n1,x\n", 2, ["in.parquet: cannot read as Parquet"]),
    ],
    ids=[
        "empty",
        "only-bom",
        "blank-lines",
        "only-utf16-bom",
        "unterminated-quote",
        "neither-utf8-nor-cp1252",
        "utf16-without-bom",
        "gz-not-gzip",
        "gz-truncated",
        "parquet-that-is-csv",
    ],
)
def test_unusable_files_are_one_line(
    tmp_path: Path, name: str, data: bytes, code: int, words: list[str]
) -> None:
    (tmp_path / name).write_bytes(data)
    result = run_cli("validate", name, cwd=tmp_path)
    assert_one_line(result, code, *words)


def test_header_only_file_is_zero_rows(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("interview_id,objective\n")
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert "0 rows in 1 file(s)" in result.stdout


def test_blank_lines_before_the_header_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('\n\ninterview_id,objective\n\n1,x\n2,"y\n')
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_one_line(result, 2, "in.csv: row 2: a quote opened there is never closed")


def test_quoted_newline_in_the_id_is_an_invalid_row(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('interview_id,objective\n"1\n2",x\n3,y\n')
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 1)
    assert "in.csv row 1, column interview_id: interview_id '1\\n2'" in result.stdout
    assert "2 rows in 1 file(s): 1 requests to send, 1 invalid rows" in result.stdout


def test_a_cell_of_megabytes_is_read_whole(tmp_path: Path) -> None:
    long_text = "x" * 3_000_000  # three of Arrow's default 1 MiB blocks
    (tmp_path / "in.csv").write_text(f'interview_id,contact_context\n1,"{long_text}"\n2,ok\n')
    result = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(result, 0)
    bodies = [_strict_json(line)["body"] for line in result.stdout.splitlines()]
    assert bodies == [{"contact_context": long_text}, {"contact_context": "ok"}]


def test_a_column_named_context_dot_alone_is_named_not_dropped_silently(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("interview_id,context.,objective\n1,a,x\n")
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 0)
    [warning] = [e for e in result.events() if e["event"] == "input_warning"]
    assert "column 'context.' names no context key" in warning["message"]


def _notes_parquet(path: Path, notes: str) -> Path:
    return _parquet(
        path,
        {
            "contact_email": pa.array(["a@x.com"]),
            "notes": pa.array([notes]),
            "tags": pa.array([[1, 2]]),  # a list column the notes file does not use
        },
    )


def test_existing_notes_parquet_with_a_list_column_is_read(tmp_path: Path) -> None:
    _notes_parquet(tmp_path / "notes.parquet", "old")
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.com", "new"]],
    )
    result = run_cli(
        "plan",
        "in.csv",
        "--existing-notes",
        "notes.parquet",
        "--state",
        "state.sqlite",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    [planned] = [_strict_json(line) for line in result.stdout.splitlines()]
    assert planned["body"] == {"contact_context": "old\n\nnew"}


def test_an_existing_notes_file_with_two_notes_columns_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("contact_email,Notes,notes \na@x.com,1,2\n")
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.com", "new"]],
    )
    result = run_cli("validate", "in.csv", "--existing-notes", "notes.csv", cwd=tmp_path)
    assert_one_line(result, 2, "notes.csv", "'Notes'", "'notes '", "both give notes")


def test_a_notes_row_that_is_not_strict_json_is_named_and_left_out(tmp_path: Path) -> None:
    """SPEC 6: an unusable notes row is reported with file, row and reason; the others go on."""
    _notes_parquet(tmp_path / "notes.parquet", '{"a": "\\ud800"}')
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.com", "new"]],
    )
    result = run_cli("validate", "in.csv", "--existing-notes", "notes.parquet", cwd=tmp_path)
    assert_no_traceback(result, 1)
    assert "notes.parquet row 1: column notes: not valid JSON (lone surrogate" in result.stdout


def test_existing_notes_id_in_unicode_digits_is_not_an_id(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("interview_id,notes\n\u00b2,old\n")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_context"], [[2, "new"]])
    result = run_cli(
        "plan", "in.csv", "--existing-notes", "notes.csv", "--state", "state.sqlite", cwd=tmp_path
    )
    assert_no_traceback(result, 0)
    [planned] = [_strict_json(line) for line in result.stdout.splitlines()]
    assert planned["body"] == {"contact_context": "new"}


# -- config, key and numbers -------------------------------------------------------------------

# This section's own imports: each section of the corpus is merged on its own.

from conftest import cli_env  # noqa: E402

NOWHERE = "http://127.0.0.1:9/api/v1"  # nothing listens: a refused run must not get this far
PASTED = "sk-live-9d8c7b6a5f4e3d2c"  # a key pasted where it does not belong
KEYS = "KEYS/"  # stands for the directory of key files, kept out of tmp_path (its files are
# checked for the key after each test)
CONFIG_FILES: dict[str, bytes] = {
    "top-level-tier": b'tier = "growth"\n[api]\n',
    "tier-and-period": b'[api]\ntier = "enterprise"\nrate_period_s = 1\n',
    "period-alone": b"[api]\nrate_period_s = 10\n",
    "timeout-inf": b"[api]\ntimeout_s = inf\n",
    "period-nan": b"[api]\nrate_period_s = nan\n",
    "retries-negative": b"[api]\nmax_retries = -1\n",
    "timeout-zero": b"[api]\ntimeout_s = 0\n",
    "http-base-url": b'[api]\nbase_url = "http://api.example.com/v1"\n',
    "key-in-env-name": f'[api]\napi_key_env = "{PASTED}"\n'.encode(),
    "not-utf8": b'[api]\ntier = "gr\xf6wth"\n',
    "column-not-text": b"[columns]\ninterview_id = 7\n",
}
KEY_FILES: dict[str, bytes] = {
    "two-lines": f"{API_KEY}\nsecond-line\n".encode(),
    "inner-space": f"{API_KEY[:6]} {API_KEY[6:]}".encode(),
    "control-char": f"{API_KEY}\x07".encode(),
    "zero-width-space": f"\u200b{API_KEY}".encode(),
    "not-ascii": f"{API_KEY}\u00e9".encode(),
    "not-utf8": b"\x80\x81" + API_KEY.encode(),
}


def _setup(tmp_path: Path, keys: Path) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    for name, content in CONFIG_FILES.items():
        (tmp_path / name).write_bytes(content)
    for name, content in KEY_FILES.items():
        (keys / name).write_bytes(content)
    (tmp_path / "a-directory").mkdir()


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        # 1. the key: one line of printable ASCII, named by file or variable, never echoed
        (["--api-key-file", "KEYS/two-lines"], {}, ["two-lines:", "line break"]),
        (["--api-key-file", "KEYS/inner-space"], {}, ["inner-space:", "space"]),
        (["--api-key-file", "KEYS/control-char"], {}, ["control-char:", "control"]),
        (["--api-key-file", "KEYS/zero-width-space"], {}, ["zero-width-space", "invisible"]),
        (["--api-key-file", "KEYS/not-ascii"], {}, ["not-ascii:", "ASCII"]),
        (["--api-key-file", "KEYS/not-utf8"], {}, ["not-utf8:", "not UTF-8"]),
        (["--api-key-file", "a-directory"], {}, ["--api-key-file", "directory"]),
        (["--api-key-file", "missing-file"], {}, ["--api-key-file missing-file: cannot read"]),
        ([], {"HINDSIGHT_API_KEY": f"{API_KEY}\nx"}, ["variable HINDSIGHT_API_KEY", "line break"]),
        # 5. a key pasted where a variable's name goes
        (["--api-key-env", PASTED], {}, ["--api-key-env takes the NAME", "not the key"]),
        (["--config", "key-in-env-name"], {}, ["key-in-env-name: [api] api_key_env", "NAME"]),
        # 2. numbers: finite and positive, naming the option or the file and key
        (["--rate-period", "inf"], {}, ["--rate-period", "not a finite number"]),
        (["--rate-period", "nan"], {}, ["--rate-period", "not a finite number"]),
        (["--max-duration", "nan"], {}, ["--max-duration", "not a finite number"]),
        (["--max-duration", "inf"], {}, ["--max-duration", "not a finite number"]),
        (["--config", "timeout-inf"], {}, ["timeout-inf: [api] timeout_s", "finite", "inf"]),
        (["--config", "period-nan"], {}, ["period-nan: [api] rate_period_s", "finite", "nan"]),
        (["--config", "retries-negative"], {}, ["[api] max_retries", "0 or more"]),
        (["--config", "timeout-zero"], {}, ["[api] timeout_s", "above 0"]),
        (["--rate-limit", "0"], {}, ["--rate-limit", "0 is not in the range"]),
        (["--concurrency", "0"], {}, ["--concurrency", "0 is not in the range"]),
        (["--max-rows", "-1"], {}, ["--max-rows", "-1 is not in the range"]),
        # 3. where a base URL came from; a key outside its section
        (["--config", "http-base-url"], {}, ["http-base-url: [api] base_url", "use https"]),
        ([], {"HINDSIGHT_BASE_URL": "http://10.1.2.3/api"}, ["HINDSIGHT_BASE_URL", "use https"]),
        (["--base-url", "http://api.example.com"], {}, ["--base-url", "use https"]),
        ([], {"HINDSIGHT_BASE_URL": "garbage"}, ["HINDSIGHT_BASE_URL", "not an http(s) URL"]),
        (["--base-url", "http://[::1"], {}, ["--base-url", "not a valid URL"]),
        (["--base-url", "https://u:pw@x.example"], {}, ["--base-url", "user or password"]),
        (["--config", "top-level-tier"], {}, ["top-level-tier: key tier must be under [api]"]),
        # 4. a tier is per 60 s: a tier with another period and no rate limit is ambiguous
        (
            ["--config", "tier-and-period"],
            {},
            ["tier-and-period: [api] rate_period_s = 1", "[api] tier = enterprise", "ambiguous"],
        ),
        (
            ["--tier", "growth", "--rate-period", "1"],
            {},
            ["--rate-period 1 with --tier growth", "ambiguous", "--rate-limit"],
        ),
        (["--config", "period-alone"], {}, ["[api] rate_period_s = 10", "default tier"]),
        # 7. config files that cannot be used
        (["--config", "a-directory"], {}, ["--config", "directory"]),
        (["--config", "not-utf8"], {}, ["not-utf8: the config file is not UTF-8", "0xf6"]),
        (["--config", "column-not-text"], {}, ["column-not-text: [columns] interview_id"]),
        (["--tier", "platinum"], {}, ["--tier", "platinum"]),
    ],
    ids=[
        "key-two-lines",
        "key-inner-space",
        "key-control-char",
        "key-zero-width",
        "key-not-ascii",
        "key-not-utf8",
        "key-file-directory",
        "key-file-missing",
        "env-key-line-break",
        "key-as-env-name-flag",
        "key-as-env-name-file",
        "rate-period-inf",
        "rate-period-nan",
        "max-duration-nan",
        "max-duration-inf",
        "file-timeout-inf",
        "file-period-nan",
        "file-retries-negative",
        "file-timeout-zero",
        "rate-limit-0",
        "concurrency-0",
        "max-rows-negative",
        "http-url-file",
        "http-url-env",
        "http-url-flag",
        "garbage-url-env",
        "broken-ipv6-url",
        "url-with-password",
        "top-level-key",
        "file-tier-and-period",
        "flag-tier-and-period",
        "period-with-default-tier",
        "config-directory",
        "config-not-utf8",
        "config-column-not-text",
        "unknown-tier",
    ],
)
def test_config_key_and_numbers_refused_before_sending(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    args: list[str],
    env: dict[str, str],
    words: list[str],
) -> None:
    keys = tmp_path_factory.mktemp("keys")
    _setup(tmp_path, keys)
    args = [arg.replace(KEYS, f"{keys}/") for arg in args]
    url_case = "--base-url" in args or "HINDSIGHT_BASE_URL" in env or "http-base-url" in args
    nowhere = [] if url_case else ["--base-url", NOWHERE]  # a case let through stays local
    result = run_cli("run", "in.csv", *nowhere, *args, cwd=tmp_path, env=cli_env(**env))
    line = assert_one_line(result, 2, *words)
    for secret in (API_KEY[:12], API_KEY[-8:], PASTED[-8:], "second-line"):
        assert secret not in line  # run_cli checks for the whole key; this, for parts of keys
    assert not (tmp_path / "ledgers").exists()


def _run_ok(tmp_path: Path, server: SandboxServer, *args: str, **env: str) -> dict[str, object]:
    """A run that must succeed: exit 0, one ledger line, no traceback; its summary."""
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        *args,
        cwd=tmp_path,
        env=cli_env(**env),
    )
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "l.csv", 1)
    summary: dict[str, object] = json.loads((tmp_path / "l.csv.summary.json").read_text())
    return summary


@pytest.mark.parametrize(
    "key_text",
    [f"\ufeff{API_KEY}\r\n", f"  {API_KEY}\n\n", API_KEY],
    ids=["notepad-bom-crlf", "surrounding-blank", "bare"],
)
def test_key_file_with_bom_and_blank_lines_works(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sandbox: SandboxServer,
    key_text: str,
) -> None:
    key_file = tmp_path_factory.mktemp("keys") / "key.txt"
    key_file.write_text(key_text, encoding="utf-8", newline="")
    _run_ok(tmp_path, sandbox, "--api-key-file", str(key_file), HINDSIGHT_API_KEY="")
    assert sandbox.interview(1) is not None  # the sandbox accepts only API_KEY itself


def test_key_variable_with_bom_and_newline_works(tmp_path: Path, sandbox: SandboxServer) -> None:
    _run_ok(tmp_path, sandbox, HINDSIGHT_API_KEY=f"\ufeff{API_KEY}\n")


def test_one_request_has_no_rate_to_report(tmp_path: Path, sandbox: SandboxServer) -> None:
    summary = _run_ok(tmp_path, sandbox, "--rate-limit", "20", "--rate-period", "1")
    assert summary["requests_sent"] == 1
    assert summary["effective_requests_per_minute"] is None  # not 30,000 a minute, nor 20


@pytest.mark.timing
def test_a_short_paced_run_reports_the_rate_it_was_paced_at(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """21 requests at 20 a second span 20 intervals: the rate reads about 1,200 a minute (the
    bucket lets its first two go together), not 21 over a whole rate period."""
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[i, "x"] for i in range(1, 22)])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        "--rate-limit",
        "20",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    per_minute = json.loads((tmp_path / "l.csv.summary.json").read_text())[
        "effective_requests_per_minute"
    ]
    assert 0.9 * 1200 <= per_minute <= 1.1 * 1200, per_minute


def test_base_url_with_trailing_slash_works(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url + "/",
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        "--rate-limit",
        "20",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    assert [line["status"] for line in assert_ledger_rows(tmp_path / "l.csv", 1)] == ["ok"]


@pytest.mark.parametrize(
    ("config", "args", "limit", "period"),
    [
        ("[api]\nrate_limit = 5\nrate_period_s = 1\n", ["--tier", "enterprise"], 1000, 60.0),
        ('[api]\ntier = "growth"\nrate_period_s = 1\n', ["--tier", "ENTERPRISE"], 1000, 60.0),
        ("\ufeff[api]\n", [], 300, 60.0),
        ("", [], 300, 60.0),
    ],
    ids=["flag-tier-clears-file-rate", "flag-tier-upper-case", "config-with-bom", "config-empty"],
)
def test_tier_and_config_files_that_work(
    tmp_path: Path, config: str, args: list[str], limit: int, period: float
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    (tmp_path / "sync.toml").write_text(config, encoding="utf-8")
    result = run_cli(
        "run",
        "in.csv",
        "--config",
        "sync.toml",
        "--dry-run",
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        *args,
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "l.csv", 1)
    started = result.event("run_started")
    assert (started["limit"], started["rate_period_s"]) == (limit, period)


# -- paths, state, ledger and report -----------------------------------------------------------

# Each section imports what it uses, so the sections merge apart.
import sqlite3  # noqa: E402

import pytest  # noqa: E402
from conftest import start_sandbox  # noqa: E402

from sync_worker.record.ledger import COLUMNS  # noqa: E402
from sync_worker.store.state import SCHEMA, State  # noqa: E402

NO_KEY = {"HINDSIGHT_API_KEY": ""}


def _rows(folder: Path, count: int, tag: str = "N", name: str = "in.csv") -> Path:
    return write_csv(
        folder / name,
        ["interview_id", "contact_name"],
        [[i, f"{tag}{i}"] for i in range(1, count + 1)],
    )


def _run_args(
    server: SandboxServer, state: str = "state.sqlite", ledger: str = "ledger.csv", *args: str
) -> list[str]:
    return [
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        state,
        "--ledger",
        ledger,
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
    ]


def test_dry_run_after_a_real_run_changes_nothing(tmp_path: Path, sandbox: SandboxServer) -> None:
    """It crashed (`attempt to write a readonly database`, a ledger with only its header)."""
    _rows(tmp_path, 5)
    assert run_cli(*_run_args(sandbox), cwd=tmp_path).code == 0
    state = tmp_path / "state.sqlite"
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    _rows(tmp_path, 5, tag="Changed")
    dry = run_cli(
        *_run_args(sandbox, "state.sqlite", "dry.csv", "--dry-run"),
        cwd=tmp_path,
        env=cli_env(**NO_KEY),
    )
    assert_no_traceback(dry, 0)
    assert {line["status"] for line in assert_ledger_rows(tmp_path / "dry.csv", 5)} == {"dry_run"}
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before
    assert len(sandbox.requests()) == 5  # the real run's only


def _file_in_the_way(folder: Path) -> None:
    (folder / "blocker").write_text("a file, not a folder\n")


def _folders(folder: Path) -> None:
    (folder / "state-dir").mkdir()
    (folder / "ledger-dir.csv").mkdir()
    (folder / "ledger.csv.summary.json").mkdir()


@pytest.mark.parametrize(
    ("make", "state", "ledger", "words"),
    [
        (_file_in_the_way, "blocker/state.sqlite", "ledger.csv", ("blocker is a file", "--state")),
        (_folders, "state-dir", "ledger2.csv", ("state database state-dir", "it is a folder")),
        (_file_in_the_way, "state.sqlite", "blocker/l.csv", ("blocker is a file", "--ledger")),
        (_folders, "state.sqlite", "ledger-dir.csv", ("ledger ledger-dir.csv", "it is a folder")),
        (_folders, "state.sqlite", "ledger.csv", ("ledger.csv.summary.json", "it is a folder")),
        (_folders, "state.sqlite", "in.csv", ("ledger in.csv already exists", "new --ledger path")),
    ],
    ids=[
        "state-under-a-file",
        "state-is-a-folder",
        "ledger-under-a-file",
        "ledger-is-a-folder",
        "summary-is-a-folder",
        "ledger-is-the-input",
    ],
)
def test_a_path_that_cannot_be_written_stops_before_sending(
    tmp_path: Path,
    sandbox: SandboxServer,
    make: Callable[[Path], None],
    state: str,
    ledger: str,
    words: tuple[str, ...],
) -> None:
    before = _rows(tmp_path, 3).read_bytes()
    make(tmp_path)
    result = run_cli(*_run_args(sandbox, state, ledger), cwd=tmp_path)
    assert_one_line(result, 2, *words)
    assert sandbox.requests() == []
    assert (tmp_path / "in.csv").read_bytes() == before


JSONL_LINE = (json.dumps(dict.fromkeys(COLUMNS, "")) + "\n").encode()


def _ledger_text(rows: int) -> str:
    lines = [",".join(COLUMNS)]
    lines += [f"r1,in.csv,{row},{row},,ok,200,,,1,off,,," for row in range(1, rows + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("in.csv", b"interview_id,contact_name\n1,Ana\n", "no column run_id"),
        ("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file"),
        ("ledger.jsonl", JSONL_LINE + b"{oops\n" + JSONL_LINE, "line 2 is not JSON"),
        ("other.jsonl", b'{"id": 1}\n', "line 1 is not a ledger line (no run_id)"),
        ("empty.csv", b"", "the file is empty"),
        ("missing.csv", None, "no such file"),
        ("folder.csv", "folder", "it is a folder"),
    ],
    ids=["another-csv", "binary", "jsonl-bad-line", "other-jsonl", "empty", "missing", "folder"],
)
def test_report_on_what_is_not_a_ledger(
    tmp_path: Path, name: str, content: bytes | str | None, words: str
) -> None:
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content == "folder":
        (tmp_path / name).mkdir()
    assert_one_line(run_cli("report", name, cwd=tmp_path), 2, name, words)


def test_report_reads_past_a_corrupt_summary_and_a_cut_line(tmp_path: Path) -> None:
    (tmp_path / "ledger.csv").write_text(_ledger_text(3) + "r1,in.csv,4,4,,o")  # killed mid-line
    (tmp_path / "ledger.csv.summary.json").write_text('{"requests_sent": 3, "retr')
    result = run_cli("report", "ledger.csv", cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert result.stdout.startswith("ledger ledger.csv: 3 rows")
    assert "last line was cut short" in result.stdout
    assert "summary ledger.csv.summary.json: cannot be read" in result.stdout


def test_sandbox_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    first = start_sandbox()
    try:
        port = first.root.rsplit(":", 1)[1]
        result = run_cli("sandbox", "--port", port, cwd=tmp_path, timeout=20)
        assert_one_line(result, 2, f"port {port}", "in use", "--port")
    finally:
        first.stop()


def test_sandbox_stopped_by_sigint_or_sigterm_exits_0() -> None:
    """Stopping it is its normal end (SIGTERM exited 1 through aiohttp's GracefulExit)."""
    servers = {sig: start_sandbox() for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, server in servers.items():
        server.process.send_signal(sig)
    for sig, server in servers.items():
        _out, err = server.process.communicate(timeout=10)
        assert server.process.returncode == 0, (sig.name, err)
        assert "Traceback" not in err


def test_a_symlink_to_the_state_meets_the_running_one(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Two runs through a symlink once sent 139 of 200 rows twice: each name had its own lock
    file. The lock is on the database file now, and a killed holder never blocks the next run."""
    _rows(tmp_path, 40)
    slow = ("--rate-limit", "2")  # 20 s of sending: still running however slow the machine
    first = start_run(tmp_path, _run_args(sandbox, "state.sqlite", "first.csv", *slow))
    try:
        wait_for_arrivals(sandbox, 2)
        (tmp_path / "alias.sqlite").symlink_to("state.sqlite")
        second = run_cli(*_run_args(sandbox, "alias.sqlite", "second.csv"), cwd=tmp_path)
        assert_one_line(second, 75, "another run holds", f"pid {first.pid}", "run 20")
    finally:
        first.kill()
        first.wait()
    third = run_cli(*_run_args(sandbox, "alias.sqlite", "third.csv"), cwd=tmp_path)
    assert_no_traceback(third, 0)
    assert_ledger_rows(tmp_path / "third.csv", 40)
    sent = Counter(r["id"] for r in sandbox.requests())
    assert set(sent) == {str(i) for i in range(1, 41)}
    assert sum(sent.values()) - 40 <= 2  # at most what was in flight at the kill sent again


def test_a_hard_linked_state_is_refused(tmp_path: Path, sandbox: SandboxServer) -> None:
    """SQLite names its write-ahead log after the path: after a killed run, a run through a
    second name missed the first name's log and its writes corrupted the file (`database disk
    image is malformed`). A run while another holds the file through either name gets 75."""
    _rows(tmp_path, 3)
    State.open(tmp_path / "state.sqlite").close()
    os.link(tmp_path / "state.sqlite", tmp_path / "hard.sqlite")
    result = run_cli(*_run_args(sandbox, "hard.sqlite"), cwd=tmp_path)
    assert_one_line(result, 2, "hard.sqlite", "2 names (hard links)", "symlink")
    assert sandbox.requests() == []


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _text(path: Path) -> None:
    path.write_text("interview_id,contact_name\n1,Ana\n")


def _truncated(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.executemany(
        "INSERT INTO sent VALUES (?, ?, 'c', 'r', 't')", [(i, "h" * 64) for i in range(1, 3001)]
    )
    db.commit()
    db.close()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    db.close()


def _future(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("PRAGMA user_version = 99")
    db.close()


BROKEN_STATES = pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            _garbage,
            (
                "mv state.sqlite state.sqlite.bad",
                "unchanged rows are sent again",
                "if --state names the wrong file",
            ),
        ),
        (_text, ("mv state.sqlite state.sqlite.bad", "file is not a database")),
        (_truncated, ("mv state.sqlite state.sqlite.bad", "malformed")),
        (_foreign, ("another program's SQLite database", "invoices", "--state")),
        (_future, ("written by a newer sync-worker", "schema 99")),
    ],
    ids=["garbage", "text-file", "truncated-sqlite", "unrelated-sqlite", "future-schema"],
)


@BROKEN_STATES
def test_a_state_that_is_not_one_stops_run_with_2(
    tmp_path: Path, sandbox: SandboxServer, make: Callable[[Path], None], words: tuple[str, ...]
) -> None:
    _rows(tmp_path, 3)
    make(tmp_path / "state.sqlite")
    before = (tmp_path / "state.sqlite").read_bytes()
    assert_one_line(run_cli(*_run_args(sandbox), cwd=tmp_path), 2, "state.sqlite", *words)
    assert sandbox.requests() == []
    assert (tmp_path / "state.sqlite").read_bytes() == before


@BROKEN_STATES
def test_a_state_that_is_not_one_stops_plan(
    tmp_path: Path, make: Callable[[Path], None], words: tuple[str, ...]
) -> None:
    _rows(tmp_path, 3)
    make(tmp_path / "state.sqlite")
    plan = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_one_line(plan, 2, "state.sqlite", *words)


def test_plan_refuses_a_broken_state_that_validate_ignores(tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    _garbage(tmp_path / "state.sqlite")
    plan = run_cli("plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_one_line(plan, 2, "state.sqlite", "mv state.sqlite state.sqlite.bad")
    validate = run_cli("validate", "in.csv", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(validate, 0)  # validate checks the files and ignores the state
    assert "3 rows in 1 file(s)" in validate.stdout


HOLD_EXCLUSIVE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.executescript(sys.argv[2])
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(30)
"""


def test_a_state_locked_by_another_program_is_75(tmp_path: Path, sandbox: SandboxServer) -> None:
    """An sqlite3 shell or a backup in an exclusive transaction (a rollback-journal file, so even
    reading waits): a short wait, then one line, not a hang or a traceback."""
    _rows(tmp_path, 3)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_EXCLUSIVE, "state.sqlite", SCHEMA],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_cli(*_run_args(sandbox), cwd=tmp_path)
        assert_one_line(result, 75, "state.sqlite", "locked by another program")
    finally:
        holder.kill()
        holder.wait()
    assert sandbox.requests() == []


def test_new_folders_odd_names_and_an_upper_case_suffix(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Folders that do not exist yet are made; '?', '#' and '%' in the state's name once made
    `plan` read another file."""
    _rows(tmp_path, 4)
    state, ledger = "new state/st?a#b%20.sqlite", "new/ledgers/RUN.CSV"
    assert_no_traceback(run_cli(*_run_args(sandbox, state, ledger), cwd=tmp_path), 0)
    assert_ledger_rows(tmp_path / ledger, 4)
    assert (tmp_path / state).is_file()
    plan = run_cli(
        "plan",
        "in.csv",
        "--state",
        state,
        "--base-url",
        sandbox.base_url,
        cwd=tmp_path,
        env=cli_env(**NO_KEY),
    )
    assert_no_traceback(plan, 0)
    assert plan.stdout == ""  # everything was sent: nothing left to plan
    report = run_cli("report", ledger, cwd=tmp_path)
    assert_no_traceback(report, 0)
    assert "  ok                        4" in report.stdout.splitlines()


# -- the server: outages, garbage, stops -------------------------------------------------------

# -- the run: one ledger a run, deadlines, recording -------------------------------------------


def _run(tmp_path: Path, server: SandboxServer, *args: str) -> Result:
    return run_cli(
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
        cwd=tmp_path,
    )


def test_a_ledger_path_is_never_reused(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    assert _run(tmp_path, sandbox, "--ledger", "night.csv").code == 0
    before = (tmp_path / "night.csv").read_bytes()
    again = _run(tmp_path, sandbox, "--ledger", "night.csv", "--force")
    assert_one_line(again, 2, "night.csv already exists", "{run_id}")
    assert (tmp_path / "night.csv").read_bytes() == before  # not one line of a second run
    assert len(sandbox.requests()) == 2  # refused before anything was sent


def test_run_id_and_date_are_filled_in(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    first = _run(tmp_path, sandbox, "--ledger", "l/{date}.csv")
    second = _run(tmp_path, sandbox, "--ledger", "l/{date}.csv", "--force")
    third = _run(tmp_path, sandbox, "--ledger", "l/x-{run_id}.jsonl", "--force")
    assert (first.code, second.code, third.code) == (0, 0, 0)
    day = first.event("run_started")["timestamp"][:10]
    second_id = second.event("run_started")["run_id"]
    assert first.event("run_started")["ledger"] == f"l/{day}.csv"
    assert second.event("run_started")["ledger"] == f"l/{day}-{second_id}.csv"  # same day: own
    third_id = third.event("run_started")["run_id"]
    assert sorted(p.name for p in (tmp_path / "l").iterdir() if "summary" not in p.name) == sorted(
        [f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"]
    )
    for name in (f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"):
        assert_ledger_rows(tmp_path / "l" / name, 1)


def test_max_duration_reached_with_every_row_done_exits_0(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "1000", "--rate-period", "1", "--latency-ms", "2500")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = _run(tmp_path, server, "--ledger", "l.csv", "--max-duration", "0.015")  # 0.9 s
    assert_no_traceback(result, 0)  # the deadline came while the only row was in flight
    assert [x["status"] for x in assert_ledger_rows(tmp_path / "l.csv", 1)] == ["ok"]


def test_max_duration_reached_while_a_row_waits_for_its_slot_exits_4(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """The sender ends the waiting row as not_attempted itself: that is still a row left."""
    server = sandbox_factory("--rate-limit", "1", "--rate-period", "30")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    args = ["--ledger", "l.csv", "--rate-limit", "1", "--rate-period", "30"]
    result = _run(tmp_path, server, *args, "--max-duration", "0.02")  # 1.2 s
    assert_no_traceback(result, 4)
    statuses = [x["status"] for x in assert_ledger_rows(tmp_path / "l.csv", 2)]
    assert statuses == ["ok", "not_attempted"]
    assert result.event("run_finished")["stopped_by"] == "max_duration"


def test_a_ledger_that_cannot_be_written_mid_run_stops_the_run(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the ledger: the run stops with one line, it does not drop results."""
    from click.testing import CliRunner

    from sync_worker.cli.main import main
    from sync_worker.record.ledger import Ledger

    write_csv(
        tmp_path / "in.csv", ["interview_id", "contact_name"], [[i, f"N{i}"] for i in range(1, 201)]
    )
    flushes = []

    def full_disk(self: Ledger) -> None:
        flushes.append(1)
        if len(flushes) > 2:  # the settled rows' flush and a first batch go through
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ledger, "flush", full_disk)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HINDSIGHT_API_KEY", API_KEY)
    result = CliRunner().invoke(
        main,
        [
            "run",
            "in.csv",
            "--base-url",
            sandbox.base_url,
            "--state",
            "state.sqlite",
            "--ledger",
            "l.csv",
            "--rate-limit",
            "100",
            "--rate-period",
            "1",
            "--log-format",
            "json",
        ],
    )
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error = [line for line in result.stderr.splitlines() if '"error"' in line]
    assert len(error) == 1 and "No space left on device" in error[0]
    assert "cannot write the results" in error[0]
    assert len(sandbox.requests()) < 200  # it stopped sending


def _server_rows(tmp_path: Path, count: int) -> None:
    from conftest import write_csv

    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_name"],
        [[i, f"N{i}"] for i in range(1, count + 1)],
    )
    (tmp_path / "fast.toml").write_text("[api]\nbackoff_base_s = 0.02\nmax_retries = 2\n")


def _server_run(server: SandboxServer, *args: str) -> list[str]:
    return [
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "ledger.csv",
        "--config",
        "fast.toml",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
    ]


def test_not_http_on_the_first_request_aborts_naming_the_base_url(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--garbage-rate", "1")
    _server_rows(tmp_path, 5)
    result = run_cli(*_server_run(server), cwd=tmp_path)
    assert_no_traceback(result, 3)
    aborted = [e for e in result.events() if e["event"] == "run_aborted"]
    assert len(aborted) == 1
    assert "does not answer like the Hindsight API" in aborted[0]["reason"]
    assert "check --base-url" in aborted[0]["reason"]
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 5)
    assert Counter((x["status"], x["error_code"]) for x in ledger) == {
        ("failed", "bad_response"): 1,
        ("not_attempted", ""): 4,
    }
    assert ledger[0]["attempts"] == "3"  # retried like any other error, then given up


def test_not_http_inside_the_pool_is_retried_and_kills_no_worker(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--garbage-rate", "0.3", "--seed", "3")
    _server_rows(tmp_path, 40)
    (tmp_path / "fast.toml").write_text("[api]\nbackoff_base_s = 0.01\nmax_retries = 10\n")
    result = run_cli(*_server_run(server, "--concurrency", "4"), cwd=tmp_path)
    assert_no_traceback(result, 0)
    assert {x["status"] for x in assert_ledger_rows(tmp_path / "ledger.csv", 40)} == {"ok"}
    garbled = sum(1 for r in server.requests() if r.get("not_http"))
    retried = [e for e in result.events() if e["event"] == "retry"]
    assert garbled > 0 and {e["error_code"] for e in retried} == {"bad_response"}
    summary = result.event("run_finished")
    assert (summary["requests_sent"], summary["connection_errors"]) == (40, garbled)


def test_garbage_for_every_row_in_the_pool_fails_rows_not_workers(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    """Seed 1: the first request gets through within its retries, then most tries do not."""
    server = sandbox_factory("--garbage-rate", "0.8", "--seed", "1")
    _server_rows(tmp_path, 12)
    result = run_cli(*_server_run(server, "--concurrency", "3"), cwd=tmp_path)
    assert_no_traceback(result, 1)
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 12)
    statuses = Counter((x["status"], x["error_code"]) for x in ledger)
    assert set(statuses) <= {("ok", ""), ("failed", "bad_response")}
    assert statuses[("failed", "bad_response")] > 0


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"]
)
def test_stop_while_sends_wait_for_their_slot(
    tmp_path: Path, sandbox: SandboxServer, sig: signal.Signals, code: int
) -> None:
    """One request every 5 s: after the first answers, every other send waits in the pacer."""
    _server_rows(tmp_path, 20)
    process = start_run(tmp_path, _server_run(sandbox, "--rate-limit", "2", "--rate-period", "10"))
    wait_for_arrivals(sandbox, 1)
    time.sleep(0.2)
    process.send_signal(sig)
    _out, err = process.communicate(timeout=5)  # not the 10 s grace for requests in flight
    assert "Traceback" not in err
    assert process.returncode == code, err
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 20)
    statuses = Counter(x["status"] for x in ledger)
    assert set(statuses) == {"ok", "not_attempted"}  # never "failed / interrupted"
    assert statuses["ok"] == len(sandbox.requests())


def test_max_duration_while_sends_wait_for_their_slot(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    _server_rows(tmp_path, 20)
    args = _server_run(sandbox, "--rate-limit", "2", "--rate-period", "10")
    result = run_cli(*args, "--max-duration", "0.02", cwd=tmp_path, timeout=12)  # 1.2 s
    assert_no_traceback(result, 4)
    statuses = Counter(x["status"] for x in assert_ledger_rows(tmp_path / "ledger.csv", 20))
    assert set(statuses) == {"ok", "not_attempted"}
    assert statuses["ok"] == len(sandbox.requests()) <= 2  # the bucket's room, nothing later


@pytest.mark.parametrize("stop", ["sigterm", "max-duration"])
def test_stop_during_the_first_request_is_not_an_abort(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer], stop: str
) -> None:
    """Every connection dropped: the first request is in its retries when the stop comes."""
    server = sandbox_factory("--drop-rate", "1")
    _server_rows(tmp_path, 5)
    (tmp_path / "fast.toml").write_text("[api]\nbackoff_base_s = 2\n")
    args = _server_run(server)
    if stop == "sigterm":
        process = start_run(tmp_path, args)
        wait_for_arrivals(server, 1)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=10)
        code, events = process.returncode, err
    else:
        result = run_cli(*args, "--max-duration", "0.02", cwd=tmp_path)  # 1.2 s
        code, events = result.code, result.stderr
    assert (code, "Traceback" in events) == ((143 if stop == "sigterm" else 4), False), events
    assert "run_aborted" not in events
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 5)
    assert Counter((x["status"], x["error_code"]) for x in ledger) == {
        ("failed", "connection_error"): 1,
        ("not_attempted", ""): 4,  # the drop reached it
    }


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("option", "0"),
        ("option", "nan"),
        ("option", "inf"),
        ("config", "0"),
        ("config", "inf"),
        ("config", "-5"),
        ("config", '"300"'),
    ],
    ids=[
        "option-zero",
        "option-nan",
        "option-inf",
        "config-zero",
        "config-inf",
        "config-negative",
        "config-text",
    ],
)
def test_max_outage_must_be_finite_and_positive(
    tmp_path: Path, sandbox: SandboxServer, where: str, value: str
) -> None:
    _server_rows(tmp_path, 3)
    if where == "option":
        result = run_cli(*_server_run(sandbox, "--max-outage", value), cwd=tmp_path)
        assert_no_traceback(result, 2)
        assert "--max-outage" in result.stderr
    else:
        (tmp_path / "fast.toml").write_text(f"[api]\nmax_outage_s = {value}\n")
        result = run_cli(*_server_run(sandbox), cwd=tmp_path)
        assert_one_line(result, 2, "fast.toml", "[api] max_outage_s", "finite number above 0")
    assert sandbox.requests() == []


# -- revert and history ------------------------------------------------------------------------


def _revert(tmp_path: Path, *args: str, base_url: str = "http://127.0.0.1:9/api/v1") -> Result:
    return run_cli(
        "revert",
        *args,
        "--base-url",
        base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "r.csv",
        cwd=tmp_path,
    )


def _state_with_one_run(tmp_path: Path, server: SandboxServer) -> str:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    assert _run(tmp_path, server, "--ledger", "first.csv").code == 0
    return str(read_ledger(tmp_path / "first.csv")[0]["run_id"])


def test_revert_of_an_unknown_run_names_it(tmp_path: Path, sandbox: SandboxServer) -> None:
    _state_with_one_run(tmp_path, sandbox)
    result = _revert(tmp_path, "20200101T000000Z-abcdef", base_url=sandbox.base_url)
    assert_one_line(result, 2, "run 20200101T000000Z-abcdef is not in", "--state")
    assert not (tmp_path / "r.csv").exists()


def test_revert_refuses_a_key_on_the_command_line(tmp_path: Path) -> None:
    result = _revert(tmp_path, "x", "--api-key", "sk-live-abcdef123")
    assert_no_traceback(result, 2)  # click's usage error, as for `run`
    assert "never taken on the command line" in result.stderr


def test_revert_without_a_state_names_it(tmp_path: Path) -> None:
    result = _revert(tmp_path, "20200101T000000Z-abcdef")
    assert_one_line(result, 2, "state state.sqlite not found", "--state")
    assert not (tmp_path / "state.sqlite").exists()  # no empty state left behind


def test_revert_of_a_run_that_changed_nothing_is_done_at_once(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    _state_with_one_run(tmp_path, sandbox)
    assert _run(tmp_path, sandbox, "--ledger", "second.csv").code == 0  # all skipped_unchanged
    second = str(read_ledger(tmp_path / "second.csv")[0]["run_id"])
    result = run_cli(
        "revert",
        second,
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        "r.csv",
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "r.csv", 0)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), ("exactly one of --email E or --interview N",)),
        (("--email", "a@x.com", "--interview", "1"), ("exactly one of",)),
        (("--email", "a@x.com", "--state", "missing.sqlite"), ("missing.sqlite not found",)),
    ],
    ids=["neither", "both", "no-state"],
)
def test_history_needs_one_subject_and_a_state(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    result = run_cli("history", *args, cwd=tmp_path)
    assert_one_line(result, 2, *words)


def test_history_days_must_be_a_positive_whole_number(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[state]\nhistory_days = 0\n")
    result = run_cli("history", "--email", "a@x.com", "--config", "c.toml", cwd=tmp_path)
    assert_one_line(result, 2, "c.toml", "[state] history_days", "whole number of days from 1")


# -- edges of real use --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "second", "words"),
    [
        ("validate", "in.csv", "in.csv: given twice"),
        ("plan", "./in.csv", "./in.csv: the same file as in.csv"),
        ("run", "link.csv", "link.csv: the same file as in.csv"),
    ],
    ids=["same-name", "another-spelling", "symlink"],
)
def test_one_file_given_twice_is_refused_before_sending(
    tmp_path: Path, sandbox: SandboxServer, command: str, second: str, words: str
) -> None:
    """An overlapping glob (`exports/*.csv exports/contacts.csv`) sent every row twice and
    wrote two ledger lines for each."""
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    (tmp_path / "link.csv").symlink_to("in.csv")
    extra = ["--base-url", sandbox.base_url, "--ledger", "l.csv"] if command == "run" else []
    result = run_cli(command, "in.csv", second, "--state", "state.sqlite", *extra, cwd=tmp_path)
    assert_one_line(result, 2, words, "give each input once")
    assert sandbox.requests() == []
    assert not (tmp_path / "l.csv").exists()


def test_notes_file_rows_of_one_contact_are_combined_and_bad_rows_named(
    tmp_path: Path,
) -> None:
    """A contact with two rows in the notes export (by email, and by id) kept only the last;
    a row with an id like 4821.0, or with neither key, was dropped without a word."""
    (tmp_path / "notes.csv").write_text(
        "interview_id,contact_email,notes\n11,ana@x.com,by id and email\n,ANA@x.com,by email\n"
        "12,,by id alone\n4821.0,,excel id\n,,no key\n"
    )
    (tmp_path / "in.csv").write_text(
        "interview_id,contact_email,contact_context,objective\n"
        "11,Ana@X.com,new,\n12,ana@x.com,,win\n"
    )
    result = run_cli(
        "plan", "in.csv", "--existing-notes", "notes.csv", "--state", "state.sqlite", cwd=tmp_path
    )
    assert_no_traceback(result, 0)
    bodies = [_strict_json(line)["body"] for line in result.stdout.splitlines()]
    combined = "by id and email\n\nby email\n\nby id alone\n\nnew"
    assert bodies == [
        {"contact_context": combined},
        {"contact_context": combined, "objective": "win"},
    ]
    named = [e["message"] for e in result.events() if e["event"] == "notes_row_unusable"]
    assert named == [
        "notes.csv row 4: column interview_id: '4821.0' is not a positive whole number; the row "
        "is not used",
        "notes.csv row 5: neither contact_email nor interview_id is filled; the row is not used",
    ]


def test_plan_into_a_pipe_closed_early_exits_0(tmp_path: Path) -> None:
    """`plan big.csv | head -1` under `set -o pipefail`: exit 1 would read as failed rows."""
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_name"],
        [[i, "x" * 200] for i in range(1, 20001)],
    )
    command = [sys.executable, "-m", "sync_worker", "plan", "in.csv"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b'{"interview_id": 1')
    process.stdout.close()
    assert process.wait(timeout=30) == 0
    assert b"Traceback" not in process.stderr.read()
