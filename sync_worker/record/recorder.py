"""What a run writes, and when: a ledger line for every row, a state row for every confirmed send.

Results are queued as they arrive and written together every 10 ms (ledger lines and one state
commit per batch), so the hot path only queues, yet a kill -9 loses only what arrived in the last
10 ms. A send is written to the state only once the server confirmed it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sync_worker.clock import now_iso
from sync_worker.errors import SyncWorkerError
from sync_worker.plan import Outcomes, Plan
from sync_worker.plan.request_table import CARRIER, LEAN, Request, fields_of
from sync_worker.read.reader import Batch
from sync_worker.record.ledger import Ledger, Result
from sync_worker.send.client import Outcome
from sync_worker.store.state import State, StateWriteError, Success
from sync_worker.vocabulary import Status

if TYPE_CHECKING:
    from tqdm import tqdm

FLUSH_EVERY_S = 0.01  # results reach the ledger and the state within this time, in batches


def _carried(result: Result, carrier: int) -> Result:
    """A row's line when another interview's request carried it: that interview named, and in
    an error message too (fixing that interview, or --no-coalesce, is what helps)."""
    message = result.error_message
    if message:
        message = f"sent with interview {carrier}, which carried its contact's fields: {message}"
    return result._replace(sent_with=str(carrier), error_message=message)


class RecordError(SyncWorkerError):
    """The ledger or the state could not be written mid-run: the run stops (exit 3)."""


@dataclass
class Recorder:
    run_id: str
    batch: Batch
    ledger: Ledger
    state: State | None  # None: a dry run, which remembers nothing
    progress: tqdm[Any] | None = None
    counts: Counter[str] = field(default_factory=Counter)  # status -> rows written
    written: set[int] = field(default_factory=set)  # rows of requests with their ledger line
    on_failure: Callable[[str], None] | None = None  # told when a scheduled flush fails
    remarks: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # revert: fields left
    failure: Exception | None = None  # what a scheduled flush met: the run stops on it
    cut_short: int = 0  # rows whose request ended not_attempted (stopped waiting for its slot)
    cut_in_flight: int = 0  # requests cut off in flight by a stop: sent, never answered
    # A contact's fields once per contact (Plan.sent_with, Plan.riders): rows that ride in
    # another interview's request, and the interviews each carrier's success also settles
    sent_with: Mapping[int, int] = field(default_factory=dict)
    riders: Mapping[int, list[tuple[int, str]]] = field(default_factory=dict)
    _queued: list[tuple[Request, Outcome]] = field(default_factory=list)
    _flush_scheduled: bool = False
    _carrier_failed: set[str] = field(default_factory=set)  # contacts whose carrier did not end ok

    def settle_all(self, outcomes: Outcomes) -> None:
        """The lines of every row decided without a request (invalid, skipped, left out), in
        position order, written as columns a chunk at a time."""
        for rows in outcomes.chunks():
            where = self.batch.locate_all(rows.positions)
            self.ledger.write_settled(self.run_id, where, rows, self._sent_with(rows.positions))
            self.counts.update(rows.statuses)

    def _sent_with(self, positions: np.ndarray) -> list[str] | None:
        if not self.sent_with:
            return None
        found = self.sent_with
        return [str(found[p]) if p in found else "" for p in positions.tolist()]

    def result(self, request: Request, outcome: Outcome) -> None:
        """A request's outcome (the hot path: queued, written in the next flush)."""
        self._queued.append((request, outcome))
        if outcome.status == Status.NOT_ATTEMPTED:
            self.cut_short += len(request.rows)
        if self.progress is not None:
            self.progress.update(len(request.rows))
        self._schedule_flush()

    def _write_queued(self) -> None:
        queued, self._queued = self._queued, []
        if self.failure is not None:  # writing again would only fail again
            return
        successes = []
        lines: list[tuple[list[int], Result]] = []
        for request, outcome in queued:
            result = Result(
                status=outcome.status,
                http_status=outcome.http_status,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                attempts=outcome.attempts,
                merge=request.merge,
                payload_sha256=request.sha256,
                finished_at=outcome.finished_at,
                duration_ms=outcome.duration_ms,
            )
            if (
                self.remarks
                and outcome.status == Status.OK
                and request.interview_id in self.remarks
            ):
                code, message = self.remarks[request.interview_id]
                result = result._replace(error_code=code, error_message=message)
            lines.append((request.rows, result))
            self.written.update(request.rows)
            if request.role == CARRIER and outcome.status != Status.OK:
                self._carrier_failed.add(request.contact)
            said = outcome.http_status
            if (
                self.state is not None
                and said is not None
                and (
                    outcome.status == Status.OK
                    or (outcome.status == Status.FAILED and said in (400, 404))
                )
            ):  # the API's own answer about this interview (riders have none)
                at = outcome.finished_at or now_iso()
                kept = 200 if outcome.status == Status.OK else said  # any 2xx that confirmed it
                self.state.answered_by_api(request.interview_id, kept, self.run_id, at)
            unanswered = outcome.status == Status.FAILED and outcome.http_status is None
            if unanswered and self.state is not None:  # the server may hold it, or not
                carried = [name for name, _value in fields_of(request.body_json.decode("utf-8"))]
                self.state.unanswered(request, carried, self.run_id)
            if outcome.status == Status.OK:
                at = outcome.finished_at or now_iso()
                successes.append(
                    Success(
                        request.interview_id,
                        self._remembered_hash(request),
                        request.contact,
                        request.context_json,
                        self.run_id,
                        at,
                    )
                )
                for rider, digest in self.riders.get(request.interview_id, ()):
                    successes.append(Success(rider, digest, request.contact, None, self.run_id, at))
        self._lines(lines)
        if self.state is not None:
            self.state.add(successes)

    def _remembered_hash(self, request: Request) -> str:
        """The whole body's hash, which the next run compares (select.py); what was sent
        instead when the request leaned on a carrier that did not get its contact's fields
        through (the next run then sends them)."""
        if not request.full_sha256:
            return request.sha256
        if request.role == LEAN and request.contact in self._carrier_failed:
            return request.sha256
        return request.full_sha256

    def _lines(self, lines: list[tuple[list[int], Result]]) -> None:
        """A line for each row of each (positions, result), the rows of one request sharing its
        result; a row that rode with another interview's request names it."""
        if not lines:
            return
        positions: list[int] = []
        results: list[Result] = []
        sent_with = self.sent_with
        for rows, result in lines:
            positions += rows
            if sent_with and any(p in sent_with for p in rows):
                results += [
                    _carried(result, sent_with[p]) if p in sent_with else result for p in rows
                ]
            else:
                results += [result] * len(rows)
            self.counts[result.status] += len(rows)
        where = self.batch.locate_all(np.array(positions, dtype=np.int64))
        self.ledger.write_results(self.run_id, where, results)

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self._scheduled_flush)
            self._flush_scheduled = True
        except RuntimeError:
            self.flush()

    def _scheduled_flush(self) -> None:
        """A flush on the event loop: an error cannot be raised to anyone there, so it is kept
        and the run is told to stop; `check` raises it once sending has ended."""
        try:
            self.flush()
        except (OSError, StateWriteError) as exc:
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        """The ledger or the state could not be written: the run is told to stop."""
        if self.failure is None:
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure("record_error")

    def flush(self) -> None:
        self._flush_scheduled = False
        self._write_queued()
        if self.failure is not None:
            return
        if self.state is not None:
            self.state.flush()
        self.ledger.flush()

    def check(self) -> None:
        """Raise what a scheduled flush met: results must never vanish without a word."""
        if self.failure is not None:
            raise RecordError(
                f"cannot write the results to {self.ledger.path} or the state "
                f"({self.failure}): the run stopped sending; the results of its last moments "
                "are missing from the ledger; fix the disk and re-run the same command (sends "
                "the state did not record are made again)"
            )

    def fill_unwritten(self, plan: Plan, on_the_wire: Mapping[int, tuple[float, int]]) -> int:
        """Every row gets its line: never sent is not_attempted (written as columns: a backfill
        stopped early leaves a million); cut off in flight, failed, with the tries that went out
        and how long it had been sending (`on_the_wire`: interview id -> (when its send began,
        monotonic; tries)). Returns how many rows the plan meant to send were left
        not_attempted (these, and those the sender ended so while they waited for their slot)."""
        table = plan.table
        unwritten = np.array(
            [i for i, p in enumerate(table.position.tolist()) if p not in self.written],
            dtype=np.int64,
        )
        wire = np.fromiter(on_the_wire, dtype=np.int64, count=len(on_the_wire))
        in_flight = np.isin(table.interview_id[unwritten], wire)
        now = time.monotonic()
        for request in table.take(unwritten[in_flight]):
            began, tries = on_the_wire[request.interview_id]
            outcome = Outcome(
                Status.FAILED,
                error_code="interrupted",
                finished_at=now_iso(),
                error_message="stopped while in flight; the server may have it",
                attempts=tries,
                duration_ms=round((now - began) * 1000),
            )
            self.result(request, outcome)
            self.cut_in_flight += 1
        never_sent = Outcomes()
        never_sent.set_aside(Status.NOT_ATTEMPTED, table, unwritten[~in_flight])
        self.settle_all(never_sent)
        return self.cut_short + len(never_sent)
