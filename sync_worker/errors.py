"""One error tree. The CLI maps each branch to an exit code and one readable line."""

from __future__ import annotations


class SyncWorkerError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 3


class ConfigError(SyncWorkerError):
    """A bad option, config key or value: nothing was sent."""

    exit_code = 2


class EventLoopError(SyncWorkerError, RuntimeError):
    """A run started inside a running event loop, where it cannot run its own: nothing was
    read, locked or written. The message names the async function to await instead."""

    exit_code = 2


class InputError(SyncWorkerError):
    """An input file that cannot be used at all: nothing was sent."""

    exit_code = 2


class LockedError(SyncWorkerError):
    """Another run holds the state database."""

    exit_code = 75


class FatalApiError(SyncWorkerError):
    """The API refused the run as a whole (bad key, wrong base URL): stop sending."""

    exit_code = 3

    def __init__(self, message: str, *, code: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
