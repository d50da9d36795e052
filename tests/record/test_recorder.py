from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import API_KEY, SandboxServer, read_ledger, write_csv

from sync_worker.cli.main import main
from sync_worker.plan import Memory, PlanOptions, build_plan
from sync_worker.read.reader import ReadOptions, read_batch
from sync_worker.record.ledger import Ledger
from sync_worker.record.recorder import Recorder


def test_a_stop_records_each_request_cut_off_in_flight_with_its_tries_and_time(
    tmp_path: Path,
) -> None:
    """After a stop: a request on the wire is `failed / interrupted`, with the tries that went
    out and how long it had been sending (the server may have it); the rest, not_attempted."""
    path = write_csv(
        tmp_path / "in.csv",
        ["interview_id", "objective"],
        [[1, "a"], [2, "b"], [2, "b2"], [3, "c"]],
    )
    batch = read_batch([str(path)], ReadOptions())
    plan = build_plan(batch, PlanOptions(), Memory())
    recorder = Recorder("run-1", batch, Ledger(tmp_path / "ledger.csv"), None)
    left = recorder.fill_unwritten(plan, {2: (time.monotonic() - 2.5, 3)})
    recorder.flush()
    rows = {(r["interview_id"], r["source_row"]): r for r in read_ledger(tmp_path / "ledger.csv")}
    for row in ("2", "3"):  # the two rows of interview 2's one request
        line = rows["2", row]
        assert (line["status"], line["error_code"], line["attempts"]) == (
            "failed",
            "interrupted",
            "3",
        )
        assert 2500 <= int(line["duration_ms"]) < 60_000
    assert [rows[i, r]["status"] for i, r in (("1", "1"), ("3", "4"))] == ["not_attempted"] * 2
    assert (left, recorder.cut_in_flight, len(rows)) == (2, 1, 4)


def test_a_ledger_that_cannot_be_written_mid_run_stops_the_run(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the ledger: the run stops with one line, it does not drop results."""

    from sync_worker.record.ledger import Ledger

    write_csv(
        tmp_path / "in.csv", ["interview_id", "contact_name"], [[i, f"N{i}"] for i in range(1, 201)]
    )
    flushes = []

    def full_disk(self: Ledger) -> None:
        flushes.append(1)
        if len(flushes) > 2:  # the settled rows' flush and a first batch go through
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ledger, "flush", full_disk)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HINDSIGHT_API_KEY", API_KEY)
    result = CliRunner().invoke(
        main,
        [
            "run",
            "in.csv",
            "--base-url",
            sandbox.base_url,
            "--state",
            "state.sqlite",
            "--ledger",
            "l.csv",
            "--rate-limit",
            "100",
            "--rate-period",
            "1",
            "--log-format",
            "json",
        ],
    )
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error = [line for line in result.stderr.splitlines() if '"error"' in line]
    assert len(error) == 1 and "No space left on device" in error[0]
    assert "cannot write the results" in error[0]
    assert len(sandbox.requests()) < 200  # it stopped sending
