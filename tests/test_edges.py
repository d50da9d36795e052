"""The corpus of edges: every odd input, path, server and signal a demanding user tried.

Each case drives the real CLI the way the user did and asserts the exit code, one clear line on
stderr (never a traceback), and, where a ledger is due, exactly one ledger line per input row.
Keep adding to it: a new edge found is a new case here, in the section it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import API_KEY, Result, SandboxServer, read_ledger, run_cli, write_csv


def assert_one_line(result: Result, code: int, *words: str) -> str:
    """Exit `code`, no traceback, and exactly one non-empty line on stderr holding `words`."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_no_traceback(result: Result, code: int) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr


def assert_ledger_rows(path: Path, rows: int) -> list[dict[str, str]]:
    """One ledger line per input row: source rows 1..rows, each once."""
    ledger = read_ledger(path)
    assert sorted(int(line["source_row"]) for line in ledger) == list(range(1, rows + 1))
    return ledger


# -- inputs ------------------------------------------------------------------------------------

# -- config, key and numbers -------------------------------------------------------------------

# -- paths, state, ledger and report -----------------------------------------------------------

# -- the server: outages, garbage, stops -------------------------------------------------------

# -- the run: one ledger a run, deadlines, recording -------------------------------------------


def _run(tmp_path: Path, server: SandboxServer, *args: str) -> Result:
    return run_cli("run", "in.csv", "--base-url", server.base_url, "--state", "state.sqlite",
                   "--rate-limit", "1000", "--rate-period", "1", *args, cwd=tmp_path)  # fmt: skip


def test_a_ledger_path_is_never_reused(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    assert _run(tmp_path, sandbox, "--ledger", "night.csv").code == 0
    before = (tmp_path / "night.csv").read_bytes()
    again = _run(tmp_path, sandbox, "--ledger", "night.csv", "--force")
    assert_one_line(again, 2, "night.csv already exists", "{run_id}")
    assert (tmp_path / "night.csv").read_bytes() == before  # not one line of a second run
    assert len(sandbox.requests()) == 2  # refused before anything was sent


def test_run_id_and_date_are_filled_in(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    first = _run(tmp_path, sandbox, "--ledger", "l/{date}.csv")
    second = _run(tmp_path, sandbox, "--ledger", "l/{date}.csv", "--force")
    third = _run(tmp_path, sandbox, "--ledger", "l/x-{run_id}.jsonl", "--force")
    assert (first.code, second.code, third.code) == (0, 0, 0)
    day = first.event("run_started")["timestamp"][:10]
    second_id = second.event("run_started")["run_id"]
    assert first.event("run_started")["ledger"] == f"l/{day}.csv"
    assert second.event("run_started")["ledger"] == f"l/{day}-{second_id}.csv"  # same day: own
    third_id = third.event("run_started")["run_id"]
    assert sorted(p.name for p in (tmp_path / "l").iterdir() if "summary" not in p.name) == sorted(
        [f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"]
    )
    for name in (f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"):
        assert_ledger_rows(tmp_path / "l" / name, 1)


def test_max_duration_reached_with_every_row_done_exits_0(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "1000", "--rate-period", "1", "--latency-ms", "700")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = _run(tmp_path, server, "--ledger", "l.csv", "--max-duration", "0.005")  # 0.3 s
    assert_no_traceback(result, 0)  # the deadline came while the only row was in flight
    assert [x["status"] for x in assert_ledger_rows(tmp_path / "l.csv", 1)] == ["ok"]


def test_a_ledger_that_cannot_be_written_mid_run_stops_the_run(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the ledger: the run stops with one line, it does not drop results."""
    from click.testing import CliRunner

    from sync_worker.cli import main
    from sync_worker.ledger import Ledger

    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"],
              [[i, f"N{i}"] for i in range(1, 201)])  # fmt: skip
    flushes = []

    def full_disk(self: Ledger) -> None:
        flushes.append(1)
        if len(flushes) > 2:  # the settled rows' flush and a first batch go through
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ledger, "flush", full_disk)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HINDSIGHT_API_KEY", API_KEY)
    result = CliRunner().invoke(main, [
        "run", "in.csv", "--base-url", sandbox.base_url, "--state", "state.sqlite",
        "--ledger", "l.csv", "--rate-limit", "100", "--rate-period", "1", "--log-format", "json",
    ])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error = [line for line in result.stderr.splitlines() if '"error"' in line]
    assert len(error) == 1 and "No space left on device" in error[0]
    assert "cannot write the results" in error[0]
    assert len(sandbox.requests()) < 200  # it stopped sending
