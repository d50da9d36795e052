"""The Python API, end to end against the sandbox, in this process: what an Airflow or Dagster
task does. Errors are exceptions naming the option; nothing exits the interpreter."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from helpers import API_KEY, SandboxServer, read_ledger, write_csv

import sync_worker
from sync_worker.errors import ConfigError, InputError


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HINDSIGHT_API_KEY", raising=False)
    return write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_name"],
        [[1, "Ana"], [2, "Bo"], ["x", "Bad id"]],
    )


def _sync(server: SandboxServer, inputs: Path | str, **options: object) -> sync_worker.RunResult:
    given: dict[str, object] = {
        "base_url": server.base_url,
        "api_key": API_KEY,
        "rate_limit": 1000,
        "rate_period": 1,
        "state": "state.sqlite",
    }
    return sync_worker.sync(inputs, **{**given, **options})  # type: ignore[arg-type]


def test_two_runs_in_one_process_with_the_key_given_directly(
    inputs: Path, sandbox: SandboxServer, capfd: pytest.CaptureFixture[str]
) -> None:
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    first = _sync(sandbox, inputs, ledger="first.csv")
    assert first.exit_code == 1 and not first.ok  # one invalid row
    assert first.counts == {"ok": 2, "invalid": 1}
    assert first.ledger_path == Path("first.csv")
    assert len(read_ledger(first.ledger_path)) == 3
    assert first.summary["requests_sent"] == 2
    second = _sync(sandbox, inputs, ledger="second.csv")
    assert second.run_id != first.run_id
    assert second.counts == {"skipped_unchanged": 2, "invalid": 1}
    assert len(sandbox.requests()) == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    out, err = capfd.readouterr()
    assert API_KEY not in out + err and second.run_id in err


def test_a_run_from_a_worker_thread(inputs: Path, sandbox: SandboxServer) -> None:
    """Task runners call from a worker thread, where Python allows no signal handler."""
    results: list[sync_worker.RunResult] = []
    thread = threading.Thread(target=lambda: results.append(_sync(sandbox, inputs)))
    thread.start()
    thread.join(timeout=60)
    assert [r.counts for r in results] == [{"ok": 2, "invalid": 1}]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"rate_limit": 0}, "rate_limit= must be a positive whole number, got 0"),
        ({"rate_period": float("nan")}, "rate_period= must be a finite number above 0"),
        ({"tier": "platinum"}, "tier= must be one of essentials, growth, enterprise"),
        ({"max_rows": -1}, "max_rows= must be a whole number, 0 or more"),
        ({"dry_run": "yes"}, "dry_run= must be True or False"),
        ({"api_key": " "}, "api_key= is empty"),
        ({"api_key": "two\nlines"}, "api_key=: the key holds a line break"),
        ({"base_url": "http://example.com/api"}, "base_url= 'http://example.com/api' uses plain"),
        ({"rate_period": 1.0, "rate_limit": None}, "rate_period= 1 with"),
        ({"log_format": "xml"}, "log_format= must be auto, json or console"),
        ({"max_changes": "many"}, "max_changes= must be a number of requests"),
        ({"max_changes": 1}, "would send 2 requests, more than max_changes= 1 allows"),
        ({"allow_unknown_notes": "yes"}, "allow_unknown_notes= must be True or False"),
        ({"ping_url": "ftp://x"}, "ping_url= must be an http(s) URL"),
    ],
    ids=[
        "rate-limit",
        "nan-period",
        "tier",
        "max-rows",
        "dry-run",
        "empty-key",
        "two-line-key",
        "plain-http",
        "tier-and-period",
        "log-format",
        "max-changes",
        "a-guard",
        "allow-unknown-notes",
        "ping-url",
    ],
)
def test_a_bad_option_raises_naming_it(
    inputs: Path, sandbox: SandboxServer, options: dict[str, object], words: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _sync(sandbox, inputs, **options)
    assert words in str(error.value)
    assert "two\nlines" not in str(error.value)
    assert sandbox.requests() == []


def test_a_file_that_cannot_be_used_raises_and_validate_lists_rows(
    inputs: Path, sandbox: SandboxServer
) -> None:
    with pytest.raises(InputError, match=r"missing\.csv: file not found"):
        _sync(sandbox, "missing.csv")
    checked = sync_worker.validate([inputs])
    assert (checked.rows, checked.requests, checked.exit_code) == (3, 2, 1)
    [problem] = checked.invalid
    assert "in.csv row 3, column interview_id" in problem and "[invalid_interview_id]" in problem
