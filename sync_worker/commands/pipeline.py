"""The commands' work, in pipeline order: read -> plan -> send -> record (ledger, state, summary).

`plan` and `validate` stop after planning (planning.py, which this module goes on from); the
stages live in their own modules (reader, plan, sender, recorder, summary) and this one only
strings them together, with the lock, the signals and the key around a run. `launch` runs any
job that can plan with the state open: the rows of input files (`InputJob`), or a run's history
put back (revert.py's `RevertJob`).

`--max-duration` counts from the start of the run: reading and planning use the window too, so
a cron job ends near its window however long its file takes to plan. Signals are caught from the
start: a stop while reading is met once the rows are known, a stop while planning interrupts it
(signals.py), and either way every row gets its ledger line."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from sync_worker.clock import now_iso, run_stamp
from sync_worker.commands.monitor import Monitor
from sync_worker.commands.planning import (
    merging,
    plan_with_notes,
    read_inputs,
    unresolved_interviews,
)
from sync_worker.commands.signals import Interrupted, StopSignal
from sync_worker.errors import GuardError
from sync_worker.logs import get_logger, redact, showing_progress
from sync_worker.plan import Outcomes, Plan
from sync_worker.plan.changes import ChangeFinder, Changes
from sync_worker.plan.estimate import estimate
from sync_worker.plan.guards import Verdict, judge, refusals
from sync_worker.plan.request_table import ChainQueue, Request, RequestTable
from sync_worker.read.notes import NotesFile
from sync_worker.read.reader import Batch
from sync_worker.record.ledger import Ledger, fills_in, ledger_path
from sync_worker.record.recorder import Recorder
from sync_worker.record.summary import exit_code, write_summary
from sync_worker.record.summary import summary as make_summary
from sync_worker.send.client import Counters, Outcome, RetryPolicy
from sync_worker.send.sender import SendConfig, Sender, SendReport
from sync_worker.settings.apikey import load_key
from sync_worker.settings.config import RunOptions, Settings
from sync_worker.settings.network import route, tls_context
from sync_worker.store.history import FieldKey
from sync_worker.store.state import RunLock, State, StateWriteError
from sync_worker.vocabulary import ExitCode, Status

if TYPE_CHECKING:
    from tqdm import tqdm

    from sync_worker.send.resolver import Resolution


DRY = "dry"  # a dry run's id says so: it is recorded nowhere, and a revert can name why


def new_run_id(dry_run: bool = False) -> str:
    return f"{run_stamp()}-{DRY + '-' if dry_run else ''}{secrets.token_hex(3)}"


def is_dry_run_id(run_id: str) -> bool:
    parts = run_id.split("-")
    return len(parts) == 3 and parts[1] == DRY


@dataclass
class Prepared:
    """What a run sends, planned with the state open: the rows (one ledger line each), the
    requests, and each request's changes for the history (`changes`, or found a chunk of
    requests at a time by `changes_of`)."""

    batch: Batch
    plan: Plan
    changes: Changes
    unresolved: int = 0  # changes a revert leaves (not_restorable, conflict): exit 1
    inputs: tuple[str, ...] = ()
    notes: NotesFile | None = None
    remarks: dict[int, tuple[str, str]] = field(default_factory=dict)  # ok lines' code, message
    guards: list[Verdict] = field(default_factory=list)  # what each guard says (SPEC 14)
    changes_of: Callable[[Sequence[Request]], Changes] | None = None
    not_planned: int = 0  # rows left not_attempted because the run stopped while planning


class Job(Protocol):
    """A run's own part: `run` reads its inputs, `revert` reads a run's history."""

    def load(self) -> None:
        """Read what can be read before the lock (an unusable input: exit 2, nothing sent)."""

    def before_planning(self, state: State, send: SendConfig, stopper: StopSignal) -> SendConfig:
        """What needs the API before planning (not in a dry run); returns how to send."""

    def prepare(self, state: State, options: RunOptions) -> Prepared:
        """Plan with the state open (read-only for a dry run)."""


@dataclass
class InputJob:
    """`sync-worker run`: the rows of the input files."""

    settings: Settings
    options: RunOptions
    batch: Batch | None = None

    def load(self) -> None:
        self.batch = read_inputs(self.settings, self.options.inputs)

    def before_planning(self, state: State, send: SendConfig, stopper: StopSignal) -> SendConfig:
        """With `[merge] resolve_contacts`: the contact of each interview never resolved."""
        assert self.batch is not None
        if not self.settings.resolve_contacts:
            return send
        return resolve_contacts(self.batch, state, send, stopper)

    def prepare(self, state: State, options: RunOptions) -> Prepared:
        assert self.batch is not None
        plan, notes = plan_with_notes(self.settings, options, self.batch, state)
        verdicts = judge(plan, len(self.batch), merging(self.settings, options), self.settings)
        if refusals(verdicts) and not options.dry_run:
            return Prepared(self.batch, plan, {}, inputs=options.input_names, guards=verdicts)
        last = plan.confirmed if plan.confirmed is not None else _last_values(state, plan)
        finder = None if options.dry_run else ChangeFinder(plan, last)
        return Prepared(
            self.batch,
            plan,
            {},
            inputs=options.input_names,
            notes=notes,
            guards=verdicts,
            changes_of=finder,
        )

    def unplanned(self, options: RunOptions) -> Prepared:
        """Stopped before its plan was made: every row not_attempted."""
        assert self.batch is not None
        rows = len(self.batch)
        plan = Plan(RequestTable.empty(), Outcomes.never_planned(rows))
        return Prepared(self.batch, plan, {}, inputs=options.input_names, not_planned=rows)


def resolve_contacts(
    batch: Batch, state: State, send: SendConfig, stopper: StopSignal
) -> SendConfig:
    """`GET /interviews/{id}` for the batch's interviews the state has never resolved, under
    the run's limit (resolver.py); the answers kept in the state. Returns how to send, with
    the GETs' times for the sending pacer's window."""
    from sync_worker.send.resolver import resolve

    wanted = unresolved_interviews(batch, state)
    if not wanted:
        return send
    log = get_logger()
    log.info(
        "resolving_contacts",
        interviews=len(wanted),
        message=f"asking the API the contact "
        f"of {len(wanted)} interviews (GET /interviews/{{id}}, under the same limit)",
    )

    async def ask() -> Resolution:
        stop = asyncio.Event()
        stopper.bind(stop)
        return await resolve(send, wanted, stop)

    found = asyncio.run(ask())
    state.remember_resolved(found.contacts)
    log.info(
        "contacts_resolved",
        resolved=len(found.contacts),
        unresolved=len(found.unresolved),
        requests=len(found.sent_at),
    )
    if found.refused:
        log.error(
            "contacts_not_resolved", message=f"the API refused GET /interviews: {found.refused}"
        )
    return dataclasses.replace(send, sent_before=tuple(sorted(found.sent_at)))


def _last_values(state: State, plan: Plan) -> dict[FieldKey, str]:
    """The state's last values of the fields this plan sends (its contacts and interviews)."""
    if not state.knows_values():  # a first backfill: not a million keys to look up
        return {}
    contacts = set(plan.table.contact.to_pylist())
    return state.last_values(contacts | set(map(str, plan.table.interview_id)))


def run(
    settings: Settings, options: RunOptions, key_file: str | None, api_key: str | None = None
) -> dict[str, Any]:
    """`sync-worker run` and `sync_worker.sync`: returns the run's summary (its `exit_code`
    among it)."""
    return launch(settings, options, key_file, InputJob(settings, options), api_key)


def launch(
    settings: Settings,
    options: RunOptions,
    key_file: str | None,
    job: Job,
    api_key: str | None = None,
) -> dict[str, Any]:
    """A run of any job (`run`, `revert`): key, lock, signals, then plan, send and record.
    Returns its summary. Metrics and pings, when asked for, report however the run ends."""
    monitor = Monitor.of(settings)
    run_id = new_run_id(options.dry_run)
    # bound for the run only: a host's own context variables are as they were after it
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        try:
            monitor.check()  # first: a file that cannot be written gets no metrics
            summary = _run(settings, options, key_file, api_key, run_id, job, monitor)
        except Exception as exc:
            monitor.failed(run_id, exc)
            raise
        monitor.finished(summary)
    return summary


def _run(
    settings: Settings,
    options: RunOptions,
    key_file: str | None,
    api_key: str | None,
    run_id: str,
    job: Job,
    monitor: Monitor,
) -> dict[str, Any]:
    started_at = now_iso()
    window = options.max_duration_min
    deadline = None if window is None else time.monotonic() + window * 60
    ledger = ledger_path(options.ledger or settings.ledger_path, run_id, started_at[:10])
    send = None if options.dry_run else _send_config(settings, options, key_file, api_key)
    with StopSignal().installed() as stopper:
        stopper.deadline = deadline
        job.load()  # a stop while reading is met after it: the rows must be known
        lock = RunLock(Path(settings.state_path))
        if not options.dry_run:
            lock.acquire(run_id)
        try:
            return _run_locked(
                settings, options, job, run_id, started_at, send, stopper, ledger, monitor
            )
        finally:
            lock.release()


def _run_locked(
    settings: Settings,
    options: RunOptions,
    job: Job,
    run_id: str,
    started_at: str,
    send: SendConfig | None,
    stopper: StopSignal,
    ledger_path: Path,
    monitor: Monitor,
) -> dict[str, Any]:
    state = (
        State.read_only(Path(settings.state_path))
        if options.dry_run
        else State.open(Path(settings.state_path))
    )
    try:
        state.belongs_to(settings.base_url)
        if send is not None:
            send = job.before_planning(state, send, stopper)
        prepared = _prepare(job, state, options, stopper)
        _guard(prepared, options)
        batch, plan = prepared.batch, prepared.plan
        template = options.ledger or settings.ledger_path
        ledger = Ledger(ledger_path, run_id if fills_in(template) else None)
        state.run_started(run_id, started_at)
        _remember_notes(state, prepared, options)
        try:
            recorder = Recorder(
                run_id,
                batch,
                ledger,
                None if options.dry_run else state,
                on_failure=stopper.request,
                remarks=prepared.remarks,
                sent_with=plan.sent_with,
                riders=plan.riders,
            )
            recorder.settle_all(plan.settled)
            recorder.flush()
            _log_start(settings, options, batch, plan, ledger.path)
            monitor.started()
            ahead = _history_ahead(state, run_id, prepared, options, recorder)
            report = _send_or_dry_run(options, plan, recorder, send, stopper, ahead)
            recorder.check()
            if stopper.reason is not None:
                get_logger().warning("stopped", reason=stopper.reason)
            recorder.flush()  # every result written, so what is left unwritten is known
            unsent = recorder.fill_unwritten(plan, report.started) + prepared.not_planned
            report.counters.requests += recorder.cut_in_flight  # sent too, though unanswered
            recorder.flush()
            code = exit_code(recorder.counts, report, stopper.reason, unsent)
            if code == ExitCode.OK and prepared.unresolved:
                code = ExitCode.ROWS_FAILED  # a revert that could not put everything back
            summary = make_summary(
                run_id,
                started_at,
                recorder.counts,
                report,
                plan,
                code,
                prepared.inputs,
                batch.lines_set_aside,
            )
            summary["stopped_by"] = "auth_or_unreachable" if report.fatal else stopper.reason
            summary["aborted_because"] = redact(str(report.fatal)) if report.fatal else None
            summary["ledger"] = str(ledger.path)
            write_summary(ledger.path, summary)
            state.run_finished(run_id, int(code), summary)
            _prune_history(state, settings, options)
        finally:
            ledger.close()
        get_logger().info("run_finished", **summary)
        return summary
    finally:
        state.close()


def _guard(prepared: Prepared, options: RunOptions) -> None:
    """The guards of SPEC section 14, before anything is written or sent: a refusal is exit 2;
    a dry run logs it and goes on, to show what the real run would meet."""
    refused = refusals(prepared.guards)
    if not refused:
        return
    if options.dry_run:
        for verdict in refused:
            get_logger().warning("guard_would_refuse", guard=verdict.guard, message=verdict.message)
        return
    raise GuardError("; and ".join(verdict.message for verdict in refused))


def _remember_notes(state: State, prepared: Prepared, options: RunOptions) -> None:
    """Notes-file rows seen for the first time: their time is kept for later notes files."""
    if prepared.notes is not None and prepared.notes.sightings and not options.dry_run:
        state.remember_notes(prepared.notes.sightings)


def _prepare(job: Job, state: State, options: RunOptions, stopper: StopSignal) -> Prepared:
    """The job's plan; a run's input rows all not_attempted when a stop came first or while
    planning (a signal interrupts it), or when the window was used up by then."""
    if stopper.past_deadline():
        stopper.request("max_duration")
    if not isinstance(job, InputJob):
        return job.prepare(state, options)
    try:
        with stopper.interrupting():
            prepared = job.prepare(state, options)
    except Interrupted:
        return job.unplanned(options)
    if stopper.past_deadline():
        stopper.request("max_duration")
    return prepared


@dataclass
class HistoryAhead:
    """Each chunk's changes handed to the state as the sender takes its requests, before any of
    them is sent (a confirmed send's become history rows in the commit that journals it:
    history.py); a request that ends without a confirmed send has its changes dropped."""

    state: State
    run_id: str
    changes_of: Callable[[Sequence[Request]], Changes]
    recorder: Recorder

    def planned(self, requests: list[Request]) -> bool:
        """False: the run is stopping on a write that failed; none of these is sent."""
        if self.recorder.failure is not None:
            return False
        try:
            self.state.plan_history(self.run_id, self.changes_of(requests))
        except StateWriteError as exc:
            self.recorder.fail(exc)
            return False
        return True

    def result(self, request: Request, outcome: Outcome) -> None:
        """The sender's sink: the recorder's, and a request not confirmed leaves no changes."""
        self.recorder.result(request, outcome)
        if outcome.status != Status.OK:
            self.state.unconfirmed(self.run_id, request.interview_id)


def _history_ahead(
    state: State, run_id: str, prepared: Prepared, options: RunOptions, recorder: Recorder
) -> HistoryAhead | None:
    """How a run's changes reach the history (None: a dry run keeps none)."""
    if options.dry_run:
        return None
    fixed = prepared.changes
    changes_of = prepared.changes_of or (
        lambda requests: {
            r.interview_id: fixed[r.interview_id] for r in requests if r.interview_id in fixed
        }
    )
    return HistoryAhead(state, run_id, changes_of, recorder)


def _prune_history(state: State, settings: Settings, options: RunOptions) -> None:
    if not options.dry_run:
        state.prune_history(settings.history_days)


def _log_start(
    settings: Settings, options: RunOptions, batch: Batch, plan: Plan, ledger_path: Path
) -> None:
    figures = estimate(batch, plan, settings.limit, settings.rate_period_s)
    get_logger().info(
        "run_started",
        inputs=list(options.input_names),
        tier=settings.tier,
        limit=settings.limit,
        rate_period_s=settings.rate_period_s,
        ledger=str(ledger_path),
        rows=len(batch),
        requests_to_send=len(plan.table),
        rows_to_send=plan.rows_to_send(),
        contacts=figures.contacts,
        contacts_notes_unknown=figures.unknown_notes,
        estimated_minutes=round(figures.minutes, 2),
        concurrency=settings.concurrency or "adaptive",
        max_concurrency=settings.max_concurrency,
        dry_run=options.dry_run,
        message=f"{len(plan.table)} requests to {figures.contacts} contacts take {figures.took()}",
    )


def _send_or_dry_run(
    options: RunOptions,
    plan: Plan,
    recorder: Recorder,
    send: SendConfig | None,
    stopper: StopSignal,
    ahead: HistoryAhead | None,
) -> SendReport:
    if stopper.reason is not None:  # stopped before sending: every request not_attempted
        return SendReport(Counters())
    if send is None:
        for request in plan.table:
            recorder.result(request, Outcome(Status.DRY_RUN, finished_at=now_iso()))
        return SendReport(Counters())
    show = options.progress and sys.stderr.isatty()
    recorder.progress = _progress_bar(plan.rows_to_send()) if show else None
    showing_progress(recorder.progress)
    try:
        with _collector_ignoring_the_plan():
            return asyncio.run(_send(send, plan, recorder, stopper, ahead))
    finally:
        showing_progress(None)
        if recorder.progress is not None:
            recorder.progress.close()


def _progress_bar(rows: int) -> tqdm[Any]:
    from tqdm import tqdm  # here: only a terminal shows a bar, and tqdm costs ~25 ms to import

    return tqdm(total=rows, unit="row", file=sys.stderr)


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


def _send_config(
    settings: Settings, options: RunOptions, key_file: str | None, api_key: str | None
) -> SendConfig:
    """How to send, settled before anything is read: a bad key or CA bundle stops the run first."""
    way = route(settings.base_url, settings.proxy)
    return SendConfig(
        base_url=settings.base_url,
        api_key=load_key(settings, key_file, api_key),
        limit=settings.limit,
        period_s=settings.rate_period_s,
        concurrency=settings.concurrency,
        max_concurrency=settings.max_concurrency,
        timeout_s=settings.timeout_s,
        policy=RetryPolicy(settings.max_retries, settings.backoff_base_s),
        max_outage_s=settings.max_outage_s,
        proxy=way.proxy,
        proxy_shown=way.shown(),
        tls=tls_context(settings.ca_bundle),
        first_rejections=settings.first_rejections,
    )


async def _send(
    config: SendConfig,
    plan: Plan,
    recorder: Recorder,
    stopper: StopSignal,
    ahead: HistoryAhead | None,
) -> SendReport:
    import sync_worker.send.connector  # noqa: F401  aiohttp's import (~0.2 s, more on a busy machine)

    stop = asyncio.Event()
    stopper.bind(stop)
    left = stopper.time_left()
    if left is not None:  # the window counts from the run's start
        config = replace(config, max_duration_s=left)
        asyncio.get_running_loop().call_later(left, stopper.request, "max_duration")

    def made(requests: list[Request]) -> None:
        if ahead is not None and not ahead.planned(requests):
            stop.set()  # at once, on this loop: none of these requests goes out

    sink = recorder.result if ahead is None else ahead.result
    report = await Sender(config, sink, stop).run(ChainQueue(plan.table, made))
    if report.past_deadline and recorder.cut_short:  # the pacer refuses slots from the
        stopper.request("max_duration")  # deadline on, maybe before the timer above has run
    return report
