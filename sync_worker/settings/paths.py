"""Files the worker writes (ledger, summary, state): made readable by their owner only, and a
path that cannot be written is one ConfigError naming it and the fix, before anything is sent.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sync_worker.errors import ConfigError


def open_private(path: Path, what: str, option: str, flags: int = os.O_WRONLY) -> int:
    """A descriptor on `path`, created (with its folders) readable by its owner only if it does
    not exist. `what` names the file in the message ("ledger"), `option` the option that sets it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags | os.O_CREAT, 0o600)
    except OSError as exc:
        raise unwritable(path, what, option, exc) from None


def create_private(path: Path, what: str = "file", option: str = "the path") -> None:
    """Create `path` (and its folder) readable by its owner only, if it does not exist."""
    os.close(open_private(path, what, option))


def check_writable(path: Path, what: str, option: str) -> None:
    """Fail now, not after sending, when a file written at the end could not be written."""
    if path.is_dir():
        raise unwritable(path, what, option, IsADirectoryError(errno.EISDIR, "", str(path)))
    if path.exists() and not os.access(path, os.W_OK):
        raise unwritable(path, what, option, PermissionError(errno.EACCES, "", str(path)))


def unwritable(path: Path, what: str, option: str, exc: OSError) -> ConfigError:
    return ConfigError(
        f"{what} {path}: cannot be written: {_problem(path, exc)}; {option} {_fix(exc)}"
    )


def _problem(path: Path, exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a folder"
    blocker = _file_in_the_way(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc.filename or path})"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    return exc.strerror or str(exc)


def _fix(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "needs a file name, not a folder"
    return "needs a path in a folder you can write"


def _file_in_the_way(path: Path) -> Path | None:
    """The first of `path`'s folders that is a file (so no folder can be made there)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None
