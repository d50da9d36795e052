"""One error tree. The CLI maps each branch to an exit code and one readable line."""

from __future__ import annotations

from sync_worker.vocabulary import ExitCode


class SyncWorkerError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code: ExitCode = ExitCode.ABORTED


class ConfigError(SyncWorkerError):
    """A bad option, config key or value: nothing was sent."""

    exit_code = ExitCode.USAGE


class EventLoopError(SyncWorkerError, RuntimeError):
    """A run started inside a running event loop, where it cannot run its own: nothing was
    read, locked or written. The message names the async function to await instead."""

    exit_code = ExitCode.USAGE


class GuardError(ConfigError):
    """A guard for unattended runs refused the run before sending (SPEC section 14)."""


class InputError(SyncWorkerError):
    """An input file that cannot be used at all: nothing was sent."""

    exit_code = ExitCode.USAGE


class LockedError(SyncWorkerError):
    """Another run holds the state database."""

    exit_code = ExitCode.LOCKED


class FatalApiError(SyncWorkerError):
    """The API refused the run as a whole (bad key, wrong base URL): stop sending."""

    exit_code = ExitCode.ABORTED

    def __init__(self, message: str, *, code: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
