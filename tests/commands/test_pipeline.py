"""The whole run, end to end: the command line (in this process) against the real sandbox server."""

from __future__ import annotations

import json
import stat
from collections import Counter
from pathlib import Path

import pytest
from helpers import (
    API_KEY,
    SandboxServer,
    assert_no_key,
    cli_env,
    read_ledger,
    rows_csv,
    run_args,
    run_cli,
    write_csv,
)

from sync_worker import __version__
from sync_worker.record.ledger import COLUMNS

HEADER = ["interview_id", "contact_name", "objective", "contact_context", "contact_email"]


def _run(
    tmp_path: Path, sandbox: SandboxServer, *args: str, ledger: str = "ledger.csv", **kw: object
) -> object:
    return run_cli(
        "run",
        *args,
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--ledger",
        ledger,
        cwd=tmp_path,
        **kw,  # type: ignore[arg-type]
    )


def test_every_row_sent_or_accounted_for(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(
        tmp_path / "in.csv",
        HEADER,
        [
            [101, "Ana Ruiz", "Why we lost", '{"title": "CTO"}', "ana@x.com"],
            [102, "", "", "plain note", "bo@x.com"],
            ["10x", "Bad Id", "", "", ""],
            [103, "", "", "", ""],
            [900000001, "Ghost", "", "", ""],
            [104, "", "", '{"broken": ', ""],
            [101, "", "Later objective", "", "ana@x.com"],
        ],
    )
    result = _run(tmp_path, sandbox, "in.csv", "--rate-limit", "1000", "--rate-period", "1")
    assert result.code == 1, result.stderr
    ledger = read_ledger(tmp_path / "ledger.csv")
    assert list(ledger[0]) == list(COLUMNS)
    by_row = {int(line["source_row"]): line for line in ledger}
    assert sorted(by_row) == [1, 2, 3, 4, 5, 6, 7]
    assert {r: by_row[r]["status"] for r in by_row} == {
        1: "ok",
        2: "ok",
        3: "invalid",
        4: "invalid",
        5: "failed",
        6: "invalid",
        7: "ok",
    }
    assert by_row[3]["error_code"] == "invalid_interview_id"
    assert by_row[4]["error_code"] == "no_fields"
    assert by_row[6]["error_code"] == "invalid_json"
    assert "in.csv row 6, column contact_context" in by_row[6]["error_message"]
    assert (by_row[5]["http_status"], by_row[5]["error_code"]) == ("404", "not_found")
    assert by_row[1]["payload_sha256"] == by_row[7]["payload_sha256"]  # one request for 101
    ana = sandbox.interview(101)
    assert ana is not None
    assert ana["contact_context"] == {"title": "CTO"}
    assert (ana["objective"], ana["contact_name"]) == ("Later objective", "Ana Ruiz")
    assert sandbox.interview(102)["contact_context"] == "plain note"  # type: ignore[index]
    assert sorted(r["id"] for r in sandbox.requests()) == ["101", "102", "900000001"]
    assert {r["user_agent"] for r in sandbox.requests()} == {f"sync-worker/{__version__}"}
    summary = json.loads((tmp_path / "ledger.csv.summary.json").read_text())
    assert summary["counts"] == {"ok": 3, "invalid": 3, "failed": 1}
    assert summary["exit_code"] == 1 and summary["requests_sent"] == 3
    for path in ("ledger.csv", "ledger.csv.summary.json", "state.sqlite"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o600
    assert all(e["run_id"] == summary["run_id"] for e in result.events())
    assert_no_key(result.stdout, result.stderr, paths=(tmp_path,))


def test_rerun_skips_unchanged_and_force_resends(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", HEADER, [[i, f"N{i}", "", "", ""] for i in range(1, 6)])
    assert _run(tmp_path, sandbox, "in.csv").code == 0
    second = _run(tmp_path, sandbox, "in.csv", ledger="second.csv")
    assert second.code == 0
    assert {line["status"] for line in read_ledger(tmp_path / "second.csv")} == {
        "skipped_unchanged"
    }
    assert len(sandbox.requests()) == 5
    write_csv(
        tmp_path / "in.csv",
        HEADER,
        [[i, f"N{i}", "", "", ""] for i in range(1, 5)] + [[5, "Changed", "", "", ""]],
    )
    assert _run(tmp_path, sandbox, "in.csv", ledger="third.csv").code == 0
    assert len(sandbox.requests()) == 6
    assert _run(tmp_path, sandbox, "in.csv", "--force", ledger="fourth.csv").code == 0
    assert len(sandbox.requests()) == 11


@pytest.mark.timing
def test_window_is_never_exceeded(tmp_path: Path, sandbox_factory: object) -> None:
    """The sandbox's strict window of 20 per second, over four windows: zero 429s."""
    server = sandbox_factory("--rate-limit", "20", "--rate-period", "1")  # type: ignore[operator]
    write_csv(tmp_path / "in.csv", HEADER, [[i, f"N{i}", "", "", ""] for i in range(1, 81)])
    result = _run(tmp_path, server, "in.csv", "--rate-limit", "20", "--rate-period", "1")
    assert result.code == 0, result.stderr
    arrivals = sorted(r["t"] for r in server.requests())
    assert len(arrivals) == 80
    assert all(r["status"] == 200 for r in server.requests())
    most_in_window = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert most_in_window <= 20
    assert arrivals[-1] - arrivals[0] >= 2.9  # 80 requests at 20/s cannot take under 3 windows


def test_refused_key_costs_one_request(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", HEADER, [[i, f"N{i}", "", "", ""] for i in range(1, 31)])
    env = cli_env(HINDSIGHT_API_KEY="wrong-key-0000")
    result = _run(tmp_path, sandbox, "in.csv", env=env)
    assert result.code == 3
    assert len(sandbox.requests()) == 1
    ledger = read_ledger(tmp_path / "ledger.csv")
    assert len(ledger) == 30
    assert [line["status"] for line in ledger].count("not_attempted") == 29
    failed = next(line for line in ledger if line["status"] == "failed")
    assert (failed["http_status"], failed["error_code"]) == ("401", "unauthorized")
    assert "wrong-key-0000" not in result.stderr + (tmp_path / "ledger.csv").read_text()


def test_unusable_file_stops_before_sending(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "good.csv", HEADER, [[1, "A", "", "", ""]])
    write_csv(tmp_path / "bad.csv", ["Id", "Name"], [[1, "A"]])
    result = _run(tmp_path, sandbox, "good.csv", "bad.csv")
    assert result.code == 2
    message = result.event("error")["message"]
    assert "bad.csv" in message and "'Id', 'Name'" in message
    assert sandbox.requests() == []
    assert _run(tmp_path, sandbox, "missing.csv").code == 2


def test_plan_prints_what_run_would_send(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", HEADER, [[7, "Ana", "", "", ""], [7, "", "Obj", "", ""]])
    result = run_cli(
        "plan", "in.csv", "--state", "state.sqlite", cwd=tmp_path, env=cli_env(HINDSIGHT_API_KEY="")
    )
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {
            "interview_id": 7,
            "body": {"contact_name": "Ana", "objective": "Obj"},
            "source_rows": [
                {"source_file": "in.csv", "source_row": 1},
                {"source_file": "in.csv", "source_row": 2},
            ],
            "merge": "off",
        }
    ]
    assert not (tmp_path / "state.sqlite").exists()


def test_missing_key_names_the_variable(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "in.csv", HEADER, [[1, "A", "", "", ""]])
    result = _run(
        tmp_path, sandbox, "in.csv", "--api-key-env", "MY_KEY", env=cli_env(HINDSIGHT_API_KEY="")
    )
    assert result.code == 2
    assert "MY_KEY" in result.event("error")["message"]
    key_file = tmp_path_factory.mktemp("secrets") / "key.txt"  # outside the scanned folder
    key_file.write_text(API_KEY + "\n")
    env = cli_env(HINDSIGHT_API_KEY="")
    assert _run(tmp_path, sandbox, "in.csv", "--api-key-file", str(key_file), env=env).code == 0


def test_max_rows_and_dry_run(tmp_path: Path, sandbox: SandboxServer) -> None:
    rows_csv(tmp_path, 10)
    dry = run_cli(*run_args(sandbox, "--dry-run"), cwd=tmp_path, env=cli_env(HINDSIGHT_API_KEY=""))
    assert dry.code == 0
    assert {x["status"] for x in read_ledger(tmp_path / "ledger.csv")} == {"dry_run"}
    assert sandbox.requests() == []
    (tmp_path / "ledger.csv").unlink()
    trial = run_cli(*run_args(sandbox, "--max-rows", "3"), cwd=tmp_path)
    assert trial.code == 0
    statuses = Counter(x["status"] for x in read_ledger(tmp_path / "ledger.csv"))
    assert statuses == {"ok": 3, "not_attempted": 7}
    assert len(sandbox.requests()) == 3
    started = trial.event("run_started")
    assert started["requests_to_send"] == 3 and "estimated_minutes" in started
