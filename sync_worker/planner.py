"""Turn a batch of rows into the requests a run sends, and settle the rows it will not send.

Pure: takes the batch, the merge inputs and what the state remembers; returns a Plan. Rows of
one interview become one request; requests of one contact form a chain sent in file order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sync_worker.merger import Context, MergeRules, fold
from sync_worker.reader import CONTEXT_PREFIX, Batch

MAX_ID = 2**63 - 1
ID_PATTERN = re.compile(r"\d{1,19}")
NOTES_KEY = "notes"

INVALID = "invalid"
SKIPPED = "skipped_unchanged"
NOT_ATTEMPTED = "not_attempted"


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of a row decided before any request: invalid, skipped or left out."""

    status: str
    error_code: str = ""
    error_message: str = ""
    sha256: str = ""
    merge: str = "off"


@dataclass(slots=True)
class Request:
    """One PATCH: an interview's combined rows."""

    interview_id: int
    body: dict[str, Any]
    body_json: bytes
    sha256: str
    rows: list[int]  # positions in the batch frame, in file order
    contact: str
    merge: str  # off | merged | no_existing
    context: Context | None  # the contact_context sent, remembered by the state on success


@dataclass
class Plan:
    requests: list[Request]
    chains: list[list[Request]]  # per contact, in file order; chains run concurrently
    settled: dict[int, Settled]  # row position -> outcome decided up front
    contacts_with_several_contexts: int = 0
    contacts_merged: int = 0
    contacts_no_existing: int = 0
    warnings: list[str] = field(default_factory=list)

    def rows_to_send(self) -> int:
        return sum(len(r.rows) for r in self.requests)


@dataclass(frozen=True)
class PlanOptions:
    merge: bool = False
    rules: MergeRules = field(default_factory=MergeRules)
    force: bool = False
    max_rows: int | None = None


@dataclass(frozen=True)
class Memory:
    """What is known before the run: the state's last sends and a notes export."""

    sent_hashes: Mapping[int, str] = field(default_factory=dict)
    state_contexts: Mapping[str, Context] = field(default_factory=dict)
    notes_by_email: Mapping[str, Context] = field(default_factory=dict)
    notes_by_interview: Mapping[int, Context] = field(default_factory=dict)


@dataclass(slots=True)
class _Row:
    position: int
    interview_id: int
    email: str
    fields: dict[str, str]
    context: Context | None


class RowProblem(ValueError):
    def __init__(self, code: str, column: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.column = column


def build_plan(batch: Batch, options: PlanOptions, memory: Memory) -> Plan:
    """Validate rows, combine them per interview and contact, merge, hash and skip."""
    settled: dict[int, Settled] = {}
    rows = _parse_rows(batch, settled)
    interviews = _group_interviews(rows)
    plan = Plan([], [], settled)
    for contact, members in _group_contacts(interviews).items():
        plan.requests.extend(_contact_requests(contact, members, options, memory, plan))
    _skip_unchanged(plan, options, memory)
    _apply_max_rows(plan, options.max_rows)
    plan.chains = _chains(plan.requests)
    return plan


def _parse_rows(batch: Batch, settled: dict[int, Settled]) -> list[_Row]:
    frame = batch.frame
    ctx_columns = [CONTEXT_PREFIX + k for k in batch.context_keys]
    rows: list[_Row] = []
    columns = _columns(frame, ctx_columns)
    for position, raw_id, is_valid, name, objective, context, email, *ctx in columns:
        where = _where(batch, position)
        try:
            if not is_valid or int(raw_id) > MAX_ID:
                raise RowProblem(
                    "invalid_interview_id",
                    "interview_id",
                    f"interview_id {raw_id!r} is not a positive whole number",
                )
            fields = {k: v for k, v in (("contact_name", name), ("objective", objective)) if v}
            row_context = _row_context(context, dict(zip(batch.context_keys, ctx, strict=True)))
            if not fields and row_context is None:
                raise RowProblem(
                    "no_fields",
                    "",
                    "nothing to update: contact_name, objective, contact_context "
                    "and context.* are all empty",
                )
        except RowProblem as problem:
            settled[position] = Settled(INVALID, problem.code, where(problem.column) + str(problem))
            continue
        rows.append(_Row(position, int(raw_id), email.lower(), fields, row_context))
    return rows


def _columns(frame: pd.DataFrame, ctx_columns: list[str]) -> Any:
    """Stripped cells, column by column, with a vectorised id check, zipped into rows."""
    ids = frame["interview_id"].str.strip()
    valid = ids.str.fullmatch(ID_PATTERN.pattern) & (ids.str.lstrip("0") != "")
    stripped = [frame[c].str.strip() for c in ("contact_name", "objective", "contact_context")]
    email = frame["contact_email"].str.strip()
    ctx = [frame[c].str.strip() for c in ctx_columns]
    return zip(range(len(frame)), ids, valid, *stripped, email, *ctx, strict=True)


def _where(batch: Batch, position: int) -> Any:
    def describe(column: str) -> str:
        file_index, row, _id, _email = batch.locate(position)
        return f"{batch.files[file_index]} row {row}" + (f", column {column}: " if column else ": ")

    return describe


def _row_context(text: str, ctx: dict[str, str]) -> Context | None:
    """contact_context (text or JSON object) and context.<key> cells as one context."""
    extra = {k: v for k, v in ctx.items() if v}
    base: Context | None = None
    if text.startswith("{"):
        try:
            base = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RowProblem(
                "invalid_json", "contact_context", f"not valid JSON ({exc.msg} at char {exc.pos})"
            ) from None
        if not isinstance(base, dict):
            raise RowProblem("invalid_json", "contact_context", "JSON is not an object")
    elif text:
        base = text
    if not extra:
        return base
    if base is None:
        return extra
    if isinstance(base, str):
        return {NOTES_KEY: base, **extra}
    return {**base, **extra}


@dataclass(slots=True)
class _Interview:
    interview_id: int
    rows: list[_Row]
    email: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def _group_interviews(rows: list[_Row]) -> list[_Interview]:
    """Rows of one interview_id, in file order; a later non-empty value wins."""
    by_id: dict[int, _Interview] = {}
    for row in rows:
        interview = by_id.setdefault(row.interview_id, _Interview(row.interview_id, []))
        interview.rows.append(row)
        interview.fields.update(row.fields)
        if row.email and not interview.email:
            interview.email = row.email
    return list(by_id.values())


def _group_contacts(interviews: list[_Interview]) -> dict[str, list[_Interview]]:
    """Interviews sharing a contact_email; without one, each interview is its own contact."""
    contacts: dict[str, list[_Interview]] = {}
    for interview in interviews:
        key = interview.email or f"interview:{interview.interview_id}"
        contacts.setdefault(key, []).append(interview)
    return contacts


def _contact_requests(
    contact: str, members: list[_Interview], options: PlanOptions, memory: Memory, plan: Plan
) -> list[Request]:
    contexts = [r.context for i in members for r in i.rows if r.context is not None]
    if len({_canonical(c) for c in contexts}) > 1:
        plan.contacts_with_several_contexts += 1
    if not options.merge:
        return [_request(i, contact, _last_context(i), "off") for i in members]
    if not contexts:
        return [_request(i, contact, None, "off") for i in members]
    existing = _existing_notes(contact, members, memory)
    label = "no_existing" if existing is None else "merged"
    if existing is None:
        plan.contacts_no_existing += 1
    else:
        plan.contacts_merged += 1
    combined = fold(existing or None, contexts, options.rules)
    return [_request(i, contact, combined, label) for i in members]


def _last_context(interview: _Interview) -> Context | None:
    contexts = [r.context for r in interview.rows if r.context is not None]
    return contexts[-1] if contexts else None


def _existing_notes(contact: str, members: list[_Interview], memory: Memory) -> Context | None:
    """The notes file wins over the state; '' means known to be empty."""
    if members[0].email and members[0].email in memory.notes_by_email:
        return memory.notes_by_email[members[0].email]
    for interview in members:
        if interview.interview_id in memory.notes_by_interview:
            return memory.notes_by_interview[interview.interview_id]
    return memory.state_contexts.get(contact)


def _request(interview: _Interview, contact: str, context: Context | None, merge: str) -> Request:
    body: dict[str, Any] = dict(interview.fields)
    if context is not None:
        body["contact_context"] = context
    body_json = _canonical(body).encode("utf-8")
    return Request(
        interview_id=interview.interview_id,
        body=body,
        body_json=body_json,
        sha256=hashlib.sha256(body_json).hexdigest(),
        rows=[r.position for r in interview.rows],
        contact=contact,
        merge=merge if context is not None else "off",
        context=context,
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _skip_unchanged(plan: Plan, options: PlanOptions, memory: Memory) -> None:
    if options.force:
        return
    keep: list[Request] = []
    for request in plan.requests:
        if memory.sent_hashes.get(request.interview_id) == request.sha256:
            _settle(plan, request, Settled(SKIPPED, sha256=request.sha256, merge=request.merge))
        else:
            keep.append(request)
    plan.requests = keep


def _apply_max_rows(plan: Plan, max_rows: int | None) -> None:
    """--max-rows: send the first N requests in file order; the rest are not attempted."""
    if max_rows is None or len(plan.requests) <= max_rows:
        return
    for request in plan.requests[max_rows:]:
        _settle(plan, request, Settled(NOT_ATTEMPTED, sha256=request.sha256, merge=request.merge))
    plan.requests = plan.requests[:max_rows]


def _settle(plan: Plan, request: Request, outcome: Settled) -> None:
    for position in request.rows:
        plan.settled[position] = outcome


def _chains(requests: list[Request]) -> list[list[Request]]:
    chains: dict[str, list[Request]] = {}
    for request in requests:
        chains.setdefault(request.contact, []).append(request)
    return list(chains.values())


def plan_line(request: Request, batch: Batch) -> dict[str, Any]:
    """The JSON object `sync-worker plan` prints for one request."""
    located = [batch.locate(p) for p in request.rows]
    return {
        "interview_id": request.interview_id,
        "body": request.body,
        "source_rows": [{"source_file": batch.files[f], "source_row": r} for f, r, _, _ in located],
        "merge": request.merge,
    }
