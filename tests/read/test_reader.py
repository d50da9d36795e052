from __future__ import annotations

import codecs
import gzip
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import (
    SandboxServer,
    assert_no_traceback,
    assert_one_line,
    run_cli,
    strict_json,
    write_csv,
    write_parquet,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sync_worker.cli.main import main
from sync_worker.errors import InputError
from sync_worker.read.reader import ReadOptions, column_plan, read_batch


def rows(path: Path, options: ReadOptions | None = None) -> list[dict[str, object]]:
    batch = read_batch([str(path)], options or ReadOptions())
    records: list[dict[str, object]] = batch.frame.to_dict("records")  # type: ignore[assignment]
    return records


@pytest.mark.parametrize(
    ("name", "data", "expected_id"),
    [
        ("plain.csv", b"interview_id,contact_name\n4821,Ana\n", "4821"),
        ("bom.csv", b"\xef\xbb\xbfinterview_id,contact_name\n4821,Ana\n", "4821"),
        ("zeros.csv", b"interview_id,contact_name\n004821,Ana\n", "004821"),
        ("spaces.csv", b" Interview_ID ,Contact_Name\n4821,Ana\n", "4821"),
        ("tabs.tsv", b"interview_id\tcontact_name\n4821\tAna\n", "4821"),
        ("crlf.csv", b"interview_id,contact_name\r\n4821,Ana\r\n", "4821"),
    ],
    ids=["plain", "bom", "leading-zeros-kept", "header-case-and-space", "tsv", "crlf"],
)
def test_csv_cells_stay_text(tmp_path: Path, name: str, data: bytes, expected_id: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    [row] = rows(path)
    assert row["interview_id"] == expected_id
    assert row["contact_name"] == "Ana"
    assert row["_row"] == 1


def test_gzip_csv(tmp_path: Path) -> None:
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(b"interview_id,objective\n7,Win\n"))
    assert rows(path)[0]["objective"] == "Win"


def test_quoted_newlines_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('interview_id,contact_context,objective\n1,"line one\nline two",\n2,,x\n')
    first, second = rows(path)
    assert first["contact_context"] == "line one\nline two"
    assert first["objective"] == ""  # empty, never NaN
    assert (second["_row"], second["contact_context"]) == (2, "")


def test_cp1252_fallback_warns_with_file_name(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("interview_id,contact_name\n1,Jos\u00e9 M\u00fcller\n".encode("cp1252"))
    batch = read_batch([str(path)], ReadOptions())
    assert batch.frame["contact_name"].iat[0] == "Jos\u00e9 M\u00fcller"
    assert len(batch.warnings) == 1 and "excel.csv" in batch.warnings[0]
    assert "cp1252" in batch.warnings[0]


def test_configured_encoding_and_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes("interview_id;contact_name\n1;Fran\u00e7ois\n".encode("latin-1"))
    batch = read_batch([str(path)], ReadOptions(encoding="latin-1", delimiter=";"))
    assert batch.frame["contact_name"].iat[0] == "Fran\u00e7ois"
    assert batch.warnings == ()


def test_parquet_ids_never_become_floats(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table(
        {
            "interview_id": pa.array([4821.0, None, 17.0]),
            "contact_name": pa.array(["Ana", None, "Bo"]),
            "score": pa.array([1, 2, 3], pa.int64()),
        }
    )
    pq.write_table(table, path)
    records = rows(path)
    assert [r["interview_id"] for r in records] == ["4821", "", "17"]
    assert [r["contact_name"] for r in records] == ["Ana", "", "Bo"]


def test_mapping_and_context_columns(tmp_path: Path) -> None:
    path = tmp_path / "sf.csv"
    path.write_text(
        "Hindsight Interview ID,Full Name,Email,Title,Context.Stage,Unused\n"
        "55,Ana Ruiz,ana@x.com,CTO,Closed Lost,zzz\n"
    )
    options = ReadOptions(
        columns={
            "interview_id": "hindsight interview id",
            "contact_name": "Full Name",
            "contact_email": "EMAIL",
        },
        context_columns={"title": "Title"},
    )
    batch = read_batch([str(path)], options)
    [row] = batch.frame.to_dict("records")
    assert row["interview_id"] == "55" and row["contact_name"] == "Ana Ruiz"
    assert row["contact_email"] == "ana@x.com"
    assert row["context.title"] == "CTO" and row["context.Stage"] == "Closed Lost"
    assert "Unused" not in batch.frame.columns
    assert set(batch.context_keys) == {"title", "Stage"}


def test_canonical_header_wins_over_mapping(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("interview_id,Other ID\n1,2\n")
    [row] = rows(path, ReadOptions(columns={"interview_id": "Other ID"}))
    assert row["interview_id"] == "1"


def test_several_files_are_one_batch_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("interview_id,objective\n1,a\n2,b\n")
    (tmp_path / "b.csv").write_text("interview_id,contact_name,context.x\n3,C,cx\n")
    batch = read_batch([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], ReadOptions())
    frame = batch.frame
    assert frame["interview_id"].tolist() == ["1", "2", "3"]
    assert frame["_file"].tolist() == [0, 0, 1] and frame["_row"].tolist() == [1, 2, 1]
    assert frame["contact_name"].tolist() == ["", "", "C"]
    assert frame["context.x"].tolist() == ["", "", "cx"]
    assert batch.locate(2) == (1, 1, "3", "")


def test_a_rows_place_gives_its_email_trimmed(tmp_path: Path) -> None:
    """The ledger's contact_email is the cell as read: trimmed, as every cell is."""
    (tmp_path / "a.csv").write_text('interview_id,contact_email\n1,"  Pad@X.com  "\n')
    batch = read_batch([str(tmp_path / "a.csv")], ReadOptions())
    assert batch.locate(0) == (0, 1, "1", "Pad@X.com")
    assert batch.locate_all(np.array([0])).emails == ["Pad@X.com"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "missing.csv: file not found"),
        ("empty.csv", "", "empty.csv: file is empty"),
        (
            "noid.csv",
            "Id,Name\n1,A\n",
            "noid.csv: no interview_id column (columns found: 'Id', 'Name')",
        ),
        ("data.xls", "x", "data.xls: unsupported file type"),
        ("broken.parquet", "not parquet", "broken.parquet: cannot read as Parquet"),
    ],
    ids=["missing", "empty", "no-id-column", "unsupported", "bad-parquet"],
)
def test_unusable_files_name_file_and_problem(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as error:
        read_batch([str(path)], ReadOptions())
    assert message in str(error.value)


def test_missing_mapped_id_column_says_which_mapping(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("Record ID,Email\n1,a@x\n")
    with pytest.raises(InputError, match="nor the mapped 'Hindsight Interview ID'"):
        read_batch([str(path)], ReadOptions(columns={"interview_id": "Hindsight Interview ID"}))


def test_a_title_line_above_the_header_is_named_as_such(tmp_path: Path) -> None:
    """A Salesforce "Formatted" report saved as CSV starts with its title: one cell."""
    path = tmp_path / "in.csv"
    path.write_text('"Contacts with interviews"\n"Hindsight Interview ID","Email"\n1,a@x\n')
    with pytest.raises(InputError) as error:
        read_batch([str(path)], ReadOptions(columns={"interview_id": "Hindsight Interview ID"}))
    assert "(columns found: 'Contacts with interviews')" in str(error.value)
    assert "if that one cell is a report's title, delete the lines above the header" in str(
        error.value
    )


def test_frame_is_all_text(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("interview_id,contact_name\n1,NaN\n2,null\n")
    frame = read_batch([str(path)], ReadOptions()).frame
    assert frame["contact_name"].tolist() == ["NaN", "null"]  # text, not missing values
    assert not frame.drop(columns=["_file", "_row"]).isna().any().any()
    assert all(isinstance(v, str) for v in frame["interview_id"])
    assert isinstance(frame, pd.DataFrame)


@pytest.mark.parametrize(
    ("headers", "options", "problem"),
    [
        (["interview_id", " Interview_ID "], ReadOptions(), "both give interview_id"),
        (["interview_id", "interview_id"], ReadOptions(), "both give interview_id"),
        (
            ["interview_id", "Context.Stage", "context.Stage"],
            ReadOptions(),
            "both give context.Stage",
        ),
        (
            ["interview_id", "Stage", "context.stage"],
            ReadOptions(context_columns={"stage": "Stage"}),
            "both give context.stage",
        ),
        (
            ["interview_id", "Name"],
            ReadOptions(columns={"contact_name": "Name"}, context_columns={"name": "Name"}),
            "'Name' is mapped to both contact_name and context.name",
        ),
    ],
    ids=[
        "case-and-space",
        "exact",
        "context-prefix-case",
        "context-column-and-mapping",
        "field-and-context-key",
    ],
)
def test_ambiguous_headers_are_refused(
    headers: list[str], options: ReadOptions, problem: str
) -> None:
    with pytest.raises(InputError) as error:
        column_plan(headers, "in.csv", options)
    assert problem in str(error.value) and str(error.value).startswith("in.csv: ")


def test_unused_duplicates_and_distinct_context_keys_are_fine() -> None:
    headers = ["interview_id", "Notes", "notes", "context.stage", "context.Stage"]
    renames, warnings = column_plan(headers, "in.csv", ReadOptions())
    assert renames == {
        "interview_id": "interview_id",
        "context.stage": "context.stage",
        "context.Stage": "context.Stage",
    }
    assert warnings == []


@pytest.mark.parametrize(
    ("header", "hint"),
    [("interview_id;name", '";"'), ("interview_id|name", '"|"'), ("Record ID", None)],
    ids=["semicolon", "pipe", "one-real-column"],
)
def test_missing_id_suggests_the_delimiter(header: str, hint: str | None) -> None:
    with pytest.raises(InputError) as error:
        column_plan([header], "in.csv", ReadOptions())
    message = str(error.value)
    if hint:
        assert f"[input] delimiter = {hint}" in message
    else:
        assert "[columns] interview_id" in message and "delimiter" not in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("interview_id\tcontact_name\r\n1\tJosé\r\n".encode("utf-16"), "José"),
        (codecs.BOM_UTF16_BE + "interview_id\tcontact_name\n1\tJosé\n".encode("utf-16-be"), "José"),
        ("interview_id,contact_name\n1,José\n".encode("utf-32"), "José"),
        (b"\xef\xbb\xbfinterview_id\tcontact_name\n1\tJos\xc3\xa9\n", "José"),
        (b"interview_id\tcontact_name\n1\tAna, Bo\n", "Ana, Bo"),
    ],
    ids=["utf16-le", "utf16-be", "utf32", "utf8-bom-tabs", "tabs-in-a-csv"],
)
def test_byte_order_marks_and_tabs_are_understood(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    batch = read_batch([str(path)], ReadOptions())
    assert batch.frame["contact_name"].tolist() == [expected]
    assert batch.warnings == ()


def test_configured_delimiter_is_never_second_guessed(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("interview_id\tname\n1\tA\n")
    with pytest.raises(InputError, match=r'delimiter = "\\t"'):
        read_batch([str(path)], ReadOptions(delimiter=";"))


def test_parquet_reads_only_the_columns_it_uses(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "interview_id": pa.array([1, 2]),
                "objective": pa.array([float("nan"), 2.5]),
                "contact_name": pa.array([b"Ana", None]),
                "tags": pa.array([[1], [2, 3]]),
                "raw": pa.array([b"\xff", b""]),
            }
        ),
        path,
    )
    frame = read_batch([str(path)], ReadOptions()).frame
    assert frame["objective"].tolist() == ["", "2.5"]  # NaN is never text
    assert frame["contact_name"].tolist() == ["Ana", ""]
    assert "tags" not in frame.columns and "raw" not in frame.columns


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        (pa.array([[1], [2]]), "holds list<element: int64> values, not text"),
        (pa.array([{"x": 1}, {"x": 2}]), "holds struct<x: int64> values, not text"),
        (pa.array([b"ok", b"\xff"]), "holds bytes that are not UTF-8 text (row 2)"),
        (
            pa.array([b"\xc3", b"ok"]).view(pa.string()),
            "holds bytes that are not UTF-8 text (row 1)",
        ),
    ],
    ids=["list", "struct", "binary", "string-of-bad-bytes"],
)
def test_parquet_column_used_that_cannot_be_text(
    tmp_path: Path, column: pa.Array, problem: str
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"interview_id": pa.array(["1", "2"]), "objective": column}), path)
    with pytest.raises(InputError) as error:
        read_batch([str(path)], ReadOptions())
    assert f"in.parquet: column 'objective' {problem}" in str(error.value).replace(
        str(tmp_path) + "/", ""
    )


TEXT = pd.ArrowDtype(pa.string())


def test_parquet_large_strings_read_as_text(tmp_path: Path) -> None:
    """pandas 3 writes its default `str` columns as Arrow large_string."""
    path = tmp_path / "pandas3.parquet"
    table = pa.table(
        {
            "interview_id": pa.array(["004821", None], pa.large_string()),
            "contact_name": pa.array([" Ana ", "Bo"], pa.large_string()),
        }
    )
    pq.write_table(table, path)
    frame = read_batch([str(path)], ReadOptions()).frame
    assert frame["interview_id"].tolist() == ["004821", ""]
    assert frame["contact_name"].tolist() == [" Ana ", "Bo"]
    assert frame["interview_id"].dtype == TEXT and frame["contact_name"].dtype == TEXT


@pytest.mark.parametrize(
    "names",
    [["a.csv"], ["a.csv", "b.parquet"], ["b.parquet"]],
    ids=["csv", "csv-then-parquet", "parquet"],
)
def test_text_columns_are_arrow_strings(tmp_path: Path, names: list[str]) -> None:
    """Arrow `string` (32-bit offsets), whatever pandas defaults to: the planner reads the
    columns back as Arrow without a copy and reads their offsets as int32."""
    (tmp_path / "a.csv").write_text("interview_id,contact_name\n1,Ana\n")
    pq.write_table(
        pa.table({"interview_id": pa.array(["2"], pa.large_string())}), tmp_path / "b.parquet"
    )
    frame = read_batch([str(tmp_path / n) for n in names], ReadOptions()).frame
    text_columns = frame.columns.drop(["_file", "_row"])
    assert {str(c): frame[c].dtype for c in text_columns} == dict.fromkeys(text_columns, TEXT)
    assert pa.array(frame["interview_id"]).type == pa.string()


UNUSABLE_COLUMNS = {
    "list": pa.array([[1, 2], [3]]),
    "struct": pa.array([{"x": 1}, {"x": 2}]),
    "map": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
    "binary-not-utf8": pa.array([b"\xff\xfe", b"ok"]),
    "string-not-utf8": pa.array([b"\xff", b"ok"]).view(pa.string()),
}


@pytest.mark.parametrize("kind", list(UNUSABLE_COLUMNS), ids=list(UNUSABLE_COLUMNS))
def test_parquet_columns_not_used_do_not_matter(tmp_path: Path, kind: str) -> None:
    write_parquet(
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
    write_parquet(
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
    write_parquet(
        tmp_path / "in.parquet",
        {
            "interview_id": pa.array([1.0, 2.0]),
            "objective": pa.array([float("nan"), 1.5]),
            "contact_name": pa.array(["José".encode(), b"Bo"]),
        },
    )
    result = run_cli("plan", "in.parquet", "--state", "state.sqlite", cwd=tmp_path)
    assert_no_traceback(result, 0)
    bodies = [strict_json(line)["body"] for line in result.stdout.splitlines()]
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
    [planned] = [strict_json(line) for line in result.stdout.splitlines()]
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
def test_ambiguous_headers_are_one_line(
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
    bodies = [strict_json(line)["body"] for line in result.stdout.splitlines()]
    assert bodies == [{"contact_context": long_text}, {"contact_context": "ok"}]


def test_a_column_named_context_dot_alone_is_named_not_dropped_silently(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("interview_id,context.,objective\n1,a,x\n")
    result = run_cli("validate", "in.csv", cwd=tmp_path)
    assert_no_traceback(result, 0)
    [warning] = [e for e in result.events() if e["event"] == "input_warning"]
    assert "column 'context.' names no context key" in warning["message"]


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


def test_a_signal_while_arrow_reads_reaches_the_commands_handler(tmp_path: Path) -> None:
    """Arrow keeps off the signals for a command's length: a SIGTERM in the middle of a read
    goes to the run's own handler (which records the stop), and the read is whole; with
    Arrow's handlers it cancels the read and hands the signal back, where one can be lost."""
    import os
    import signal
    import threading

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from sync_worker.read.reader import arrow_keeps_off_signals

    path = tmp_path / "big.csv"
    path.write_text("a,b\n" + "".join(f"{i},text {i}\n" for i in range(1_000_000)))
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    timer = threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with arrow_keeps_off_signals():
            timer.start()
            table = pacsv.read_csv(path)
            timer.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert table.num_rows == 1_000_000
    assert seen == [signal.SIGTERM]
    with pa.lib.SignalStopHandler():  # Arrow's own handling is back after the command
        pass
