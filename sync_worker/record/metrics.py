"""Prometheus metrics of a run, for node_exporter's textfile collector (`--metrics-file`).

Written at the end of every run, however it ended (a config error included, exit code 2),
atomically (prometheus_client writes beside the file and renames), so a collector never reads
half a file. Every value is the last run's own, so every metric is a gauge: a counter that
starts again at 0 with each run is misread by `rate()` and `increase()`, and gets a `_created`
series besides. `sync_worker_requests_total` and `sync_worker_rate_limited_total` keep the
names the documentation has always given them, though gauges; the newer per-run values are
named without `_total`. Batch-job conventions: the time of the last run and of the last
success, so an alert can fire when `time() - sync_worker_last_success_timestamp_seconds` grows
past twice the schedule. A run that did not succeed (exit code other than 0) carries the
previous file's last success over.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from sync_worker.errors import ConfigError
from sync_worker.settings import paths
from sync_worker.settings.paths import unwritable
from sync_worker.vocabulary import ExitCode, Status

PREFIX = "sync_worker"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
STATUSES = tuple(status.value for status in Status)  # every one gets a line, 0 or not


def write_metrics(path: Path, summary: Mapping[str, Any], duration_s: float) -> None:
    """The metrics of one run, from its summary (SPEC section 13)."""
    now = time.time()
    code = int(summary.get("exit_code", ExitCode.ABORTED))
    registry = CollectorRegistry()
    rows = Gauge(
        f"{PREFIX}_rows", "Rows of the last run, by ledger status", ["status"], registry=registry
    )
    counts = summary.get("counts") or {}
    for status in sorted({*STATUSES, *counts}):
        rows.labels(status=status).set(counts.get(status, 0))
    _gauge(
        registry,
        "requests_total",
        "HTTP requests of the last run that got an answer, whatever its status (429s "
        "included), and those a stop cut off in flight (a gauge: the last run's own count)",
        summary.get("requests_sent", 0),
    )
    _gauge(
        registry,
        "rate_limited_total",
        "429 answers in the last run (a gauge: the last run's own count)",
        summary.get("rate_limited_429", 0),
    )
    _gauge(
        registry,
        "retries",
        "Requests sent again in the last run (not after a 429)",
        summary.get("retries", 0),
    )
    _gauge(
        registry,
        "connection_errors",
        "Tries of the last run without an HTTP answer (refused, dropped, timed out, not HTTP)",
        summary.get("connection_errors", 0),
    )
    _gauge(registry, "run_duration_seconds", "How long the last run took", duration_s)
    _gauge(
        registry,
        "exit_code",
        "Exit code of the last run (0: success; 2: refused before sending; 3: aborted)",
        code,
    )
    _gauge(registry, "last_run_timestamp_seconds", "When the last run ended (Unix time)", now)
    success = now if code == ExitCode.OK else _previous_success(path)
    _gauge(
        registry,
        "last_success_timestamp_seconds",
        "When the last run with exit code 0 ended (Unix time; 0: never)",
        success or 0,
    )
    per_minute = summary.get("effective_requests_per_minute")
    if per_minute is not None:  # a run of fewer than two requests has no rate
        _gauge(
            registry,
            "effective_requests_per_minute",
            "The rate the last run's answered requests left at: (n - 1) / the time from the "
            "first to the last of them",
            per_minute,
        )
    _gauge(
        registry,
        "server_limit_learned_per_minute",
        "The lower server limit learned in the last run (0: none)",
        summary.get("server_limit_learned_per_minute") or 0,
    )
    _write(path, registry)


def _gauge(registry: CollectorRegistry, name: str, help_text: str, value: float) -> None:
    Gauge(f"{PREFIX}_{name}", help_text, registry=registry).set(value)


def _previous_success(path: Path) -> float | None:
    """The last success of the previous file, if it holds one that parses."""
    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.value > 0:
                    return float(sample.value)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def check_writable(path: Path) -> None:
    """Before a run: a metrics file that could not be written is a usage error (exit 2)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(path, "metrics file", "--metrics-file", exc) from None
    paths.check_writable(path, "metrics file", "--metrics-file")


def _write(path: Path, registry: CollectorRegistry) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-file {path}: cannot write ({exc.strerror})") from None
