from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

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
