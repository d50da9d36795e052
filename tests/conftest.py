"""Shared fixtures: a real sandbox server on 127.0.0.1 and a real CLI process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture(autouse=True)
def key_never_written(tmp_path: Path) -> Iterator[None]:
    """After every test: no file it wrote (ledger, summary, state, logs) holds the API key."""
    yield
    assert_no_key(paths=(tmp_path,))


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts as a host that never configured structlog: the command line, run in
    this process (CliRunner), configures it as it does in its own process, and that must not
    decide where a later test's library call logs to (a CliRunner's stream is closed after)."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    started: list[SandboxServer] = []

    def make(*args: str) -> SandboxServer:
        server = start_sandbox("--api-key", API_KEY, *args)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SandboxServer]:
    """One well-behaved sandbox per test process, reset before each test that uses it: starting
    a server process per test costs more than most of those tests."""
    server = start_sandbox("--api-key", API_KEY, "--rate-limit", "1000", "--rate-period", "1")
    yield server
    server.stop()


@pytest.fixture
def sandbox(shared_sandbox: SandboxServer) -> SandboxServer:
    """The sandbox at 1000 requests a second, as new: no interviews, no requests, no window."""
    request = urllib.request.Request(shared_sandbox.root + "/_sandbox/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
    return shared_sandbox


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
    """Run `python -m sync_worker ARGS` as a real process (logs are JSON: stderr is a pipe)."""
    process = subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        cwd=cwd,
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert_no_key(process.stdout, process.stderr)
    return Result(process.returncode, process.stdout, process.stderr)


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
