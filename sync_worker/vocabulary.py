"""The words every stage shares: a row's status in the ledger, and the process's exit code.

Each is one enum, read by the planner, the recorder, revert, the summary and the CLI alike; a
`StrEnum` member is the string it names, so ledgers and logs hold the same text as before."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(StrEnum):
    """A ledger line's `status`: how that input row ended."""

    OK = "ok"
    FAILED = "failed"  # the server may have seen it
    INVALID = "invalid"  # could not be sent: the row's own problem
    SKIPPED_UNCHANGED = "skipped_unchanged"
    NOT_ATTEMPTED = "not_attempted"  # never left: a stop, an abort, --max-rows, --max-duration
    DRY_RUN = "dry_run"
    NOT_RESTORABLE = "not_restorable"  # revert: the value before was never known
    CONFLICT = "conflict"  # revert: a later run wrote something else since


class ExitCode(IntEnum):
    """The process's exit code (SPEC section 8)."""

    OK = 0
    ROWS_FAILED = 1  # finished, with failed or invalid rows
    USAGE = 2  # usage, config or input error; nothing sent
    ABORTED = 3  # auth refused, the API gone past --max-outage, another fatal error
    STOPPED_IN_TIME = 4  # --max-duration ended the run with rows left
    LOCKED = 75  # another run holds the state database (EX_TEMPFAIL)
    SIGINT = 130
    SIGTERM = 143


SIGNAL_EXIT = {"SIGINT": ExitCode.SIGINT, "SIGTERM": ExitCode.SIGTERM}
