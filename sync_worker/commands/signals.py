"""SIGINT / SIGTERM as a stop request: no new requests, in-flight ones finish, exit 130 / 143."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopSignal:
    """Turns SIGINT / SIGTERM into a stop request, before and during the event loop."""

    def __init__(self) -> None:
        self.reason: str | None = None  # what asked for the stop: a signal's name, max_duration
        self._event: asyncio.Event | None = None  # the send loop's stop event, once bound
        self._loop: asyncio.AbstractEventLoop | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason  # logged by the run, not here: a signal handler must not print
        if self._event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._event.set)

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
            sig: signal.signal(sig, lambda s, _f: self.request(signal.Signals(s).name))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, previous in handlers.items():
                signal.signal(sig, previous)
