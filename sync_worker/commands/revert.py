"""`sync-worker revert RUN_ID`: put back what a run changed (SPEC section 12).

From that run's history, each field it changed gets back its value before, the JSON byte for
byte as it was known, through every interview the run wrote it through (a contact's notes went
through each of its interviews: the server may keep their contacts apart, whatever the export
claimed). A field whose value before was never known is `not_restorable` (nothing is
sent); one that a later run changed again (its last known value is no longer what that run wrote)
is `conflict` and left alone unless --force. That is judged on what the field belongs to: the
interview, or the contact under any key a later run gave it (another email, none, the API's
contact), through any of its interviews. A field already back to its value before (a re-run
after a kill, or a later run that wrote it back) needs nothing. The requests go through the same
machinery as `run` (pipeline.launch): pacing, retries, lock, signals, ledger, summary, state and
history, so a revert is itself a run that can be reverted.

Ledger: one line per interview the run's changes went to; `source_file` is `revert <RUN_ID>`
and `source_row` the interview's place (1-based) in the order that run's changes were confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sync_worker.commands.pipeline import Prepared, is_dry_run_id
from sync_worker.errors import ConfigError
from sync_worker.fields import CANONICAL_COLUMNS, CONTACT_KEY, CONTEXT, ID, contact_key, email_of
from sync_worker.merger import canonical
from sync_worker.plan import Outcomes, Plan, Settled
from sync_worker.plan.request_table import Request, RequestTable
from sync_worker.read.reader import FILE_COL, ROW_COL, Batch
from sync_worker.settings.config import RunOptions, Settings
from sync_worker.store.digests import sha256_hex
from sync_worker.store.history import EARLIER_SEND, Change, FieldKey, Version
from sync_worker.store.state import State
from sync_worker.vocabulary import Status

if TYPE_CHECKING:
    from sync_worker.commands.signals import StopSignal
    from sync_worker.send.sender import SendConfig

SEND = "send"  # a field to put back; the others end as their line's status


@dataclass
class FieldPlan:
    """One field the run changed: what to put back, and what became of it in the plan."""

    first: Version  # the run's first change of the field: its value before
    wrote: str  # the value the run left it at (its last change of the field)
    current: str | None  # the last value known now
    writer: str = ""  # the later run that wrote `current` ("": none did)
    through: list[int] = field(default_factory=list)  # the interviews the run wrote it through
    status: str = SEND  # or not_restorable, conflict, skipped_unchanged (already back)
    message: str = ""

    @property
    def key(self) -> FieldKey:
        return (self.first.level, self.first.key, self.first.field)


@dataclass
class InterviewPlan:
    interview_id: int
    contact: str
    fields: list[FieldPlan] = field(default_factory=list)


@dataclass
class RevertJob:
    """What `revert` plans: the history of one run, put back."""

    settings: Settings
    target: str  # the run to revert
    force: bool = False

    def load(self) -> None:
        """Before the lock: the state must exist (opening it would create an empty one)."""
        path = Path(self.settings.state_path)
        if not path.is_file():
            raise ConfigError(
                f"state {path} not found: a revert reads the run's history from the state; "
                "give the --state that run used"
            )

    def before_planning(self, state: State, send: SendConfig, stopper: StopSignal) -> SendConfig:
        return send

    def prepare(self, state: State, options: RunOptions) -> Prepared:
        self._check_known(state)
        interviews = self._interviews(state)
        if not options.dry_run:  # other interviews of these contacts no longer hold what
            state.forget_payloads(  # they were last sent with (a run may have sent it once)
                f.first.key
                for entry in interviews
                for f in entry.fields
                if f.status == SEND and f.first.level == "contact"
            )
        return _prepared(self.target, interviews)

    def _check_known(self, state: State) -> None:
        where = f"the state {self.settings.state_path}"
        if state.was_pruned(self.target):
            raise ConfigError(
                f"run {self.target}: its history in {where} was pruned ([state] history_days "
                "of a later run), so what it changed can no longer be put back"
            )
        if state.run_started_at(self.target) is not None:
            return
        if is_dry_run_id(self.target):
            raise ConfigError(
                f"run {self.target} was a dry run: it sent nothing, so there is nothing to put "
                "back; give the run_id of a run that sent (a ledger's run_id column)"
            )
        raise ConfigError(
            f"run {self.target} is not in {where}: give the run_id of a run made with this "
            "state (a ledger's run_id column, or `sync-worker history`), or the --state it used"
        )

    def _interviews(self, state: State) -> list[InterviewPlan]:
        """The run's changed fields, each with the interviews it went through, grouped by
        interview (in the order the run's changes were confirmed)."""
        fields: dict[FieldKey, FieldPlan] = {}
        order: dict[int, None] = {}
        for version in state.versions_of_run(self.target, repeats=True):
            key = (version.level, version.key, version.field)
            plan = fields.get(key)
            if plan is None:
                if version.sent_json == version.before_json:  # a repeat of no version
                    continue
                plan = fields[key] = FieldPlan(version, version.sent_json, None)
            plan.wrote = version.sent_json
            if version.interview_id not in plan.through:
                plan.through.append(version.interview_id)
            order.setdefault(version.interview_id)
        interviews = {i: InterviewPlan(i, "") for i in order}
        for key, plan in fields.items():
            later = state.later_write(self.target, key, plan.through)
            plan.current, plan.writer = later if later is not None else (plan.wrote, "")
            self._decide(plan)
            for interview_id in plan.through:
                interviews[interview_id].fields.append(plan)
        for entry in interviews.values():
            entry.contact = _contact_of(state, entry)
        return [entry for entry in interviews.values() if entry.fields]

    def _decide(self, plan: FieldPlan) -> FieldPlan:
        name, before = plan.first.field, plan.first.before_json
        if before is None:
            plan.status = Status.NOT_RESTORABLE
            plan.message = f"{name}: its value before run {self.target} was never known"
        elif plan.current == before:
            plan.status = Status.SKIPPED_UNCHANGED
            plan.message = f"{name}: already as before run {self.target}"
        elif plan.current != plan.wrote and not self.force:
            writer = plan.writer or "a later run"
            plan.status = Status.CONFLICT
            plan.message = (
                f"{name}: run {writer} wrote it after run {self.target}; "
                "left alone (--force puts it back anyway)"
            )
        return plan


def _contact_of(state: State, interview: InterviewPlan) -> str:
    """The contact key the interview's sends carry (for an objective alone: the state's)."""
    for plan in interview.fields:
        if plan.first.level == "contact":
            return plan.first.key
    found = state.contact_of(interview.interview_id)
    return found or contact_key("", interview.interview_id)


def _prepared(target: str, interviews: list[InterviewPlan]) -> Prepared:
    batch = _batch(target, interviews)
    settled: dict[int, Settled] = {}
    requests: list[Request] = []
    changes: dict[int, tuple[Change, ...]] = {}
    remarks: dict[int, tuple[str, str]] = {}
    unresolved = 0
    for position, interview in enumerate(interviews):
        sending = [f for f in interview.fields if f.status == SEND]
        left = [f for f in interview.fields if f.status in (Status.NOT_RESTORABLE, Status.CONFLICT)]
        unresolved += len(left)
        if sending:
            request = _request(position, interview, sending)
            requests.append(request)
            changes[interview.interview_id] = tuple(
                _change(f, interview.interview_id) for f in sending
            )
            if left:
                remarks[interview.interview_id] = ("partly_restored", _joined(left))
        else:
            settled[position] = _settled(interview)
    plan = Plan(RequestTable.from_requests(requests), Outcomes(settled))
    return Prepared(
        batch, plan, changes, unresolved=unresolved, inputs=(f"revert {target}",), remarks=remarks
    )


def _joined(fields: list[FieldPlan]) -> str:
    return "; ".join(f.message for f in fields)


def _settled(interview: InterviewPlan) -> Settled:
    """An interview with nothing to send: the worst of its fields names the line."""
    for status in (Status.CONFLICT, Status.NOT_RESTORABLE, Status.SKIPPED_UNCHANGED):
        fields = [f for f in interview.fields if f.status == status]
        if fields:
            code = "" if status == Status.SKIPPED_UNCHANGED else status.value
            return Settled(status, code, _joined(interview.fields))
    raise AssertionError("an interview without fields")  # pragma: no cover


def _request(position: int, interview: InterviewPlan, fields: list[FieldPlan]) -> Request:
    """The values before, written as they were known: the body is built from their JSON texts,
    so what is sent back is byte for byte what was there."""
    members = sorted((f.first.field, f.first.before_json or "") for f in fields)
    body = "{" + ",".join(f"{canonical(name)}:{value}" for name, value in members) + "}"
    context = next((value for name, value in members if name == CONTEXT), None)
    body_json = body.encode("utf-8")
    return Request(
        interview.interview_id,
        body_json,
        sha256_hex(body_json),
        [position],
        interview.contact,
        "off",
        context,
    )


def _change(plan: FieldPlan, interview_id: int) -> Change:
    """What putting the field back through this interview changes (a contact's field through
    several interviews is shared: the first is the version, the others repeat it)."""
    first = plan.first
    now = plan.current if plan.current is not None else plan.wrote
    return Change(
        first.level,
        first.key,
        interview_id,
        first.field,
        now,
        first.before_json or "",
        EARLIER_SEND,
        1,
        len(plan.through) > 1,
    )


def _batch(target: str, interviews: list[InterviewPlan]) -> Batch:
    """One row per interview: what its ledger line names."""
    count = len(interviews)
    frame = pd.DataFrame({column: [""] * count for column in CANONICAL_COLUMNS})
    frame[ID] = [str(i.interview_id) for i in interviews]
    frame[CONTACT_KEY] = [email_of(i.contact) for i in interviews]
    frame[FILE_COL] = [0] * count
    frame[ROW_COL] = list(range(1, count + 1))
    return Batch(frame, (f"revert {target}",), (), ())
