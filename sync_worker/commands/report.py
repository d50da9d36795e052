"""`sync-worker report LEDGER`: what happened in a run, and what to do next."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from sync_worker.record.ledger import FORMULA_STARTS, load_ledger, summary_path
from sync_worker.vocabulary import Status

FAILED_SHOWN = 10


def render(path: Path) -> str:
    """The report; InputError (exit 2, one line) for a file that is not a ledger."""
    rows, cut_off = load_ledger(path)
    statuses = Counter(str(r["status"]) for r in rows)
    codes = Counter(str(r["error_code"]) for r in rows if r.get("error_code"))
    lines = [f"ledger {path}: {len(rows)} rows"]
    if cut_off:
        lines.append("  (its last line was cut short, as when a run is killed: left out)")
    lines += [f"  {status:<18} {count:>8}" for status, count in sorted(statuses.items())]
    if codes:
        lines.append("error codes:")
        lines += [f"  {code:<24} {count:>8}" for code, count in codes.most_common()]
    problems = [r for r in rows if r["status"] in (Status.FAILED, Status.INVALID)]
    if problems:
        lines.append(f"first {min(len(problems), FAILED_SHOWN)} failed or invalid rows:")
        lines += [_describe(r) for r in problems[:FAILED_SHOWN]]
    summary, unreadable = _summary(path)
    lines += unreadable + _rate(summary)
    set_aside = summary.get("lines_set_aside") or 0 if summary else 0
    unfinished = summary is None and not unreadable
    aborted = str(summary.get("aborted_because") or "") if summary else ""
    if unfinished:
        lines.append(
            "the run did not finish (no summary beside the ledger: it was killed, or is still "
            "running): rows without a line here were never recorded"
        )
    if aborted:
        lines.append(f"the run was aborted: {aborted}")
    resume = None
    if unfinished or aborted:
        first = "fix that first; then a re-run" if aborted else "a re-run"
        resume = (
            f"next: {first} of the same command resumes (what the state recorded as sent is "
            "skipped)"
        )
    steps = _next_steps(statuses, set_aside if isinstance(set_aside, int) else 0, resume)
    return "\n".join(lines + steps)


def _describe(row: dict[str, object]) -> str:
    status = f"HTTP {row['http_status']} " if row.get("http_status") not in (None, "") else ""
    source, interview, message = (
        _as_written(row[name]) for name in ("source_file", "interview_id", "error_message")
    )
    return (
        f"  {source} row {row['source_row']} (interview {interview}): "
        f"{row['status']} {status}{row['error_code']}: {message}"
    )


def _as_written(value: object) -> str:
    """A CSV ledger's cell without the quote that keeps a spreadsheet from running it."""
    text = str(value)
    return text[1:] if text.startswith("'") and text[1:2] in FORMULA_STARTS else text


def _summary(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The summary beside the ledger; none (a killed run) is fine, and one that cannot be read
    is said so without hiding the rest of the report."""
    summary_file = summary_path(path)
    if not summary_file.exists():
        return None, []
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, [f"summary {summary_file}: cannot be read ({exc}); its figures are left out"]
    if not isinstance(summary, dict):
        return None, [f"summary {summary_file}: not a JSON object; its figures are left out"]
    return summary, []


def _rate(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return []
    lines = [
        f"requests sent: {summary.get('requests_sent')}{_took(summary)}, retries: "
        f"{summary.get('retries')}, 429s: {summary.get('rate_limited_429')}, {_rate_of(summary)}, "
        f"exit code {summary.get('exit_code')}"
    ]
    if summary.get("lines_set_aside"):
        lines.append(f"lines set aside, not rows: {summary['lines_set_aside']}")
    return lines


def _rate_of(summary: dict[str, Any]) -> str:
    """A run of fewer than two requests has no rate (`null`): said so, not `None`."""
    per_minute = summary.get("effective_requests_per_minute")
    if per_minute is None:
        return "no rate (fewer than two requests)"
    return f"effective rate: {per_minute} requests/minute"


def _took(summary: dict[str, Any]) -> str:
    try:
        began = datetime.fromisoformat(str(summary["started_at"]))
        ended = datetime.fromisoformat(str(summary["finished_at"]))
    except (KeyError, ValueError):
        return ""
    return f" in {(ended - began).total_seconds():.1f} s"


def _next_steps(statuses: Counter[str], set_aside: int = 0, resume: str | None = None) -> list[str]:
    """`resume`: the first step of a run that did not end by itself (killed, aborted), in place
    of retrying its rows or of nothing to do."""
    steps = [resume] if resume else []
    retry = statuses[Status.FAILED] + statuses[Status.NOT_ATTEMPTED]
    if retry and not resume:
        steps.append(
            f"next: re-run the same command to retry the {statuses[Status.FAILED]} failed and "
            f"{statuses[Status.NOT_ATTEMPTED]} not attempted rows (rows already sent are skipped)"
        )
    if invalid := statuses[Status.INVALID]:
        steps.append(
            f"next: fix the {invalid} invalid rows in the export (see error_message), then re-run"
        )
    if conflicts := statuses[Status.CONFLICT]:
        steps.append(
            f"next: {conflicts} lines were left alone because a later run changed them again "
            "(conflict, see error_message): `sync-worker revert RUN_ID --force` puts them back "
            "anyway, or leave them as the later run wrote them"
        )
    if unrestorable := statuses[Status.NOT_RESTORABLE]:
        steps.append(
            f"note: {unrestorable} lines are not_restorable: their values before were never "
            "known, so nothing can put them back"
        )
    if set_aside:
        steps.append(
            f"next: nothing to do for the {set_aside} lines set aside (a report's footer, lines "
            "with no data) unless one of them is a row: then fix it in the export and re-run"
        )
    if not steps and not statuses:
        steps.append("nothing to do: the ledger has no rows (the run had no input rows)")
    if not steps:
        steps.append("nothing to do: every row is ok, unchanged or a dry run")
    return steps
