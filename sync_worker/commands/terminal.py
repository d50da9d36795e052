"""How a run reads on a terminal: a short line at the start, one readable line per warning, and
at the end the report `sync-worker report` prints. JSON lines (cron) never come here.

Each event is one line: its `message` when it has one, else its name and fields. The run's
start is one line (rows, requests, time at the limit), its end the ledger's report (counts,
error codes, rate, ledger path, the next step), not a dump of the summary's fields. The pool's
figures are for the JSON logs; on a terminal they are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

LEFT_OUT = frozenset({"pool_summary", "pool_resized", "api_probe_unanswered"})
NOT_SHOWN = frozenset({"event", "level", "timestamp", "run_id", "message", "log_level"})


def render(_logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """structlog's last processor on a terminal: the event as the line a person reads."""
    import structlog

    name = str(event.get("event", ""))
    if name in LEFT_OUT:
        raise structlog.DropEvent
    special = SPECIAL.get(name)
    if special is not None:
        return special(event)
    level = str(event.get("level", method))
    prefix = "" if level in ("info", "debug") else f"{level}: "
    code = f" [{event['error_code']}]" if event.get("error_code") and "message" in event else ""
    return prefix + (str(event["message"]) + code if "message" in event else _fields(name, event))


def _fields(name: str, event: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{key} {value}" for key, value in event.items() if key not in NOT_SHOWN)
    return f"{name.replace('_', ' ')}: {shown}" if shown else name.replace("_", " ")


def start_line(event: Mapping[str, Any]) -> str:
    """`200 rows: 150 requests to send to 90 contacts, about 0m30s at 300 requests a
    minute`."""
    rows, requests = event.get("rows"), event.get("requests_to_send")
    contacts = f" to {event['contacts']} contacts" if "contacts" in event else ""
    unknown = event.get("contacts_notes_unknown")
    unknown_text = f" ({unknown} with notes unknown)" if unknown else ""
    dry = " (dry run: nothing is sent)" if event.get("dry_run") else ""
    took = str(event.get("message", "")).split(" take ", 1)[-1]
    return (
        f"{rows} rows: {requests} requests to send{contacts}{unknown_text}, {took}{dry}; "
        f"ledger {event.get('ledger')}"
    )


def end_report(event: Mapping[str, Any]) -> str:
    """The ledger's report, as `sync-worker report LEDGER` prints it."""
    from sync_worker.commands.report import render as report
    from sync_worker.errors import SyncWorkerError

    ledger = event.get("ledger")
    if not ledger:
        return f"run finished: exit code {event.get('exit_code')}"
    try:
        return report(Path(str(ledger)))
    except SyncWorkerError as exc:  # the ledger went missing: the figures still say enough
        return f"run finished: exit code {event.get('exit_code')} ({exc})"


def aborted(event: Mapping[str, Any]) -> str:
    """`error: the API refused the key (...): check the key ...`: the reason, not its fields."""
    return f"error: {event.get('reason')}"


SPECIAL: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "run_started": start_line,
    "run_finished": end_report,
    "run_aborted": aborted,
}


def console() -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    """The renderer `logs.configure` asks for when it writes console lines."""
    return render
