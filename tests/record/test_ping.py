"""`--ping-url`: a healthchecks-style monitor told when sending begins and how the run ended,
through the API's proxy, without the key; a monitor in trouble never changes the run's outcome.
The CLI in-process against the sandbox, the monitor a small local server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import API_KEY, SandboxServer, assert_no_key, write_csv
from local_server import LocalServer, hang, ok, serving

from sync_worker.cli.main import main


@pytest.fixture
def monitor() -> Iterator[LocalServer]:
    with serving(ok) as server:
        yield server


def run(tmp_path: Path, server: SandboxServer, *args: str, config: str = "", **env: str) -> Result:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    (tmp_path / "sync.toml").write_text(config)
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path / "in.csv"),
            "--config",
            str(tmp_path / "sync.toml"),
            "--base-url",
            server.base_url,
            "--state",
            str(tmp_path / "state.sqlite"),
            "--ledger",
            str(tmp_path / "l-{run_id}.csv"),
            "--log-format",
            "json",
            *args,
        ],
        env={"HINDSIGHT_API_KEY": API_KEY, "HTTP_PROXY": None, "NO_PROXY": None, **env},
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert_no_key(result.stdout, result.stderr)
    return result


def events(result: Result, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    return [e for e in lines if e["event"] == name]


def test_start_then_the_exit_code_with_the_summary(
    tmp_path: Path, sandbox: SandboxServer, monitor: LocalServer
) -> None:
    result = run(tmp_path, sandbox, "--ping-url", monitor.root + "/check-1/")
    assert result.exit_code == 0
    assert [(s.method, s.path) for s in monitor.seen] == [
        ("GET", "/check-1/start"),
        ("POST", "/check-1/0"),
    ]
    summary = json.loads(monitor.seen[1].body)
    assert summary["exit_code"] == 0 and summary["counts"] == {"ok": 2}
    assert summary["run_id"] == events(result, "run_finished")[0]["run_id"]
    for seen in monitor.seen:
        assert "Authorization" not in seen.headers
        assert API_KEY.encode() not in seen.body and API_KEY not in json.dumps(seen.headers)
    assert events(result, "ping_failed") == []


def test_a_failed_run_pings_its_exit_code(
    tmp_path: Path, sandbox: SandboxServer, monitor: LocalServer
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[900000001, "Ghost"]])
    config = f'[metrics]\nping_url = "{monitor.root}/c"\n'
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path / "in.csv"),
            "--config",
            str(_write(tmp_path / "sync.toml", config)),
            "--base-url",
            sandbox.base_url,
            "--state",
            str(tmp_path / "state.sqlite"),
            "--ledger",
            str(tmp_path / "l.csv"),
        ],
        env={"HINDSIGHT_API_KEY": API_KEY},
    )
    assert result.exit_code == 1
    assert [s.path for s in monitor.seen] == ["/c/start", "/c/1"]


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (["--rate-period", "5"], ""),  # ambiguous without a rate limit
        (["--max-changes", "1"], ""),  # a guard
        ([], "[api]\ntier = 'platinum'\n"),  # a bad value elsewhere in the file
    ],
    ids=["bad-option", "guard", "bad-config-value"],
)
def test_a_run_refused_before_sending_pings_2(
    tmp_path: Path, sandbox: SandboxServer, monitor: LocalServer, args: list[str], config: str
) -> None:
    config += f'[metrics]\nping_url = "{monitor.root}/c"\n'
    result = run(tmp_path, sandbox, *args, config=config)
    assert result.exit_code == 2
    assert [s.path for s in monitor.seen] == ["/c/2"]  # never started
    ending = json.loads(monitor.seen[0].body)
    assert ending["exit_code"] == 2 and ending["error"]
    assert sandbox.requests() == []


def test_a_monitor_that_is_down_is_one_warning_and_changes_nothing(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    with serving(ok) as gone:
        url = gone.root
    result = run(tmp_path, sandbox, "--ping-url", url)
    assert result.exit_code == 0
    failed = events(result, "ping_failed")
    assert [e["url"] for e in failed] == [f"{url}/start", f"{url}/0"]  # one warning a ping
    assert all(e["level"] == "warning" for e in failed)


def test_a_monitor_that_hangs_is_given_up_after_the_timeout(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sync_worker.record.ping.PING_TIMEOUT_S", 0.3)
    with serving(hang) as slow:
        result = run(tmp_path, sandbox, "--ping-url", slow.root + "/c")
    assert result.exit_code == 0
    assert len(events(result, "ping_failed")) == 2


def test_pings_go_through_the_apis_proxy(
    tmp_path: Path, sandbox: SandboxServer, monitor: LocalServer
) -> None:
    script = Path(__file__).parents[1] / "forward_proxy.py"
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        proxy = f"http://127.0.0.1:{process.stdout.readline().split()[-1]}"
        result = run(tmp_path, sandbox, "--ping-url", monitor.root + "/c", HTTP_PROXY=proxy)
        assert result.exit_code == 0
        import urllib.request

        with urllib.request.urlopen(f"{proxy}/_proxy/seen", timeout=5) as answer:
            seen = json.loads(answer.read())["seen"]
    finally:
        process.terminate()
        process.wait(timeout=5)
    assert f"GET {monitor.root}/c/start" in seen and f"POST {monitor.root}/c/0" in seen
    assert [s.path for s in monitor.seen] == ["/c/start", "/c/0"]


def test_a_bad_ping_url_is_refused_naming_the_option(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    result = run(tmp_path, sandbox, "--ping-url", "hc-ping.com/abc")
    assert result.exit_code == 2 and "--ping-url" in result.stderr
    assert sandbox.requests() == []


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
