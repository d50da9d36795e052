"""Guards for unattended runs (SPEC section 14), judged from the plan before anything is sent.

A nightly job has no one watching: a run that would overwrite many contacts' notes it has never
seen, or send far more requests than a night's changes, is refused (exit 2) with a line naming
the numbers and the way on. `plan` and `validate` print what each guard would say, and
`--dry-run` logs it and goes on. The third guard, first rejections, needs answers: the sender
keeps it (send/sender.py); here it is only described.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_worker.plan.model import Plan
from sync_worker.settings.config import Settings


@dataclass(frozen=True)
class Verdict:
    guard: str  # unknown_notes | max_changes | first_rejections
    refuses: bool  # a run would be refused before sending
    message: str

    def line(self) -> str:
        """One line for `plan` and `validate`: the guard, what it would do, why."""
        return f"guard {self.guard}: {'REFUSES' if self.refuses else 'passes'}: {self.message}"


def judge(plan: Plan, rows: int, merge: bool, settings: Settings) -> list[Verdict]:
    """What each guard says of this plan of `rows` input rows."""
    return [
        unknown_notes(plan, merge, settings),
        max_changes(len(plan.table), rows, settings),
        first_rejections(settings),
    ]


def refusals(verdicts: list[Verdict]) -> list[Verdict]:
    return [verdict for verdict in verdicts if verdict.refuses]


def unknown_notes(plan: Plan, merge: bool, settings: Settings) -> Verdict:
    unknown, most = plan.contacts_no_existing, settings.max_unknown_notes
    if not merge:
        return Verdict("unknown_notes", False, "not a merged run: the file's context is sent as is")
    if unknown <= most or settings.allow_unknown_notes:
        allowed = " (--allow-unknown-notes)" if unknown > most else ""
        return Verdict(
            "unknown_notes",
            False,
            f"{unknown} contacts whose current notes are unknown, at most {most} allowed{allowed}",
        )
    return Verdict(
        "unknown_notes",
        True,
        f"this merged run would overwrite the notes of {unknown} contacts whose current notes "
        f"it does not know (no notes-file row, nothing sent before), more than "
        f"[guard] max_unknown_notes {most}: give an export of the current notes with "
        "--existing-notes FILE, or overwrite them anyway with --allow-unknown-notes",
    )


def max_changes(requests: int, rows: int, settings: Settings) -> Verdict:
    limit = settings.max_changes
    if limit is None:
        return Verdict("max_changes", False, f"{requests} requests; no --max-changes set")
    most = limit.limit(rows)
    share = "" if limit.count is not None else f", {limit} of {rows} input rows"
    if requests <= most:
        return Verdict("max_changes", False, f"{requests} requests, at most {most} allowed{share}")
    return Verdict(
        "max_changes",
        True,
        f"this run would send {requests} requests, more than --max-changes {limit} allows "
        f"({most}{share}): check the export (a changed mapping or a full export instead of "
        "the changes?), or raise --max-changes ([guard] max_changes)",
    )


def first_rejections(settings: Settings) -> Verdict:
    count = settings.first_rejections
    if count == 0:
        return Verdict("first_rejections", False, "off ([guard] first_rejections = 0)")
    return Verdict(
        "first_rejections",
        False,
        f"a run stops (exit 3) if its first {count} answers all refuse rows with one 400/404 "
        "code (a key of another organisation, a wrong id column)",
    )
