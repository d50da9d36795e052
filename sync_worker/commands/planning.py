"""The first half of the pipeline, read -> plan, with its warnings logged: all that `plan` and
`validate` do, and where `run` starts (pipeline.py goes on: send -> record).

Apart from pipeline.py so that those two commands never import the sending side (the client,
aiolimiter, yarl, the recorder: ~30 ms of start-up), as the test of start-up imports checks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import CONTACT_KEY, ID, NO_EMAIL, contact_key, is_email_key
from sync_worker.logs import get_logger
from sync_worker.merger import MergeRules
from sync_worker.plan import Memory, Plan, PlanOptions, build_plan, plan_lines
from sync_worker.plan.contacts import lower
from sync_worker.plan.estimate import estimate
from sync_worker.plan.guards import judge
from sync_worker.read.notes import Aliases, NotesFile, read_notes
from sync_worker.read.reader import Batch, ReadOptions, read_batch
from sync_worker.settings.config import RunOptions, Settings
from sync_worker.store.remembered import Links, NotJSON, Remembered
from sync_worker.store.state import State

if TYPE_CHECKING:
    import pandas as pd

INVALID_LOGGED = 5  # invalid rows logged one by one; past this, only counted


def read_inputs(settings: Settings, inputs: Sequence[str | pd.DataFrame]) -> Batch:
    options = ReadOptions(
        settings.encoding,
        settings.delimiter,
        settings.columns,
        settings.context_columns,
        settings.sheet,
    )
    batch = read_batch(inputs, options)
    log = get_logger()
    for warning in batch.warnings:
        log.warning("input_warning", message=warning)
    for aside in batch.set_aside:
        log.warning(
            "lines_set_aside",
            file=aside.path,
            count=aside.count,
            reasons=dict(aside.kinds),
            message=aside.message(),
        )
    return batch


def make_plan(
    settings: Settings, options: RunOptions, batch: Batch, state: State, for_sending: bool = True
) -> Plan:
    plan, _notes = plan_with_notes(settings, options, batch, state, for_sending)
    return plan


def merging(settings: Settings, options: RunOptions) -> bool:
    """--merge, or --existing-notes, which implies it."""
    return settings.merge or options.existing_notes is not None


def plan_with_notes(
    settings: Settings,
    options: RunOptions,
    batch: Batch,
    state: State,
    for_sending: bool = True,
    lists_invalid: bool = False,
) -> tuple[Plan, NotesFile]:
    """The plan, and the notes file it used (its problems are logged here). `lists_invalid`:
    the caller lists every invalid row itself (`validate`): they are not logged too."""
    merge = merging(settings, options)
    sent, links = state.sends_and_links(True)
    notes = (
        read_notes(
            Path(options.existing_notes), settings, state.seen_notes(), _aliases(batch, links)
        )
        if options.existing_notes
        else NotesFile()
    )
    _log_notes_problems(notes)
    _by_the_email_sent_as(notes, links)
    # the freshness rule needs the times; so does merging what a contact's keys remember, in
    # the order it was sent (interviews sent without an email, or resolved, may join another)
    with_times = bool(
        notes.by_email or notes.by_interview or settings.resolve_contacts or links.any_unnamed()
    )
    memory = Memory(
        sent=sent,
        state=state.remembered(with_times) if merge else Remembered.empty(),
        notes_by_email=notes.by_email,
        notes_by_interview=notes.by_interview,
        links=links,
        resolved=state.resolved() if settings.resolve_contacts else Links.empty(),
        answers=state.answers,
        confirmed=state.last_values if state.knows_values() else None,
    )
    plan_options = PlanOptions(
        merge=merge,
        rules=MergeRules.build(settings.merge_separator, settings.append_keys),
        force=options.force,
        max_rows=options.max_rows,
        for_sending=for_sending,
        coalesce=settings.coalesce,
    )
    try:
        plan = build_plan(batch, plan_options, memory)
    except NotJSON:
        raise state.unusable("a context that is not JSON") from None
    if lists_invalid:
        every_invalid = ""
    elif for_sending:
        every_invalid = "see the ledger for every invalid row"
    else:
        every_invalid = "`sync-worker validate` lists every invalid row"
    _log_plan_warnings(plan, warn_contexts=for_sending and not merge, every_invalid=every_invalid)
    return plan, notes


def _by_the_email_sent_as(notes: NotesFile, links: Links) -> None:
    """Notes-file rows keyed by an interview's id count for the contact the state sent it as,
    whether or not the interview is in tonight's export (a contact's rows in the file, by
    email and by each of its interviews' ids, are combined)."""
    if not notes.by_interview or not len(links):
        return
    ids = np.fromiter(notes.by_interview, dtype=np.int64, count=len(notes.by_interview))
    for number, key in zip(ids.tolist(), links.keys_of(ids).to_pylist(), strict=True):
        if key and is_email_key(key):
            listed = notes.by_email.setdefault(key, [])
            listed += [note for note in notes.by_interview[number] if note not in listed]


def _aliases(batch: Batch, links: Links) -> Aliases:
    """The other keys each of some contact keys is known by: an interview's emails (its rows'
    in the export, the one the state sent it as), an email's interviews (those whose rows give
    it, those the state sent as it)."""

    def known_as(keys: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}

        def pair(one: str, other: str) -> None:
            for key, alias in ((one, other), (other, one)):
                if key in wanted and alias not in found.setdefault(key, []):
                    found[key].append(alias)

        wanted = set(keys)
        ids = {int(key.removeprefix(NO_EMAIL)) for key in keys if key.startswith(NO_EMAIL)}
        emails = {key for key in keys if is_email_key(key)}
        if not wanted:
            return found
        if CONTACT_KEY in batch.frame.columns:  # by columns: a million rows, a few hits
            texts = _trimmed(batch, ID)
            mails = lower(_trimmed(batch, CONTACT_KEY))
            hit = pc.or_(
                pc.is_in(texts, value_set=pa.array([str(number) for number in ids], pa.string())),
                pc.is_in(mails, value_set=pa.array(sorted(emails), pa.string())),
            )
            for text, email in zip(
                texts.filter(hit).to_pylist(), mails.filter(hit).to_pylist(), strict=True
            ):
                if email and text.isdigit():
                    pair(contact_key("", int(text)), email)
        if len(links):  # a state's million links: looked at by array, the few hits one by one
            hits = np.isin(links.ids, np.array(sorted(ids), dtype=np.int64))
            hits |= np.asarray(
                pc.is_in(links.keys, value_set=pa.array(sorted(emails), pa.string()))
                .fill_null(False)
                .to_numpy(zero_copy_only=False),
                dtype=bool,
            )
            at = pa.array(np.flatnonzero(hits))
            for number, key in zip(
                links.ids[hits].tolist(), links.keys.take(at).to_pylist(), strict=True
            ):
                if key and is_email_key(key):
                    pair(contact_key("", number), key)
        return found

    return known_as


def _trimmed(batch: Batch, column: str) -> pa.ChunkedArray:
    values = pa.array(batch.frame[column], pa.string())
    if not isinstance(values, pa.ChunkedArray):
        values = pa.chunked_array([values])
    return pc.utf8_trim_whitespace(values.fill_null(""))


def _log_notes_problems(notes: NotesFile) -> None:
    log = get_logger()
    for warning in notes.warnings:
        log.warning("input_warning", message=warning)
    for problem in notes.problems[:INVALID_LOGGED]:
        log.warning("notes_row_unusable", message=problem)
    if len(notes.problems) > INVALID_LOGGED:
        log.warning(
            "notes_rows_unusable",
            count=len(notes.problems),
            logged=INVALID_LOGGED,
            message="`sync-worker validate ... --existing-notes FILE` lists every one",
        )


def _log_plan_warnings(plan: Plan, warn_contexts: bool, every_invalid: str) -> None:
    """`every_invalid`: where the user finds every invalid row ("": `validate`, which lists
    them all itself, logs none)."""
    log = get_logger()
    invalid = plan.settled.invalid() if every_invalid else []
    for _position, settled in invalid[:INVALID_LOGGED]:
        log.warning("invalid_row", error_code=settled.error_code, message=settled.error_message)
    if len(invalid) > INVALID_LOGGED:
        log.warning(
            "invalid_rows",
            count=len(invalid),
            logged=INVALID_LOGGED,
            message=every_invalid,
        )
    if plan.email_changes:
        log.warning(
            "emails_changed",
            interviews=plan.email_changes,
            message=f"{plan.email_changes} interviews carry another email than the one they "
            "were sent as: they stay with the contact the state knows (an interview never "
            "changes contact); [merge] resolve_contacts = true asks the API instead",
        )
    several = plan.several_contexts if warn_contexts else 0
    if several:
        log.warning(
            "several_contexts_per_contact",
            contacts=several,
            message="without --merge the last row's context is what remains for these contacts",
        )


def plan_output(settings: Settings, options: RunOptions) -> Iterator[memoryview]:
    """`sync-worker plan`: the requests a run would send, without network or key; what each
    guard would say of the run is logged, one line each, and the summary line (plan_finished)
    after the last request."""
    batch = read_inputs(settings, options.inputs)
    state = State.read_only(Path(settings.state_path))
    try:
        state.belongs_to(settings.base_url)
        plan = make_plan(settings, options, batch, state, for_sending=False)
        resolving = settings.resolve_contacts and merging(settings, options)
        unresolved = len(unresolved_interviews(batch, state)) if resolving else 0
    finally:
        state.close()
    if unresolved:
        _log_unresolved(unresolved)
    log_guards(settings, options, batch, plan)
    yield from plan_lines(plan, batch)
    invalid = len(plan.settled.invalid())
    _log_estimate("plan_finished", settings, batch, plan, invalid=invalid)


def unresolved_interviews(batch: Batch, state: State) -> list[int]:
    """The batch's interviews (valid ids, each once) whose contact the state has never had
    from the API: those `run` asks with `[merge] resolve_contacts`."""

    from sync_worker.plan.cells import Cells

    cells = Cells.of(batch)
    ids = np.unique(cells.id_numbers[cells.valid_id])
    unresolved: list[int] = ids[~np.isin(ids, state.resolved().ids)].tolist()
    return unresolved


def _log_unresolved(count: int) -> None:
    """`plan` asks the API nothing: interviews never resolved are grouped by email here, where
    `run` would first ask their contact."""
    get_logger().warning(
        "contacts_not_resolved",
        interviews=count,
        message=f"plan sends no request: {count} interviews never resolved are grouped "
        "by their email here; `run` first asks the API their contact (resolve_contacts), "
        "so its requests may combine contacts this plan keeps apart",
    )


def log_guards(
    settings: Settings, options: RunOptions, batch: Batch, plan: Plan, state_read: bool = True
) -> list[str]:
    """What each guard of SPEC section 14 would say of a run of this plan: one `guard` event
    each (a warning for one that would refuse the run); returns their lines."""
    verdicts = judge(plan, len(batch), merging(settings, options), settings)
    note = "" if state_read else " (validate reads no state: a run knows what earlier runs sent)"
    log, lines = get_logger(), []
    for verdict in verdicts:
        line = verdict.line() + (note if verdict.guard != "first_rejections" else "")
        lines.append(line)
        event = log.warning if verdict.refuses else log.info
        event("guard", guard=verdict.guard, refuses=verdict.refuses, message=line)
    return lines


def validate(settings: Settings, options: RunOptions) -> tuple[Batch, Plan, list[str], list[str]]:
    """`sync-worker validate`: the batch, its plan with state ignored, the notes file's
    unusable rows, and what each guard would say (logged too, before the summary line:
    validate_finished)."""
    batch = read_inputs(settings, options.inputs)
    plan, notes = plan_with_notes(settings, options, batch, State(None), lists_invalid=True)
    guards = log_guards(settings, options, batch, plan, state_read=False)
    invalid = len(plan.settled.invalid())
    _log_estimate("validate_finished", settings, batch, plan, invalid=invalid)
    return batch, plan, notes.problems, guards


def _log_estimate(event: str, settings: Settings, batch: Batch, plan: Plan, invalid: int) -> None:
    """The one summary line on stderr: rows, requests, contacts, notes unknown, time at the
    limit (a JSON event in cron, a readable line on a terminal)."""
    figures = estimate(batch, plan, settings.limit, settings.rate_period_s)
    aside = batch.lines_set_aside
    extra = (f", {invalid} invalid rows" if invalid else "") + (
        f", {aside} lines set aside" if aside else ""
    )
    get_logger().info(
        event,
        **figures.fields(),
        tier=settings.tier,
        limit=settings.limit,
        rate_period_s=settings.rate_period_s,
        invalid=invalid,
        lines_set_aside=aside,
        rows_riding=len(plan.sent_with),  # rows that go with their contact's carrying request
        message=figures.line() + extra,
    )
