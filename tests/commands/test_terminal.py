"""A run by hand on a terminal: one start line, log lines above the progress bar, one readable
line per warning, and the ledger's report at the end. Driven in a pseudo-terminal, as a person
would see it; the renderer's rules in-process."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from helpers import SandboxServer, assert_no_key, cli_env, write_csv

from sync_worker.commands.terminal import render
from sync_worker.logs import configure, get_logger

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """`python -m sync_worker ARGS` with stdin, stdout and stderr on a pseudo-terminal; its
    exit code and everything it wrote there."""
    main, child = os.openpty()
    # a terminal of 30 rows and 120 columns: a pseudo-terminal starts at 0 x 0, too narrow for a bar
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", *args],
        cwd=cwd,
        env=cli_env(),
        stdin=child,
        stdout=child,
        stderr=child,
        close_fds=True,
    )
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed its side: everything is read
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None and not ready:
            break
    os.close(main)
    code = process.wait(timeout=10)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert_no_key(text)
    return code, text


def screen_lines(text: str) -> list[str]:
    """What stays on screen of each line: the part after its last carriage return."""
    lines = []
    for raw in ANSI.sub("", text).replace("\r\n", "\n").split("\n"):
        shown = raw.split("\r")[-1].rstrip()
        if shown:
            lines.append(shown)
    return lines


def test_a_run_on_a_terminal_reads_plainly(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory(
        "--rate-limit", "100", "--rate-period", "1", "--fail-rate", "0.2", "--seed", "3"
    )
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_name", "objective"],
        [[i, f"Name {i}", "Win back"] for i in range(1, 61)] + [["x", "Bad", "row"]],
    )
    with open(tmp_path / "in.csv", "a", encoding="utf-8") as handle:
        handle.write('\n"Grand Totals (61 records)"\n')
    code, text = run_in_terminal(
        [
            "run",
            "in.csv",
            "--base-url",
            server.base_url,
            "--state",
            "state.sqlite",
            "--ledger",
            "ledger.csv",
            "--rate-limit",
            "100",
            "--rate-period",
            "1",
        ],
        tmp_path,
    )
    assert code == 1, text
    lines = screen_lines(text)
    assert not [line for line in lines if line.lstrip().startswith("{")], text  # no JSON
    assert "timestamp" not in text and "pool_summary" not in text and "Traceback" not in text
    start = [line for line in lines if line.startswith("61 rows: ")]
    assert start == [
        "61 rows: 60 requests to send to 60 contacts, about 0m01s at 6000 requests a minute; "
        "ledger ledger.csv"
    ], lines
    assert "in.csv: 2 lines set aside, not rows (blank: 1, report footer: 1)" in text
    assert "row/s" in text  # the progress bar was drawn
    # every log line starts a line of its own: none printed through the bar
    for line in lines:
        for word in ("warning:", "error:"):
            assert word not in line or line.startswith(word), line
    assert any(line.startswith("warning: retry: interview_id ") for line in lines), lines
    report = lines[lines.index("ledger ledger.csv: 61 rows") :]
    assert "  invalid                   1" in report[1:4]  # counts by status
    assert any(line.startswith("  ok ") for line in report[1:4]), report
    assert "error codes:" in report and "  invalid_interview_id            1" in report
    assert any(line.startswith("requests sent: ") and " in " in line for line in report)
    assert "lines set aside, not rows: 2" in report
    assert any(line.startswith("next: fix the 1 invalid rows") for line in report)


def test_json_lines_are_unchanged_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    configure("auto", stream)
    structlog.contextvars.bind_contextvars(run_id="r-1")
    try:
        get_logger().warning("lines_set_aside", file="a.csv", count=2, message="a.csv: 2 lines")
    finally:
        structlog.contextvars.clear_contextvars()
    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert set(event) == {"file", "count", "message", "event", "level", "timestamp", "run_id"}


@pytest.mark.parametrize(
    ("method", "event", "line"),
    [
        (
            "warning",
            {"event": "input_warning", "message": "a.csv: not UTF-8"},
            "warning: a.csv: not UTF-8",
        ),
        (
            "warning",
            {"event": "invalid_row", "error_code": "no_fields", "message": "a.csv row 2: x"},
            "warning: a.csv row 2: x [no_fields]",
        ),
        (
            "warning",
            {"event": "retry", "interview_id": 4, "error_code": "server_error", "attempt": 2},
            "warning: retry: interview_id 4, error_code server_error, attempt 2",
        ),
        (
            "info",
            {"event": "rate_limit_pause", "interview_id": 4, "pause_s": 0.5},
            "rate limit pause: interview_id 4, pause_s 0.5",
        ),
        (
            "error",
            {"event": "error", "message": "in.csv: file not found", "exit_code": 2},
            "error: in.csv: file not found",
        ),
        (
            "info",
            {
                "event": "run_started",
                "rows": 3,
                "requests_to_send": 2,
                "ledger": "l.csv",
                "message": "2 requests take about 0m01s at 300 requests a minute",
            },
            "3 rows: 2 requests to send, about 0m01s at 300 requests a minute; ledger l.csv",
        ),
        (
            "error",
            {"event": "run_aborted", "reason": "the API refused the key", "error_code": "x"},
            "error: the API refused the key",
        ),
    ],
    ids=[
        "warning-message",
        "invalid-row-code",
        "warning-fields",
        "info-fields",
        "error",
        "start-line",
        "an-abort-its-reason",
    ],
)
def test_each_event_is_one_readable_line(method: str, event: dict[str, object], line: str) -> None:
    shown = render(None, method, {"level": method, "timestamp": "t", "run_id": "r", **event})
    assert shown == line


def test_the_pool_figures_are_left_out_on_a_terminal() -> None:
    with pytest.raises(structlog.DropEvent):
        render(None, "info", {"event": "pool_summary", "workers_peak": 4})
