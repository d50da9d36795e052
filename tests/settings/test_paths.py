from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    NO_KEY,
    SandboxServer,
    assert_ledger_rows,
    assert_no_traceback,
    assert_one_line,
    cli_env,
    rows_csv,
    run_args,
    run_cli,
)

from sync_worker.errors import ConfigError
from sync_worker.settings.paths import check_writable, create_private


def test_created_with_its_folders_for_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "ledger.csv"
    create_private(path, "ledger", "--ledger")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/srv/x"),
            "permission denied (/srv/x)",
        ),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    ],
    ids=["no-permission", "read-only-file-system", "disk-full"],
)
def test_what_root_cannot_be_refused_is_still_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, words: str
) -> None:
    """Tests run as root, where permission bits stop nothing: the refusals are simulated."""

    def refuse(*_args: object) -> int:
        raise error

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError) as caught:
        create_private(tmp_path / "ledger.csv", "ledger", "--ledger")
    message = str(caught.value)
    assert message.startswith(f"ledger {tmp_path / 'ledger.csv'}: cannot be written: ")
    assert words in message and "--ledger needs a path in a folder you can write" in message


def test_a_folder_where_a_file_is_written_at_the_end(tmp_path: Path) -> None:
    (tmp_path / "ledger.csv.summary.json").mkdir()
    with pytest.raises(ConfigError, match="it is a folder; --ledger needs a file name"):
        check_writable(tmp_path / "ledger.csv.summary.json", "ledger summary", "--ledger")
    check_writable(tmp_path / "absent.json", "ledger summary", "--ledger")  # made later: fine


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
    before = rows_csv(tmp_path, 3).read_bytes()
    make(tmp_path)
    result = run_cli(*run_args(sandbox, state=state, ledger=ledger), cwd=tmp_path)
    assert_one_line(result, 2, *words)
    assert sandbox.requests() == []
    assert (tmp_path / "in.csv").read_bytes() == before


def test_new_folders_odd_names_and_an_upper_case_suffix(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Folders that do not exist yet are made; '?', '#' and '%' in the state's name once made
    `plan` read another file."""
    rows_csv(tmp_path, 4)
    state, ledger = "new state/st?a#b%20.sqlite", "new/ledgers/RUN.CSV"
    assert_no_traceback(run_cli(*run_args(sandbox, state=state, ledger=ledger), cwd=tmp_path), 0)
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
