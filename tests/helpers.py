"""What the tests share, importable as `helpers` (pytest puts tests/ on the path): the sandbox
as a real server on 127.0.0.1, the command line run in this process (`run_cli`) or started as a
process of its own where only a process will do (`start_run`: signals, kill -9, another run's
lock), the runs the end-to-end tests start, and the checks every case makes (one line, no
traceback, one ledger line a row, no key anywhere). The fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import subprocess
import sys
import time
import traceback
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the checkout: samples/, sync_worker/, pyproject.toml
API_KEY = "sk-test-5f2c9a7e41d84b0c"  # a test key; every e2e test checks it never leaks


@dataclass
class SandboxServer:
    process: subprocess.Popen[str]
    root: str  # http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        return self.root + "/api/v1"

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.root + path, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def requests(self) -> list[dict[str, Any]]:
        """Every PATCH the sandbox received: arrival (Unix seconds), id, answer."""
        return list(self.get("/_sandbox/requests")["requests"])

    def interview(self, interview_id: int) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/_sandbox/interviews/{interview_id}")
        return result

    def link(self, links: Mapping[str | int, int]) -> None:
        """Interviews not yet seen share a contact: {interview: another interview whose
        contact it joins} (each interview is its own contact otherwise), as the API keeps the
        interviews of one email on one contact."""
        body = json.dumps({str(k): v for k, v in links.items()}).encode()
        request = urllib.request.Request(self.root + "/_sandbox/contacts", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class StrictWindow:
    """The sandbox's rule in miniature, for the pacer's tests on a virtual or loop clock:
    `limit` accepted requests in any `window` seconds (refusals not counted), its reset
    announced exactly or rounded up to a whole second of its own clock."""

    limit: int
    window: float
    whole_seconds: bool = False
    clock_offset: float = 0.0  # the server's clock minus ours: where its whole seconds fall
    held: deque[float] = field(default_factory=deque)
    arrivals: list[float] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)  # (429 at, its reset)

    def answer(self, arrival: float) -> float | None:
        """None: accepted; else the announced reset, on our clock."""
        self.arrivals.append(arrival)
        while self.held and arrival - self.held[0] >= self.window:
            self.held.popleft()
        if len(self.held) < self.limit:
            self.held.append(arrival)
            return None
        reset = self.held[0] + self.window
        if self.whole_seconds:
            reset = math.ceil(reset + self.clock_offset) - self.clock_offset
        self.pauses.append((arrival, reset))
        return reset


def set_latency(server: SandboxServer, latency_ms: float, jitter_ms: float = 0.0) -> None:
    """Each answer of the sandbox from now on takes latency_ms +- up to jitter_ms."""
    body = json.dumps({"latency_ms": latency_ms, "latency_jitter_ms": jitter_ms}).encode()
    request = urllib.request.Request(server.root + "/_sandbox/latency", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


# A request that reaches the sandbox this soon after a 429 left the client before the 429 reached
# it (they crossed on the wire: two sends the pacer let go together after a stall of its loop
# arrive ~1 ms apart, and the first may be the one refused); later than this, it was sent in
# the pause.
CROSSED_S = 0.01


def sent_in_pauses(log: list[dict[str, Any]]) -> list[float]:
    """Arrivals while a 429's reset held: after the 429 (and what crossed it) and more than
    2 ms before its reset (the sandbox's and the worker's clocks are read apart)."""
    arrivals = [r["t"] for r in log]
    return [
        t
        for rejected in log
        if rejected["status"] == 429
        for t in arrivals
        if rejected["t"] + CROSSED_S < t < rejected["reset_at"] - 0.002
    ]


def start_sandbox(*args: str) -> SandboxServer:
    command = [sys.executable, "-m", "sync_worker", "sandbox", "--port", "0", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(
            f"sandbox did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
        )
    root = line.strip().rsplit(" ", 1)[-1].removesuffix("/api/v1")
    return SandboxServer(process, root)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events() if e["event"] == name)


def cli_env(**extra: str) -> dict[str, str]:
    """Hermetic (no key or proxy of the caller's), and compiled modules cached as in any install:
    a machine with PYTHONDONTWRITEBYTECODE set would compile the package in every one of the
    suite's CLI processes (~0.06 s of CPU each)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HINDSIGHT_")
        and not k.lower().endswith("_proxy")
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["HINDSIGHT_API_KEY"] = API_KEY
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> Result:
    """`sync-worker ARGS` in this process (click's CliRunner), in `cwd` and with the environment
    a process of its own would get (`cli_env`), given back as that process would give it: exit
    code, stdout, and stderr (JSON log lines: not a terminal). An exception the command line let
    through is a traceback on stderr, as a process prints it. A command still running after
    `timeout` seconds ends this test process with every thread's stack, as a hang would need."""
    from click.testing import CliRunner

    from sync_worker.cli.main import main

    with contextlib.chdir(cwd), _deadline(timeout):
        done = CliRunner().invoke(
            main,
            list(args),
            env=_environment(env if env is not None else cli_env()),
            prog_name="sync-worker",
        )
    stderr = done.stderr
    if done.exc_info is not None and not isinstance(done.exc_info[1], SystemExit):
        stderr += "".join(traceback.format_exception(*done.exc_info))
    assert_no_key(done.stdout, stderr)
    return Result(done.exit_code, done.stdout, stderr)


def _environment(wanted: Mapping[str, str]) -> dict[str, str | None]:
    """The changes that make this process's environment `wanted` (None: unset), as CliRunner
    takes them; it puts the old values back after the command."""
    unset: dict[str, str | None] = {name: None for name in os.environ if name not in wanted}
    return unset | {name: value for name, value in wanted.items() if os.environ.get(name) != value}


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def start_run(folder: Path, args: list[str]) -> subprocess.Popen[str]:
    """`python -m sync_worker ARGS` started in the background (to signal, kill or race it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sync_worker", *args],
        cwd=folder,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_arrivals(server: SandboxServer, count: int, timeout: float = 20) -> None:
    """Until the sandbox has received `count` requests: a background run got going."""
    deadline = time.monotonic() + timeout
    while len(server.requests()) < count:
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_ledger(path: Path) -> list[dict[str, str]]:
    from sync_worker.record.ledger import read_ledger as read

    return read(path)


def write_line(ledger: Any, line: dict[str, Any]) -> None:
    """A ledger line given as a mapping: every Where column, and the Result columns it sets."""
    from sync_worker.record.ledger import Result, Where

    where = Where(**{k: line[k] for k in Where._fields})
    ledger.write(where, Result(**{k: line[k] for k in Result._fields if k in line}))


def assert_no_key(*texts: str, paths: tuple[Path, ...] = ()) -> None:
    """The API key is nowhere: not in output, logs, ledger, summary or state."""
    for text in texts:
        assert API_KEY not in text
    for path in paths:
        for file in [path] if path.is_file() else path.rglob("*"):
            if file.is_file():
                assert API_KEY.encode() not in file.read_bytes(), file


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


def strict_json(text: str) -> Any:
    """json.loads that takes only RFC 8259: no NaN, no Infinity, no number beyond a double."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    def finite(literal: str) -> float:
        if not math.isfinite(float(literal)):
            raise ValueError(f"not a finite number: {literal}")
        return float(literal)

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def write_parquet(path: Path, columns: dict[str, Any]) -> Path:
    """A Parquet file of these Arrow columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# -- runs against the sandbox, as the end-to-end tests of several stages start them ------------

FAST_BACKOFF = "[api]\nbackoff_base_s = 0.02\n"
NO_KEY = {"HINDSIGHT_API_KEY": ""}  # cli_env(**NO_KEY): a run with no key at hand


def rows_csv(folder: Path, count: int, name: str = "in.csv", tag: str = "N") -> Path:
    """`count` rows of interview_id and contact_name (`tag` and the row's number)."""
    return write_csv(
        folder / name,
        ["interview_id", "contact_name"],
        [[i, f"{tag}{i}"] for i in range(1, count + 1)],
    )


def run_args(
    server: SandboxServer,
    *args: str,
    state: str = "state.sqlite",
    ledger: str = "ledger.csv",
    source: str = "in.csv",
) -> list[str]:
    """A run of `source` at 1000 a second unless ARGS say otherwise (the last value of an
    option wins)."""
    return [
        "run",
        source,
        "--base-url",
        server.base_url,
        "--state",
        state,
        "--ledger",
        ledger,
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
    ]


def run_against(folder: Path, server: SandboxServer, *args: str) -> Result:
    """`run in.csv` against `server` at 1000 a second on state.sqlite; ARGS name the ledger."""
    return run_cli(
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        *args,
        cwd=folder,
    )


def run_ok(folder: Path, server: SandboxServer, *args: str, **env: str) -> dict[str, object]:
    """A run that must succeed: exit 0, one ledger line, no traceback; its summary."""
    write_csv(folder / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        *args,
        cwd=folder,
        env=cli_env(**env),
    )
    assert_no_traceback(result, 0)
    assert_ledger_rows(folder / "l.csv", 1)
    summary: dict[str, object] = json.loads((folder / "l.csv.summary.json").read_text())
    return summary


def fast_rows(folder: Path, count: int) -> None:
    """`count` rows in in.csv, and fast.toml: retries 20 ms apart, two of them."""
    rows_csv(folder, count)
    (folder / "fast.toml").write_text("[api]\nbackoff_base_s = 0.02\nmax_retries = 2\n")


def fast_run_args(server: SandboxServer, *args: str) -> list[str]:
    """A run of in.csv with fast.toml at 1000 a second unless ARGS say otherwise."""
    return run_args(server, "--config", "fast.toml", *args)
