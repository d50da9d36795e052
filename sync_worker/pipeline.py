"""The commands' work, in pipeline order: read -> plan -> send -> ledger, state and summary."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from tqdm import tqdm

from sync_worker import planner
from sync_worker.client import Counters, Outcome, RetryPolicy
from sync_worker.config import Settings
from sync_worker.errors import ConfigError
from sync_worker.ledger import Ledger
from sync_worker.logs import get_logger, register_secret
from sync_worker.merger import MergeRules
from sync_worker.notes import read_notes
from sync_worker.planner import NOT_ATTEMPTED, Memory, Plan, PlanOptions, Settled, build_plan
from sync_worker.reader import Batch, ReadOptions, read_batch, use_lean_memory_pool
from sync_worker.request_table import ChainQueue, Request
from sync_worker.sender import SendConfig, Sender, SendReport
from sync_worker.state import RunLock, State, Success, create_private, now_iso

INVALID_LOGGED = 5  # invalid rows logged one by one; past this, only counted
FLUSH_EVERY_S = 0.01  # results reach the ledger and the state within this time, in batches
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


@dataclass(frozen=True)
class RunOptions:
    inputs: tuple[str, ...]
    existing_notes: str | None = None
    force: bool = False
    dry_run: bool = False
    max_rows: int | None = None
    max_duration_min: float | None = None
    ledger: str | None = None
    progress: bool = True


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def load_key(settings: Settings, key_file: str | None) -> str:
    """The API key, from a file or the environment, never from the command line."""
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read ({exc.strerror})") from None
        if not key:
            raise ConfigError(f"--api-key-file {key_file}: the file is empty")
    else:
        key = os.environ.get(settings.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"no API key: set the environment variable {settings.api_key_env} "
                "(or use --api-key-file PATH)"
            )
    register_secret(key)
    return key


def read_inputs(settings: Settings, inputs: tuple[str, ...]) -> Batch:
    use_lean_memory_pool()
    options = ReadOptions(
        settings.encoding, settings.delimiter, settings.columns, settings.context_columns
    )
    batch = read_batch(inputs, options)
    log = get_logger()
    for warning in batch.warnings:
        log.warning("input_warning", message=warning)
    return batch


def make_plan(
    settings: Settings, options: RunOptions, batch: Batch, state: State, for_sending: bool = True
) -> Plan:
    merge = settings.merge or options.existing_notes is not None
    notes_by_email, notes_by_interview = (
        read_notes(Path(options.existing_notes), settings) if options.existing_notes else ({}, {})
    )
    memory = Memory(
        sent_hashes=state.sent_hashes(),
        state_contexts=state.contexts() if merge else {},
        notes_by_email=notes_by_email,
        notes_by_interview=notes_by_interview,
    )
    plan_options = PlanOptions(
        merge=merge,
        rules=MergeRules.build(settings.merge_separator, settings.append_keys),
        force=options.force,
        max_rows=options.max_rows,
        for_sending=for_sending,
    )
    plan = build_plan(batch, plan_options, memory)
    _log_plan_warnings(plan, warn_contexts=for_sending and not merge)
    return plan


def _log_plan_warnings(plan: Plan, warn_contexts: bool) -> None:
    log = get_logger()
    invalid = [(p, s) for p, s in sorted(plan.settled.items()) if s.status == "invalid"]
    for _position, settled in invalid[:INVALID_LOGGED]:
        log.warning("invalid_row", error_code=settled.error_code, message=settled.error_message)
    if len(invalid) > INVALID_LOGGED:
        log.warning(
            "invalid_rows", count=len(invalid), logged=INVALID_LOGGED,
            message="see the ledger for every invalid row",
        )  # fmt: skip
    several = plan.contacts_with_several_contexts() if warn_contexts else 0
    if several:
        log.warning(
            "several_contexts_per_contact",
            contacts=several,
            message="without --merge the last row's context is what remains for these contacts",
        )


@dataclass
class Recorder:
    """Writes each result to the ledger and the state. Results are queued as they arrive and
    written together every 10 ms (ledger lines and one state commit per batch), so the hot path
    only queues, yet a kill -9 loses only what arrived in the last 10 ms."""

    run_id: str
    batch: Batch
    ledger: Ledger
    state: State | None
    progress: tqdm[Any] | None = None
    counts: Counter[str] = field(default_factory=Counter)
    written: set[int] = field(default_factory=set)
    _queued: list[tuple[Request, Outcome]] = field(default_factory=list)
    _flush_scheduled: bool = False

    def settled(self, position: int, outcome: Settled) -> None:
        self._lines([position], (outcome.status, None, outcome.error_code, outcome.error_message,
                                 0, outcome.merge, outcome.sha256, None, None))  # fmt: skip

    def result(self, request: Request, outcome: Outcome) -> None:
        self._queued.append((request, outcome))
        if self.progress is not None:
            self.progress.update(len(request.rows))
        self._schedule_flush()

    def _write_queued(self) -> None:
        queued, self._queued = self._queued, []
        successes = []
        for request, outcome in queued:
            self._lines(request.rows, (outcome.status, outcome.http_status, outcome.error_code,
                                       outcome.error_message, outcome.attempts, request.merge,
                                       request.sha256, outcome.finished_at,
                                       outcome.duration_ms))  # fmt: skip
            if outcome.status == "ok":
                successes.append(Success(request.interview_id, request.sha256, request.contact,
                                         request.context_json, self.run_id,
                                         outcome.finished_at or now_iso()))  # fmt: skip
        if self.state is not None:
            self.state.add(successes)

    def _lines(self, positions: list[int], outcome: tuple[Any, ...]) -> None:
        """A line for each row; `outcome`: the ledger columns from status on, in order."""
        files, locate, write = self.batch.files, self.batch.locate, self.ledger.write_values
        for position in positions:
            file_index, row, interview_id, email = locate(position)
            write([self.run_id, files[file_index], row, interview_id, email, *outcome])
        self.counts[outcome[0]] += len(positions)
        self.written.update(positions)

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self.flush)
            self._flush_scheduled = True
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        self._write_queued()
        if self.state is not None:
            self.state.flush()
        self.ledger.flush()


class StopSignal:
    """Turns SIGINT / SIGTERM into a stop request, before and during the event loop."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason  # logged by the run, not here: a signal handler must not print
        if self._event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    def bind(self, event: asyncio.Event) -> None:
        self._event, self._loop = event, asyncio.get_running_loop()
        if self.reason is not None:
            event.set()

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        handlers = {
            sig: signal.signal(sig, lambda s, _f: self.request(signal.Signals(s).name))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, previous in handlers.items():
                signal.signal(sig, previous)


def run(settings: Settings, options: RunOptions, key_file: str | None) -> int:
    """`sync-worker run`: returns the exit code."""
    run_id = new_run_id()
    structlog.contextvars.bind_contextvars(run_id=run_id)
    started_at = now_iso()
    api_key = "" if options.dry_run else load_key(settings, key_file)
    batch = read_inputs(settings, options.inputs)
    state_path = Path(settings.state_path)
    lock = RunLock(state_path)
    if not options.dry_run:
        lock.acquire(run_id)
    try:
        with StopSignal().installed() as stopper:
            return _run_locked(settings, options, batch, run_id, started_at, api_key, stopper)
    finally:
        lock.release()


def _run_locked(
    settings: Settings, options: RunOptions, batch: Batch, run_id: str, started_at: str,
    api_key: str, stopper: StopSignal,
) -> int:  # fmt: skip
    state = (
        State.read_only(Path(settings.state_path))
        if options.dry_run
        else State.open(Path(settings.state_path))
    )
    try:
        plan = make_plan(settings, options, batch, state)
        ledger_path = Path(options.ledger or settings.ledger_path or f"ledgers/sync-{run_id}.csv")
        ledger = Ledger(ledger_path)
        state.run_started(run_id, started_at)
        try:
            recorder = Recorder(run_id, batch, ledger, None if options.dry_run else state)
            for position, outcome in sorted(plan.settled.items()):
                recorder.settled(position, outcome)
            recorder.flush()
            _log_start(settings, options, batch, plan)
            report = _send_or_dry_run(settings, options, plan, recorder, api_key, stopper)
            if stopper.reason is not None:
                get_logger().warning("stopped", reason=stopper.reason)
            recorder.flush()  # every result written, so what is left unwritten is known
            _fill_unwritten(recorder, plan, report)
            recorder.flush()
            code = exit_code(recorder.counts, report, stopper.reason)
            summary = _summary(run_id, started_at, recorder, report, plan, code, options)
            summary["stopped_by"] = "auth_or_unreachable" if report.fatal else stopper.reason
            _write_summary(ledger_path, summary)
            state.run_finished(run_id, code, summary)
        finally:
            ledger.close()
        get_logger().info("run_finished", **summary)
        return code
    finally:
        state.close()


def _log_start(settings: Settings, options: RunOptions, batch: Batch, plan: Plan) -> None:
    per_minute = settings.limit * 60.0 / settings.rate_period_s
    minutes = len(plan.table) / per_minute
    get_logger().info(
        "run_started", inputs=list(options.inputs), tier=settings.tier,
        limit=settings.limit, rate_period_s=settings.rate_period_s,
        rows=len(batch), requests_to_send=len(plan.table), rows_to_send=plan.rows_to_send(),
        estimated_minutes=round(minutes, 2), workers=settings.workers,
        dry_run=options.dry_run,
        message=f"{len(plan.table)} requests take about {_duration(minutes)} at "
        f"{per_minute:g} requests a minute",
    )  # fmt: skip


def _duration(minutes: float) -> str:
    seconds = math.ceil(minutes * 60)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _send_or_dry_run(
    settings: Settings, options: RunOptions, plan: Plan, recorder: Recorder, api_key: str,
    stopper: StopSignal,
) -> SendReport:  # fmt: skip
    if options.dry_run:
        for request in plan.table:
            recorder.result(request, Outcome("dry_run", finished_at=now_iso()))
        return SendReport(Counters())
    show = options.progress and sys.stderr.isatty()
    with (
        tqdm(total=plan.rows_to_send(), unit="row", disable=not show, file=sys.stderr) as bar,
        _collector_ignoring_the_plan(),
    ):
        recorder.progress = bar if show else None
        return asyncio.run(_send(settings, options, plan, recorder, api_key, stopper))


@contextmanager
def _collector_ignoring_the_plan() -> Iterator[None]:
    """What reading and planning made lives for the whole send: frozen, the garbage collector
    stops walking it again and again (one full walk of a planned batch stalls the event loop
    for tens of milliseconds, and all the walks cost ~2 us a request when the rate is no limit).
    No collection first: it would cost as much once (~50 ms for 100,000 rows), to reclaim little.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _send(
    settings: Settings, options: RunOptions, plan: Plan, recorder: Recorder, api_key: str,
    stopper: StopSignal,
) -> SendReport:  # fmt: skip
    stop = asyncio.Event()
    stopper.bind(stop)
    loop = asyncio.get_running_loop()
    if options.max_duration_min is not None:
        loop.call_later(options.max_duration_min * 60, stopper.request, "max_duration")
    config = SendConfig(
        base_url=settings.base_url, api_key=api_key, limit=settings.limit,
        period_s=settings.rate_period_s, workers=settings.workers,
        timeout_s=settings.timeout_s,
        policy=RetryPolicy(settings.max_retries, settings.backoff_base_s),
    )  # fmt: skip
    return await Sender(config, recorder.result, stop).run(ChainQueue(plan.table))


def _fill_unwritten(recorder: Recorder, plan: Plan, report: SendReport) -> None:
    """Every row gets its line: never sent is not_attempted; cut off in flight, failed."""
    table = plan.table
    unwritten = [i for i, p in enumerate(table.position.tolist()) if p not in recorder.written]
    for request in table.take(np.array(unwritten, dtype=np.int64)):
        if request.interview_id in report.started:
            outcome = Outcome("failed", error_code="interrupted", finished_at=now_iso(),
                              error_message="stopped while in flight; the server may have it",
                              attempts=1)  # fmt: skip
            recorder.result(request, outcome)
        else:
            for position in request.rows:
                recorder.settled(position, Settled(NOT_ATTEMPTED, sha256=request.sha256,
                                                   merge=request.merge))  # fmt: skip


def exit_code(counts: Counter[str], report: SendReport, stop_reason: str | None) -> int:
    if report.fatal is not None:
        return report.fatal.exit_code
    if stop_reason in SIGNAL_EXIT:
        return SIGNAL_EXIT[stop_reason]
    if stop_reason == "max_duration":
        return 4
    return 1 if counts["failed"] or counts["invalid"] else 0


def _summary(
    run_id: str, started_at: str, recorder: Recorder, report: SendReport, plan: Plan, code: int,
    options: RunOptions,
) -> dict[str, Any]:  # fmt: skip
    counters = report.counters
    per_minute = counters.requests / report.elapsed_s * 60 if report.elapsed_s > 0 else 0.0
    return {
        "run_id": run_id,
        "started_at": started_at,
        "finished_at": now_iso(),
        "inputs": list(options.inputs),
        "rows": sum(recorder.counts.values()),
        "counts": dict(sorted(recorder.counts.items())),
        "requests_sent": counters.requests,
        "retries": counters.retries,
        "rate_limited_429": counters.rate_limited,
        "effective_requests_per_minute": round(per_minute, 1),
        "server_limit_learned_per_minute": (
            round(report.learned_per_minute, 1) if report.learned_per_minute else None
        ),
        "contacts_merged": plan.contacts_merged,
        "contacts_no_existing": plan.contacts_no_existing,
        "exit_code": code,
    }


def _write_summary(ledger_path: Path, summary: dict[str, Any]) -> None:
    path = ledger_path.with_name(ledger_path.name + ".summary.json")
    create_private(path)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def plan_output(settings: Settings, options: RunOptions) -> Iterator[memoryview]:
    """`sync-worker plan`: the requests a run would send, without network or key."""
    batch = read_inputs(settings, options.inputs)
    state = State.read_only(Path(settings.state_path))
    try:
        plan = make_plan(settings, options, batch, state, for_sending=False)
    finally:
        state.close()
    return planner.plan_output(plan, batch)


def validate(settings: Settings, options: RunOptions) -> tuple[Batch, Plan]:
    """`sync-worker validate`: the batch and its plan with state ignored."""
    batch = read_inputs(settings, options.inputs)
    plan = make_plan(settings, options, batch, State(None))
    return batch, plan
