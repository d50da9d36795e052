"""SIGINT and SIGTERM as a stop request (commands/signals.py): a real process signalled mid-run
stops cleanly, with a ledger line for every row and the conventional exit code."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    SandboxServer,
    assert_ledger_rows,
    fast_rows,
    fast_run_args,
    read_ledger,
    rows_csv,
    run_args,
    start_run,
    wait_for_arrivals,
)


def test_sigterm_stops_cleanly(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 60)
    process = start_run(tmp_path, run_args(sandbox, "--rate-limit", "20", "--rate-period", "1"))
    wait_for_arrivals(sandbox, 10)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=20)
    exited = time.time()
    assert process.returncode == 143, err
    lines = read_ledger(tmp_path / "ledger.csv")
    assert sorted(int(x["source_row"]) for x in lines) == list(range(1, 61))
    statuses = Counter(x["status"] for x in lines)
    assert statuses["not_attempted"] > 0 and statuses["ok"] >= 10
    assert set(statuses) <= {"ok", "not_attempted"}
    time.sleep(0.3)
    assert all(r["t"] < exited for r in sandbox.requests())
    assert statuses["ok"] == len(sandbox.requests())


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"]
)
def test_stop_while_sends_wait_for_their_slot(
    tmp_path: Path, sandbox: SandboxServer, sig: signal.Signals, code: int
) -> None:
    """One request every 5 s: after the first answers, every other send waits in the pacer."""
    fast_rows(tmp_path, 20)
    process = start_run(
        tmp_path, fast_run_args(sandbox, "--rate-limit", "2", "--rate-period", "10")
    )
    wait_for_arrivals(sandbox, 1)
    time.sleep(0.2)
    process.send_signal(sig)
    _out, err = process.communicate(timeout=5)  # not the 10 s grace for requests in flight
    assert "Traceback" not in err
    assert process.returncode == code, err
    ledger = assert_ledger_rows(tmp_path / "ledger.csv", 20)
    statuses = Counter(x["status"] for x in ledger)
    assert set(statuses) == {"ok", "not_attempted"}  # never "failed / interrupted"
    assert statuses["ok"] == len(sandbox.requests())


@pytest.mark.timing
def test_sigterm_during_a_429_pause_stops_at_once(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "60")  # a minute-long pause
    rows_csv(tmp_path, 20)
    process = start_run(tmp_path, run_args(server, "--rate-limit", "50", "--rate-period", "1"))
    wait_for_arrivals(server, 6)  # five accepted, then a 429 whose reset is ~60 s away
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=20)
    assert process.returncode == 143, err
    assert time.monotonic() - signalled < 5  # not the pause, not the 10 s grace
    statuses = Counter(x["status"] for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses["ok"] == 5 and sum(statuses.values()) == 20
    assert statuses["not_attempted"] >= 13  # never sent: not "interrupted in flight"
    assert len(server.requests()) <= 7
    refused = [x for x in read_ledger(tmp_path / "ledger.csv") if x["http_status"] == "429"]
    assert refused and {(x["status"], x["error_code"]) for x in refused} == {
        ("not_attempted", "interrupted")  # the server refused it; it was never tried again
    }
