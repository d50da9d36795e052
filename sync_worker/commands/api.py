"""The library every command is: `sync_worker.sync(inputs, **options)` for an Airflow, Dagster or
Prefect task, a notebook or a script, and the command line on top (cli/main.py maps flags in and
exit codes out).

Each command's options are the option table's (settings/options.py), as keywords: an unknown
keyword, or a value of the wrong type, raises ConfigError naming it; nothing here calls
`sys.exit`. Messages are written in the command line's words and reach a Python caller in its
own (`--state` -> `state=`): `surface` says who called.

A call changes nothing in the host process that outlives it: structlog's configuration and the
host's context variables are left alone (logs.library_logging), pyarrow's default memory pool
is put back (reader.lean_memory_pool), signal handlers are installed for the run only, on the
main thread only, and a signal that stopped a run is passed on to the host's handler once the
run has ended cleanly (signals.pass_on). The heavy modules (pandas, Arrow, aiohttp) are imported
when a command starts, not when this module is.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sync_worker.errors import ConfigError, EventLoopError, SyncWorkerError
from sync_worker.settings.checks import check
from sync_worker.settings.config import RunOptions, Settings, reporting_despite_error, resolve
from sync_worker.settings.options import Command, Surface, for_command, in_python_words
from sync_worker.vocabulary import ExitCode

PathLike = str | os.PathLike[str]

if TYPE_CHECKING:
    import pandas as pd

    from sync_worker.record.summary import RunSummary
    from sync_worker.store.history import Version

    # A file's path, a pandas DataFrame, or a list of them (read in order, as one batch).
    Inputs = PathLike | pd.DataFrame | Sequence[PathLike | pd.DataFrame]
FUNCTIONS: dict[Command, str] = {
    "run": "sync",
    "plan": "plan_requests",
    "validate": "validate",
    "revert": "revert",
}


@dataclass(frozen=True)
class RunResult:
    """How a run ended: what `sync-worker run` prints and exits with, as values."""

    run_id: str
    exit_code: int  # SPEC section 8: 0 ok, 1 some rows failed or invalid, 3 aborted, ...
    counts: Mapping[str, int]  # ledger status -> rows
    ledger_path: Path
    summary: RunSummary = field(repr=False)  # the `<ledger>.summary.json` content

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
    set_aside: tuple[str, ...] = ()  # one line per file that set lines aside: how many, why
    guards: tuple[str, ...] = ()  # what each guard for unattended runs would say, one line each

    @property
    def exit_code(self) -> int:
        return int(ExitCode.ROWS_FAILED if self.invalid or self.notes_problems else ExitCode.OK)


# -- the Python functions -------------------------------------------------------------------------


def sync(inputs: Inputs, **options: Any) -> RunResult:
    """Sync rows to the API and write a ledger, as `sync-worker run` does.

    `inputs`: a CSV, Parquet or Excel file, a pandas DataFrame, or a list of them. `options`:
    those of `run`, as keywords (`base_url=`, `rate_limit=`, `state=`, `ledger=`, `merge=`,
    `dry_run=`, ...; see `inspect.signature(sync_worker.sync)`); `api_key` may be given
    directly (else `api_key_file`, else the variable `api_key_env`, `HINDSIGHT_API_KEY` by
    default). `max_duration` is in minutes. Returns how the run ended; raises ConfigError /
    InputError / LockedError (exit codes 2, 2 and 75 on the command line) when it could not
    start. It runs its own event loop: inside a running one, `await sync_async(...)`.
    A SIGINT or SIGTERM ends the run cleanly, then goes on to the host (signals.pass_on)."""
    _refuse_running_loop("sync_worker.sync", "await sync_worker.sync_async(...)")
    return run(inputs, options, "python")


async def sync_async(inputs: Inputs, **options: Any) -> RunResult:
    """`sync` for a caller inside an event loop (an async task, a notebook cell): the run goes
    on in a worker thread, with its own loop, while the caller's loop keeps running. Signals
    stay the host's (Python gives handlers to the main thread only); cancelling the awaiting
    task stops the run as a signal would (no new requests, the ledger and state written), then
    the cancellation goes on."""
    from sync_worker.commands.signals import StopRelay

    relay = StopRelay()
    loop = asyncio.get_running_loop()
    context = relay.relaying()
    done = loop.run_in_executor(None, context.run, run, inputs, options, "python")
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        relay.request("cancelled")
        await asyncio.wait([done])  # the run's clean end: its lock released, its ledger whole
        raise


def validate(inputs: Inputs, **options: Any) -> ValidationResult:
    """Check files and mapping, as `sync-worker validate` does: no network, no key, no state."""
    return check_inputs(inputs, options, "python")


def plan_requests(inputs: Inputs, **options: Any) -> list[dict[str, Any]]:
    """The requests a run would send, as `sync-worker plan` prints them (one dict each:
    `interview_id`, `body`, `source_rows`, `merge`), after merging and skipping as `sync` would.
    No network, no key; the state is only read."""
    lines = b"".join(plan_lines(inputs, options, "python")).splitlines()
    return [json.loads(line) for line in lines]


def revert(run_id: str, **options: Any) -> RunResult:
    """Put back what the run `run_id` changed, as `sync-worker revert` does (SPEC section 12):
    a revert is itself a run, with a ledger, a summary and a run_id that can be reverted."""
    _refuse_running_loop("sync_worker.revert", "await asyncio.to_thread(sync_worker.revert, ...)")
    return revert_run(run_id, options, "python")


def _refuse_running_loop(name: str, instead: str) -> None:
    """Before anything is read, locked or written: a run runs its own event loop, which Python
    refuses inside a running one, and would leave a lock, a ledger and a run half made."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise EventLoopError(
        f"{name}() was called inside a running event loop (an async function, a notebook "
        f"cell): use `{instead}` there"
    )


# -- the commands, for either surface -------------------------------------------------------------


def run(inputs: Inputs, options: Mapping[str, Any], surface: Surface) -> RunResult:
    """`sync-worker run` and `sync_worker.sync`."""
    with _in_words_of(surface):
        with _reported_if_refused(options):
            given = _given("run", options, surface)
            settings = _settings(given)
            run_options = _run_options(inputs, given)
        from sync_worker.commands import pipeline

        with _call_scope(given):
            summary = pipeline.run(
                settings, run_options, given["api_key_file"], api_key=given["api_key"]
            )
    return _result(summary)


def revert_run(run_id: str, options: Mapping[str, Any], surface: Surface) -> RunResult:
    """`sync-worker revert` and `sync_worker.revert`."""
    with _in_words_of(surface):
        if not isinstance(run_id, str) or not run_id.strip():
            raise ConfigError(f"run_id must be a run's id (a ledger's run_id), got {run_id!r}")
        with _reported_if_refused(options):
            given = _given("revert", options, surface)
            settings = _settings(given)
        from sync_worker.commands import pipeline
        from sync_worker.commands.revert import RevertJob

        run_options = RunOptions(
            inputs=(),
            dry_run=given["dry_run"],
            max_duration_min=given["max_duration"],
            ledger=settings.ledger_path or "ledgers/revert-{run_id}.csv",
            progress=given["progress"],
        )
        job = RevertJob(settings, run_id.strip(), force=given["force"])
        with _call_scope(given):
            summary = pipeline.launch(
                settings, run_options, given["api_key_file"], job, given["api_key"]
            )
    return _result(summary)


def check_inputs(inputs: Inputs, options: Mapping[str, Any], surface: Surface) -> ValidationResult:
    """`sync-worker validate` and `sync_worker.validate`."""
    with _in_words_of(surface):
        given = _given("validate", options, surface)
        settings = _settings(given)  # before the import: a config error needs no pandas (~1 s)
        run_options = _run_options(inputs, given)
        from sync_worker.commands import planning

        with _call_scope(given):
            batch, plan, notes_problems, guards = planning.validate(settings, run_options)
    invalid = tuple(f"{s.error_message} [{s.error_code}]" for _p, s in plan.settled.invalid())
    return ValidationResult(
        len(batch),
        batch.files,
        len(plan.table),
        invalid,
        tuple(notes_problems),
        batch.lines_set_aside,
        tuple(lines.message() for lines in batch.set_aside),
        tuple(guards),
    )


def plan_lines(
    inputs: Inputs, options: Mapping[str, Any], surface: Surface
) -> Generator[memoryview, None, None]:
    """`sync-worker plan` and `sync_worker.plan_requests`: the requests as JSON lines."""
    with _in_words_of(surface):
        given = _given("plan", options, surface)
        settings = _settings(given)  # before the import: a config error needs no pandas (~1 s)
        run_options = _run_options(inputs, given)
        from sync_worker.commands import planning

        with _call_scope(given):
            yield from planning.plan_output(settings, run_options)


def history_versions(
    email: str | None,
    interview_id: int | None,
    state: PathLike | None,
    config: PathLike | None,
    base_url: str | None = None,
) -> list[Version]:
    """`sync-worker history`: the versions of a contact's fields, newest first."""
    if (email is None) == (interview_id is None):
        raise ConfigError("history: give exactly one of --email E or --interview N")
    overrides = {"state_path": None if state is None else os.fspath(state), "base_url": base_url}
    settings = resolve(None if config is None else Path(config), overrides)
    from sync_worker.commands import history_report

    return history_report.versions(Path(settings.state_path), email, interview_id)


# -- the pieces -----------------------------------------------------------------------------------


def _given(command: Command, options: Mapping[str, Any], surface: Surface) -> dict[str, Any]:
    """Every option of the command, checked: its value, or its default (None: not given)."""
    table = {option.keyword: option for option in for_command(command)}
    unknown = [name for name in options if name not in table]
    if unknown:
        known = ", ".join(f"{name}=" for name in table)
        raise ConfigError(
            f"{unknown[0]}= is not an option of {FUNCTIONS[command]}() (it takes {known})"
        )
    given: dict[str, Any] = {}
    for name, option in table.items():
        default = option.python_default if surface == "python" else option.default
        value = options.get(name, default)
        if value is not None:
            value = check(option.named(surface), option.keyword_check, value)
        given[name] = value
    return given


def _settings(given: Mapping[str, Any]) -> Settings:
    """Settings after precedence, the given options on top; messages name flags (a Python
    caller's are reworded by _in_words_of)."""
    from sync_worker.settings.options import OPTIONS

    overrides = {o.setting: given[o.keyword] for o in OPTIONS if o.setting and o.keyword in given}
    config = given.get("config")
    return resolve(None if config is None else Path(config), overrides)


def _run_options(inputs: Inputs, given: Mapping[str, Any]) -> RunOptions:
    if given.get("merge") is False and given.get("existing_notes") is not None:
        raise ConfigError(
            "--no-merge and --existing-notes contradict each other: the notes file is what "
            "merging starts from (it implies --merge); drop one of them"
        )
    return RunOptions(
        inputs=_inputs(inputs),
        existing_notes=given.get("existing_notes"),
        force=bool(given.get("force")),
        dry_run=bool(given.get("dry_run")),
        max_rows=given.get("max_rows"),
        max_duration_min=given.get("max_duration"),
        progress=bool(given.get("progress")),
    )


def _inputs(inputs: Inputs) -> tuple[str | pd.DataFrame, ...]:
    """Paths as text, DataFrames as they are; anything else named as `inputs`."""
    items = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    if not items:
        raise ConfigError("inputs: give at least one CSV or Parquet file, or a DataFrame")
    return tuple(_input(item, len(items)) for item in items)


def _input(item: object, count: int) -> str | pd.DataFrame:
    if _is_frame(item):
        return item  # type: ignore[return-value]
    if isinstance(item, str | os.PathLike) and os.fspath(item):
        return str(os.fspath(item))
    where = "inputs" if count == 1 else "inputs items"
    raise ConfigError(
        f"{where} must be file paths (str or pathlib.Path) or pandas DataFrames, "
        f"got {type(item).__name__} {item!r}"[:200]
    )


def _is_frame(item: object) -> bool:
    """A pandas DataFrame, known without importing pandas: a caller that made one has."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(item, pandas.DataFrame)


@contextmanager
def _call_scope(given: Mapping[str, Any]) -> Iterator[None]:
    """What a command sets up for its length only: where its logs go, Arrow's pool, and Arrow
    kept off the signals."""
    from sync_worker.logs import library_logging
    from sync_worker.read.reader import arrow_keeps_off_signals, lean_memory_pool

    with ExitStack() as stack:
        stack.enter_context(library_logging(given.get("log_format") or "json"))
        stack.enter_context(lean_memory_pool())
        stack.enter_context(arrow_keeps_off_signals())
        yield


@contextmanager
def _reported_if_refused(options: Mapping[str, Any]) -> Iterator[None]:
    """A run refused before its settings are whole still reports its exit code to the metrics
    file and the ping URL, where those are known (given, or in a config file that parses): a
    monitor must hear of a broken config too."""
    try:
        yield
    except SyncWorkerError as exc:
        from sync_worker.commands.monitor import Monitor

        config = options.get("config")
        metrics, url = reporting_despite_error(
            Path(os.fspath(config)) if isinstance(config, str | os.PathLike) else None,
            {
                "metrics_path": _text_of(options.get("metrics_file")),
                "ping_url": options.get("ping_url"),
            },
        )
        if metrics is not None or url is not None:
            Monitor(metrics, url).failed(None, exc)
        raise


def _text_of(value: Any) -> str | None:
    return os.fspath(value) if isinstance(value, str | os.PathLike) else None


@contextmanager
def _in_words_of(surface: Surface) -> Iterator[None]:
    """Errors reach a Python caller naming keywords, not flags."""
    try:
        yield
    except SyncWorkerError as exc:
        if surface == "python":
            exc.args = (in_python_words(str(exc)), *exc.args[1:])
        raise


def _result(summary: Mapping[str, Any]) -> RunResult:
    """The run's result; a signal that stopped it then goes on to the host's handler."""
    from sync_worker.commands.signals import pass_on

    result = RunResult(
        run_id=summary["run_id"],
        exit_code=summary["exit_code"],
        counts=dict(summary["counts"]),
        ledger_path=Path(summary["ledger"]),
        summary=summary,  # type: ignore[arg-type]
    )
    pass_on(summary.get("stopped_by"))
    return result


def _signature(command: Command, first: str) -> inspect.Signature:
    """The keywords a function takes, from the option table, for `help()` and notebooks."""
    positional = inspect.Parameter(first, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    keywords = [
        inspect.Parameter(o.keyword, inspect.Parameter.KEYWORD_ONLY, default=o.python_default)
        for o in for_command(command)
    ]
    return inspect.Signature([positional, *keywords])


_FUNCTIONS: tuple[tuple[Callable[..., Any], Command, str], ...] = (
    (sync, "run", "inputs"),
    (sync_async, "run", "inputs"),
    (validate, "validate", "inputs"),
    (plan_requests, "plan", "inputs"),
    (revert, "revert", "run_id"),
)
for _function, _command, _first in _FUNCTIONS:
    _function.__signature__ = _signature(_command, _first)  # type: ignore[attr-defined]
