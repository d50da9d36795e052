"""How a run ended: its exit code (SPEC section 8) and the summary beside the ledger."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TypedDict

from sync_worker.clock import now_iso
from sync_worker.plan import Plan
from sync_worker.send.sender import SendReport
from sync_worker.settings.paths import create_private
from sync_worker.vocabulary import SIGNAL_EXIT, ExitCode, Status


class RunSummary(TypedDict):
    """A run's summary: `<ledger>.summary.json`, the last log event, `RunResult.summary`."""

    run_id: str
    started_at: str
    finished_at: str
    inputs: list[str]  # the files (`<DataFrame>` for a DataFrame), `revert <RUN_ID>` for a revert
    rows: int
    counts: dict[str, int]  # ledger status -> rows
    requests_sent: int
    retries: int
    connection_errors: int
    rate_limited_429: int
    effective_requests_per_minute: float
    server_limit_learned_per_minute: float | None
    workers_peak: int
    latency_p95_ms: int | None
    contacts_merged: int
    contacts_no_existing: int
    emails_changed: int  # interviews the export gave another email than they were sent as
    exit_code: int
    stopped_by: str | None  # SIGINT, SIGTERM, max_duration, auth_or_unreachable, cancelled
    aborted_because: str | None  # an aborted run's (exit 3) one line: what and what to do
    ledger: str  # the ledger's path


def exit_code(
    counts: Counter[str], report: SendReport, stop_reason: str | None, unsent: int
) -> ExitCode:
    """`unsent`: rows the plan meant to send that were never sent (not --max-rows' rest)."""
    if report.fatal is not None:
        return report.fatal.exit_code
    if stop_reason in SIGNAL_EXIT:
        return SIGNAL_EXIT[stop_reason]
    if stop_reason == "max_duration" and unsent:
        return ExitCode.STOPPED_IN_TIME  # with work left; all done in time is a normal ending
    failed = counts[Status.FAILED] or counts[Status.INVALID]
    return ExitCode.ROWS_FAILED if failed else ExitCode.OK


def summary(
    run_id: str,
    started_at: str,
    counts: Counter[str],
    report: SendReport,
    plan: Plan,
    code: int,
    inputs: tuple[str, ...],
    lines_set_aside: int = 0,
) -> dict[str, Any]:
    """`lines_set_aside`: lines of the inputs that were not rows (a report's footer, ...)."""
    counters = report.counters
    per_minute = report.per_minute
    return {
        "run_id": run_id,
        "started_at": started_at,
        "finished_at": now_iso(),
        "inputs": list(inputs),
        "rows": sum(counts.values()),
        # plain text keys: a console log line shows a Status key as <Status.OK: 'ok'>
        "counts": {str(status): count for status, count in sorted(counts.items())},
        "lines_set_aside": lines_set_aside,
        "requests_sent": counters.requests,
        "retries": counters.retries,
        "connection_errors": counters.connection_errors,
        "rate_limited_429": counters.rate_limited,
        "effective_requests_per_minute": None if per_minute is None else round(per_minute, 1),
        "server_limit_learned_per_minute": (
            round(report.learned_per_minute, 1) if report.learned_per_minute else None
        ),
        "workers_peak": report.workers_peak,
        "latency_p95_ms": report.latency_p95_ms,
        "contacts_merged": plan.contacts_merged,
        "contacts_no_existing": plan.contacts_no_existing,
        "emails_changed": plan.email_changes,
        "exit_code": int(code),
    }


def write_summary(ledger_path: Path, summary: dict[str, Any]) -> None:
    """`<ledger>.summary.json`, readable by its owner only."""
    path = ledger_path.with_name(ledger_path.name + ".summary.json")
    create_private(path)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
