"""The Python API: `sync_worker.sync(inputs, **options)` for Airflow, Dagster or Prefect tasks.

The command line is a thin layer over these functions (`cli.py` maps options in and exit codes
out). Options are the command line's, as keywords; a bad one raises the project's ConfigError
naming it; nothing here calls `sys.exit`. Signal handlers are installed only for the run, only
on the main thread, and put back after. The heavy modules (pandas, Arrow, aiohttp) are imported
when a run starts, not when this module is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from sync_worker.commands.terminal import console
from sync_worker.errors import ConfigError
from sync_worker.logs import configure
from sync_worker.settings.config import (
    RunOptions,
    Settings,
    check,
    non_negative_int,
    positive_int,
    positive_number,
    resolve,
    tier_name,
)
from sync_worker.vocabulary import ExitCode

PathLike = str | os.PathLike[str]

# keyword -> its check; each runs only when the keyword is given (not None)
CHECKS: dict[str, Callable[[Any], Any]] = {
    "tier": tier_name,
    "rate_limit": positive_int,
    "rate_period": positive_number,
    "concurrency": positive_int,
    "max_rows": non_negative_int,
    "max_duration": positive_number,
    "max_outage": positive_number,
}
# keyword -> the Settings field it overrides
SETTINGS = {
    "tier": "tier",
    "rate_limit": "rate_limit",
    "rate_period": "rate_period_s",
    "merge": "merge",
    "state": "state_path",
    "base_url": "base_url",
    "api_key_env": "api_key_env",
    "concurrency": "concurrency",
    "metrics_file": "metrics_path",
    "max_outage": "max_outage_s",
}


@dataclass(frozen=True)
class RunResult:
    """How a run ended: what `sync-worker run` prints and exits with, as values."""

    run_id: str
    exit_code: int  # SPEC section 8: 0 ok, 1 some rows failed or invalid, 3 aborted, ...
    counts: Mapping[str, int]  # ledger status -> rows
    ledger_path: Path
    summary: Mapping[str, Any] = field(repr=False)  # the `<ledger>.summary.json` content

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK


@dataclass(frozen=True)
class ValidationResult:
    rows: int
    files: tuple[str, ...]
    requests: int  # requests a run would send
    invalid: tuple[str, ...]  # one line per invalid row: file, row, column, what, [code]
    notes_problems: tuple[str, ...] = ()  # --existing-notes rows that cannot be used
    lines_set_aside: int = 0  # lines of the inputs that are not rows (a report's footer, ...)

    @property
    def exit_code(self) -> int:
        return int(ExitCode.ROWS_FAILED if self.invalid or self.notes_problems else ExitCode.OK)


def sync(
    inputs: PathLike | Sequence[PathLike],
    *,
    config: PathLike | None = None,
    tier: str | None = None,
    rate_limit: int | None = None,
    rate_period: float | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    api_key_file: PathLike | None = None,
    merge: bool | None = None,
    existing_notes: PathLike | None = None,
    ledger: PathLike | None = None,
    state: PathLike | None = None,
    force: bool = False,
    dry_run: bool = False,
    max_rows: int | None = None,
    max_duration: float | None = None,
    concurrency: int | None = None,
    max_outage: float | None = None,
    metrics_file: PathLike | None = None,
    log_format: str = "json",
    progress: bool = False,
    option_names: Mapping[str, str] | None = None,
) -> RunResult:
    """Sync rows to the API and write a ledger, as `sync-worker run` does.

    `api_key` may be given directly (else `api_key_file`, else the variable `api_key_env`,
    `HINDSIGHT_API_KEY` by default). `max_duration` is in minutes, like `--max-duration`.
    Returns how the run ended; raises ConfigError / InputError / LockedError (exit codes 2, 2
    and 75 on the command line) when it could not start. Call it from synchronous code: it runs
    its own event loop. `option_names`: how messages name the settings (the CLI's flags)."""
    given = _checked(locals())
    settings = _settings(config, given, log_format, option_names)
    options = _options(
        inputs, existing_notes, force, dry_run, max_rows, max_duration, ledger, progress
    )
    from sync_worker.commands import pipeline

    key_file = None if api_key_file is None else os.fspath(api_key_file)
    summary = pipeline.run(settings, options, key_file, api_key=api_key)
    return RunResult(
        run_id=summary["run_id"],
        exit_code=summary["exit_code"],
        counts=dict(summary["counts"]),
        ledger_path=Path(summary["ledger"]),
        summary=summary,
    )


def validate(
    inputs: PathLike | Sequence[PathLike],
    *,
    config: PathLike | None = None,
    merge: bool | None = None,
    existing_notes: PathLike | None = None,
    log_format: str = "json",
) -> ValidationResult:
    """Check files and mapping, as `sync-worker validate` does: no network, no key, no state."""
    settings = _settings(config, _checked({"merge": merge}), log_format)
    options = _options(inputs, existing_notes, False, False, None, None, None, False)
    from sync_worker.commands import planning

    batch, plan, notes_problems = planning.validate(settings, options)
    invalid = tuple(f"{s.error_message} [{s.error_code}]" for _p, s in plan.settled.invalid())
    return ValidationResult(
        len(batch),
        batch.files,
        len(plan.table),
        invalid,
        tuple(notes_problems),
        batch.lines_set_aside,
    )


def _checked(given: Mapping[str, Any]) -> dict[str, Any]:
    """The Settings overrides among `given`, each checked and named by its keyword."""
    for name, value in given.items():
        if name in CHECKS and value is not None:
            check(f"{name}=", CHECKS[name], value)
        if name in ("merge", "force", "dry_run", "progress") and value not in (None, True, False):
            raise ConfigError(f"{name}= must be True or False, got {value!r}")
    return {
        SETTINGS[name]: os.fspath(value) if isinstance(value, os.PathLike) else value
        for name, value in given.items()
        if name in SETTINGS and value is not None
    }


def _settings(
    config: PathLike | None,
    overrides: dict[str, Any],
    log_format: str,
    option_names: Mapping[str, str] | None = None,
) -> Settings:
    if log_format not in ("auto", "json", "console"):
        raise ConfigError(f"log_format= must be auto, json or console, got {log_format!r}")
    configure(log_format, console=console)
    structlog.contextvars.clear_contextvars()  # an earlier call's run_id is not this one's
    if "tier" in overrides:
        overrides["tier"] = overrides["tier"].lower()
    names = option_names or {setting: f"{keyword}=" for keyword, setting in SETTINGS.items()}
    return resolve(None if config is None else Path(config), overrides, names=names)


def _options(
    inputs: PathLike | Sequence[PathLike],
    existing_notes: PathLike | None,
    force: bool,
    dry_run: bool,
    max_rows: int | None,
    max_duration: float | None,
    ledger: PathLike | None,
    progress: bool,
) -> RunOptions:
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not paths:
        raise ConfigError("inputs: give at least one CSV or Parquet file")
    return RunOptions(
        inputs=tuple(os.fspath(p) for p in paths),
        existing_notes=None if existing_notes is None else os.fspath(existing_notes),
        force=force,
        dry_run=dry_run,
        max_rows=max_rows,
        max_duration_min=max_duration,
        ledger=None if ledger is None else os.fspath(ledger),
        progress=progress,
    )
