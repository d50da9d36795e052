"""The fixtures: a real sandbox server on 127.0.0.1, shared or of a test's own, and the checks
and clean-ups around every test. What tests import is in helpers.py."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import API_KEY, SandboxServer, assert_no_key, set_latency, start_sandbox


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked `slow` first, in their order: pytest-xdist hands out the first tests one
    to each process in turn, so the longest start at once, side by side, and the short ones
    fill in around them rather than one long test being left to run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(autouse=True)
def process_left_as_found() -> Iterator[None]:
    """The command line runs in this process (`run_cli`), so what it may change for its own
    process is put back after each test: the current folder, the SIGINT and SIGTERM handlers,
    the secrets the logs scrub and how they render. A test then never depends on which ran
    before it on the same worker."""
    from sync_worker import logs

    folder = os.getcwd()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    secrets, mode, bar = list(logs._secrets), dict(logs._mode), list(logs._bar)
    yield
    os.chdir(folder)
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)
    logs._secrets[:], logs._bar[:] = secrets, bar
    logs._mode.clear()
    logs._mode.update(mode)


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
    """The sandbox at 1000 requests a second, as new: no interviews, no requests, no window, no
    latency (a test may set one: `set_latency`)."""
    request = urllib.request.Request(shared_sandbox.root + "/_sandbox/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
    set_latency(shared_sandbox, 0)
    return shared_sandbox
