"""The library embedded in a host process (a notebook, an Airflow or Dagster task): it changes
nothing global, passes a stop on to the host, refuses a running event loop before touching a
file, reads DataFrames, and names keywords in its errors. In this process, against the sandbox.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import structlog
from helpers import API_KEY, SandboxServer, cli_env, read_ledger, wait_for_arrivals, write_csv
from structlog.testing import LogCapture

import sync_worker
from sync_worker.errors import ConfigError, EventLoopError


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HINDSIGHT_API_KEY", raising=False)
    return tmp_path


def options(server: SandboxServer, **more: Any) -> dict[str, Any]:
    return {
        "base_url": server.base_url,
        "api_key": API_KEY,
        "rate_limit": 1000,
        "rate_period": 1,
        "state": "state.sqlite",
        **more,
    }


def test_the_public_names() -> None:
    names = dir(sync_worker)
    for name in ("sync", "sync_async", "validate", "plan_requests", "revert", "RunResult"):
        assert name in names
    for error in ("SyncWorkerError", "ConfigError", "InputError", "LockedError", "FatalApiError"):
        assert issubclass(getattr(sync_worker, error), sync_worker.SyncWorkerError)
    assert "option_names" not in inspect.signature(sync_worker.sync).parameters
    assert {"base_url", "api_key", "state", "dry_run"} <= set(
        inspect.signature(sync_worker.sync).parameters
    )


# -- nothing global changes ------------------------------------------------------------------------


def test_a_host_s_structlog_and_context_stay_as_they_were(
    work: Path, sandbox: SandboxServer
) -> None:
    """The host's configuration gets our events (the key scrubbed); its bound variables, its
    own `run_id` among them, are there again after the run."""
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    config = structlog.get_config()
    structlog.contextvars.bind_contextvars(task="nightly", run_id="host-run")
    try:
        csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
        result = sync_worker.sync(csv, **options(sandbox))
        assert structlog.get_config() == config
        assert structlog.contextvars.get_contextvars() == {"task": "nightly", "run_id": "host-run"}
    finally:
        structlog.contextvars.clear_contextvars()
    finished = next(e for e in capture.entries if e["event"] == "run_finished")
    assert finished["run_id"] == result.run_id and finished["task"] == "nightly"
    assert API_KEY not in repr(capture.entries)


def test_every_event_carries_the_run_id_whatever_the_host_s_processors(
    work: Path, sandbox: SandboxServer
) -> None:
    """A host whose processors do not merge context variables still gets `run_id` on every
    one of our events."""
    capture = LogCapture()
    structlog.configure(processors=[capture])
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], ["x", "B"]])
    result = sync_worker.sync(csv, **options(sandbox))
    ours = [
        e for e in capture.entries if e["event"] in ("run_started", "invalid_row", "run_finished")
    ]
    assert len(ours) >= 3 and {e.get("run_id") for e in ours} == {result.run_id}


def test_without_a_host_configuration_structlog_stays_unconfigured(
    work: Path, sandbox: SandboxServer, capfd: pytest.CaptureFixture[str]
) -> None:
    assert not structlog.is_configured()
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = sync_worker.sync(csv, **options(sandbox))
    assert not structlog.is_configured()
    err = capfd.readouterr().err
    assert f'"run_id": "{result.run_id}"' in err  # our own logger: JSON lines on stderr


def test_validate_leaves_pyarrow_s_memory_pool(work: Path) -> None:
    before = pa.default_memory_pool().backend_name
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    assert sync_worker.validate(csv).exit_code == 0
    sync_worker.plan_requests(csv, state="state.sqlite")
    assert pa.default_memory_pool().backend_name == before


# -- event loops -----------------------------------------------------------------------------------


def test_inside_a_running_loop_sync_refuses_before_touching_a_file(
    work: Path, sandbox: SandboxServer
) -> None:
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])

    async def task() -> None:
        sync_worker.sync(csv, **options(sandbox, ledger="ledger.csv"))

    with pytest.raises(EventLoopError, match=r"await sync_worker\.sync_async\(\.\.\.\)"):
        asyncio.run(task())
    assert sorted(p.name for p in work.iterdir()) == ["in.csv"]  # no lock, ledger or state
    assert sandbox.requests() == []


def test_sync_async_runs_while_the_loop_goes_on(work: Path, sandbox: SandboxServer) -> None:
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    ticks: list[int] = []

    async def tick() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.001)

    async def main() -> sync_worker.RunResult:
        ticker = asyncio.create_task(tick())
        try:
            return await sync_worker.sync_async(csv, **options(sandbox))
        finally:
            ticker.cancel()

    result = asyncio.run(main())
    assert result.counts == {"ok": 2} and ticks


def test_cancelling_sync_async_stops_the_run_cleanly(work: Path, sandbox_factory: Any) -> None:
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "1")
    rows = [[i, f"name {i}"] for i in range(1, 41)]
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], rows)

    async def main() -> None:
        run = asyncio.create_task(
            sync_worker.sync_async(csv, **options(server, rate_limit=5, ledger="ledger.csv"))
        )
        await asyncio.to_thread(wait_for_arrivals, server, 1)
        run.cancel()
        await run

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    ledger = read_ledger(work / "ledger.csv")
    assert len(ledger) == 40 and any(line["status"] == "not_attempted" for line in ledger)
    again = sync_worker.sync(csv, **options(server, rate_limit=5, max_rows=0))  # not locked
    assert again.counts["skipped_unchanged"] >= 1


# -- DataFrames ------------------------------------------------------------------------------------


def test_a_dataframe_is_read_as_a_file_s_rows(work: Path, sandbox: SandboxServer) -> None:
    frame = pd.DataFrame(
        {
            "Interview_ID ": pd.Series([4821, 4822, 4823], dtype="int64"),
            "contact_name": [123, "Bo", None],  # object: a number is its text, None empty
            "objective": [1.0, 2.5, float("nan")],  # whole numbers with no ".0"
        }
    )
    requests = sync_worker.plan_requests(frame, state="state.sqlite")
    assert [(r["interview_id"], r["body"]) for r in requests] == [
        (4821, {"contact_name": "123", "objective": "1"}),
        (4822, {"contact_name": "Bo", "objective": "2.5"}),
    ]
    assert sync_worker.validate(frame).files == ("<DataFrame>",)
    ids = pd.DataFrame({"interview_id": [4824.0, 4825.0], "contact_name": ["Cy", "Di"]})
    csv = write_csv(work / "in.csv", ["interview_id", "contact_name"], [[4826, "Ed"]])
    sync_worker.sync([frame.iloc[:2], ids, csv.name], **options(sandbox, ledger="ledger.csv"))
    ledger = read_ledger(work / "ledger.csv")
    places = [(line["source_file"], line["source_row"], line["interview_id"]) for line in ledger]
    assert places == [
        ("<DataFrame>", "1", "4821"),
        ("<DataFrame>", "2", "4822"),
        ("<DataFrame>", "1", "4824"),
        ("<DataFrame>", "2", "4825"),
        ("in.csv", "1", "4826"),
    ]


# -- wrong types and values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"api_key": 123}, "api_key= must be a string (the key itself), got int"),
        ({"base_url": 5}, "base_url= must be a non-empty string, got 5"),
        ({"state": 5}, "state= must be a path (a string or pathlib.Path), got 5"),
        ({"inputs": 5}, "inputs must be file paths (str or pathlib.Path) or pandas DataFrames"),
        ({"ratelimit": 5}, "ratelimit= is not an option of sync() (it takes config=, "),
        ({"merge": "no"}, "merge= must be True or False, got 'no'"),
    ],
    ids=["api-key", "base-url", "state", "inputs", "unknown", "merge"],
)
def test_a_wrong_type_raises_naming_the_keyword(
    work: Path, sandbox: SandboxServer, given: dict[str, Any], words: str
) -> None:
    inputs = given.pop("inputs", write_csv(work / "in.csv", ["interview_id"], [[1]]))
    with pytest.raises(ConfigError) as error:
        sync_worker.sync(inputs, **{**options(sandbox), **given})
    assert words in str(error.value)
    assert "123" not in str(error.value) or "api_key" not in given
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"api_key": None}, "(or use api_key_file=PATH)"),
        ({"api_key": None, "api_key_file": "nokey"}, "api_key_file= nokey: cannot read"),
        ({"state": "."}, "state= needs a file name"),
        ({"ledger": "."}, "ledger= needs a file name"),
        ({"rate_limit": None, "tier": "growth"}, "give rate_limit=N too"),
    ],
    ids=["no-key", "key-file", "state-folder", "ledger-folder", "tier-and-period"],
)
def test_messages_to_python_name_keywords_not_flags(
    work: Path, sandbox: SandboxServer, given: dict[str, Any], words: str
) -> None:
    csv = write_csv(work / "in.csv", ["interview_id"], [[1]])
    with pytest.raises(ConfigError) as error:
        sync_worker.sync(csv, **{**options(sandbox), **given})
    assert words in str(error.value) and "--" not in str(error.value)


# -- signals ---------------------------------------------------------------------------------------


def _stop_after_first_request(server: SandboxServer, sig: signal.Signals) -> threading.Thread:
    """Delivered to the main thread (where the run's handler is) once sending has begun."""

    def stop() -> None:
        wait_for_arrivals(server, 1)
        signal.raise_signal(sig)

    thread = threading.Thread(target=stop)
    thread.start()
    return thread


@pytest.fixture
def slow_run(work: Path, sandbox_factory: Any) -> Iterator[tuple[Path, SandboxServer]]:
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "1")
    rows = [[i, f"name {i}"] for i in range(1, 41)]
    yield write_csv(work / "in.csv", ["interview_id", "contact_name"], rows), server


def _ended_cleanly(work: Path) -> None:
    ledger = read_ledger(work / "ledger.csv")
    assert len(ledger) == 40 and {"ok", "not_attempted"} <= {line["status"] for line in ledger}
    assert (work / "ledger.csv.summary.json").exists()


def test_sigint_ends_the_run_cleanly_then_raises_keyboard_interrupt(
    work: Path, slow_run: tuple[Path, SandboxServer]
) -> None:
    csv, server = slow_run
    before = signal.getsignal(signal.SIGINT)
    thread = _stop_after_first_request(server, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        sync_worker.sync(csv, **options(server, rate_limit=5, ledger="ledger.csv"))
    thread.join()
    _ended_cleanly(work)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_goes_on_to_the_host_s_handler(
    work: Path, slow_run: tuple[Path, SandboxServer]
) -> None:
    csv, server = slow_run
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _frame: received.append(sig))
    try:
        thread = _stop_after_first_request(server, signal.SIGTERM)
        result = sync_worker.sync(csv, **options(server, rate_limit=5, ledger="ledger.csv"))
        thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM] and result.exit_code == 143
    _ended_cleanly(work)


HOST = """
import sys, threading, signal, os, time
import sync_worker
def stop():
    while not os.path.exists("ledger.csv") or os.path.getsize("ledger.csv") < 200:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=stop, daemon=True).start()
try:
    sync_worker.sync("in.csv", base_url=sys.argv[1], rate_limit=5, rate_period=1,
                     state="state.sqlite", ledger="ledger.csv")
finally:
    print("host cleanup ran")
"""


def test_sigterm_with_the_default_handler_exits_143_after_the_host_s_cleanup(
    work: Path, slow_run: tuple[Path, SandboxServer]
) -> None:
    """A process whose SIGTERM was never handled would end: it does, with 143, but through
    SystemExit, so the host's `finally` blocks run."""
    _csv, server = slow_run
    done = subprocess.run(
        [sys.executable, "-c", HOST, server.base_url],
        cwd=work,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 143, done.stderr
    assert "host cleanup ran" in done.stdout
    _ended_cleanly(work)
