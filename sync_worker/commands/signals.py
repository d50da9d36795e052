"""SIGINT / SIGTERM as a stop request: no new requests, in-flight ones finish, exit 130 / 143.

Before sending, a run reads and plans for seconds (a 500,000-row file: a few seconds of Arrow
and Python), and nothing it does then needs finishing: a signal while it plans interrupts the
planning at once (`Interrupted`, raised in the main thread by the handler), and every row gets
its ledger line as `not_attempted`. While it reads, a stop is only recorded: the rows must be
known to give each its line, and reading is the shortest part."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sync_worker.vocabulary import ExitCode


class Interrupted(BaseException):
    """Raised by the signal handler while the run plans (`StopSignal.interrupting`). A
    BaseException, so no `except Exception` on the way swallows it."""


class StopSignal:
    """Turns SIGINT / SIGTERM into a stop request, before and during the event loop."""

    def __init__(self) -> None:
        self.reason: str | None = None  # what asked for the stop: a signal's name, max_duration
        self._event: asyncio.Event | None = None  # the send loop's stop event, once bound
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupting = False  # a signal now raises Interrupted (the run is planning)
        self.deadline: float | None = None  # --max-duration's end, monotonic; None: no window
        relay = _relay.get()
        if relay is not None:
            relay.attach(self)

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason  # logged by the run, not here: a signal handler must not print
        if self._event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    def time_left(self) -> float | None:
        """Seconds left of the window (None: no window)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def past_deadline(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def _signalled(self, signum: int) -> None:
        self.request(signal.Signals(signum).name)
        if self._interrupting:
            self._interrupting = False  # once: the run's own clean-up is not interrupted
            raise Interrupted

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """While planning: a signal interrupts it (Interrupted), or a stop asked for before
        comes out here. Elsewhere a signal only asks for the stop."""
        if self.reason is not None:
            raise Interrupted
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    def bind(self, event: asyncio.Event) -> None:
        self._event, self._loop = event, asyncio.get_running_loop()
        if self.reason is not None:
            event.set()

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """The handlers for the run, the previous ones put back after. Off the main thread
        (a task runner's worker) Python allows no handler: the host's signals are its own."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        handlers = {
            sig: signal.signal(sig, lambda s, _f: self._signalled(s))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, previous in handlers.items():
                # None: a handler set outside Python, which Python cannot set back
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)


class StopRelay:
    """Stop requests from outside the run's thread: `sync_async`'s task cancelled while the run
    goes on in a worker thread. A run started in a context holding one (`relaying`) attaches
    its StopSignal; a stop asked for before that reaches it as it attaches."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._stoppers: list[StopSignal] = []
        self._lock = threading.Lock()

    def attach(self, stopper: StopSignal) -> None:
        with self._lock:
            self._stoppers.append(stopper)
            if self.reason is not None:
                stopper.request(self.reason)

    def request(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            for stopper in self._stoppers:
                stopper.request(reason)

    def relaying(self) -> contextvars.Context:
        """A context to run the run in, so its StopSignal attaches here."""
        context = contextvars.copy_context()
        context.run(_relay.set, self)
        return context


_relay: contextvars.ContextVar[StopRelay | None] = contextvars.ContextVar(
    "sync_worker_stop_relay", default=None
)


def pass_on(stopped_by: str | None) -> None:
    """After a run a signal stopped has ended cleanly (ledger, state and metrics written, the
    handlers put back), the signal goes on to what the process had before the run, as if the
    run had not caught it: the previous handler is called (Python's own SIGINT handler raises
    KeyboardInterrupt). A default handler gets the signal's meaning without killing the process
    outright, so the host's `finally` blocks and exit hooks still run: SIGINT raises
    KeyboardInterrupt, SIGTERM SystemExit(143), the status a shell gives a process SIGTERM
    ended. An ignored signal (SIG_IGN) goes no further: the run's exit code says it stopped."""
    if stopped_by not in ("SIGINT", "SIGTERM"):
        return
    sig = signal.Signals[stopped_by]
    previous = signal.getsignal(sig)
    if callable(previous):
        previous(sig, sys._getframe(1))
    elif previous == signal.SIG_IGN:
        return
    elif sig == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(ExitCode.SIGTERM)
