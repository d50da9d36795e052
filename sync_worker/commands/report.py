"""`sync-worker report LEDGER`: what happened in a run, and what to do next."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sync_worker.record.ledger import load_ledger, summary_path
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
    lines += _rate(path)
    lines += _next_steps(statuses)
    return "\n".join(lines)


def _describe(row: dict[str, object]) -> str:
    status = f"HTTP {row['http_status']} " if row.get("http_status") not in (None, "") else ""
    return (
        f"  {row['source_file']} row {row['source_row']} (interview {row['interview_id']}): "
        f"{row['status']} {status}{row['error_code']}: {row['error_message']}"
    )


def _rate(path: Path) -> list[str]:
    """The figures of the summary beside the ledger; none (a killed run) is fine, and one that
    cannot be read is said so without hiding the rest of the report."""
    summary_file = summary_path(path)
    if not summary_file.exists():
        return []
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"summary {summary_file}: cannot be read ({exc}); its figures are left out"]
    if not isinstance(summary, dict):
        return [f"summary {summary_file}: not a JSON object; its figures are left out"]
    return [
        f"requests sent: {summary.get('requests_sent')}, retries: {summary.get('retries')}, "
        f"429s: {summary.get('rate_limited_429')}, effective rate: "
        f"{summary.get('effective_requests_per_minute')} requests/minute, "
        f"exit code {summary.get('exit_code')}"
    ]


def _next_steps(statuses: Counter[str]) -> list[str]:
    steps = []
    retry = statuses[Status.FAILED] + statuses[Status.NOT_ATTEMPTED]
    if retry:
        steps.append(
            f"next: re-run the same command to retry the {statuses[Status.FAILED]} failed and "
            f"{statuses[Status.NOT_ATTEMPTED]} not attempted rows (rows already sent are skipped)"
        )
    if invalid := statuses[Status.INVALID]:
        steps.append(
            f"next: fix the {invalid} invalid rows in the export (see error_message), then re-run"
        )
    if not steps and not statuses:
        steps.append("nothing to do: the ledger has no rows (the run had no input rows)")
    if not steps:
        steps.append("nothing to do: every row is ok, unchanged or a dry run")
    return steps
