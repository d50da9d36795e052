"""structlog set-up: JSON lines for cron, console lines on a terminal, the key never shown.

The command line owns its process, so it configures structlog (`configure`). A call from Python
(`sync_worker.sync`) changes nothing global: inside `library_logging`, events go through the
host's structlog configuration when it has one (the key scrubbed first), and otherwise through a
logger of our own, on stderr, that the host's structlog never sees.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger, Processor

REDACTED = "[REDACTED]"
_secrets: list[str] = []  # values that must never leave the process in any text
_mode = {"json": True}  # how the last configure() renders: JSON lines or console lines
# the logger of a call from Python, for its duration (a context variable: asyncio tasks and
# threads started with the context see it, another thread's call has its own)
_call_logger: ContextVar[FilteringBoundLogger | None] = ContextVar(
    "sync_worker_logger", default=None
)
_bar: list[Any] = []  # the progress bar on screen (tqdm), if any: lines are written above it
Console = Callable[[], Any]  # gives the renderer of console lines, asked for only when used


class LineWriter:
    """structlog's logger: each event one line on the stream, written above the progress bar
    when one is shown (tqdm clears it, writes, and draws it again), never through it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        if _bar:
            _bar[0].write(message, file=self._stream)
        else:
            self._stream.write(message + "\n")
            self._stream.flush()

    debug = info = warning = error = critical = exception = msg


def showing_progress(bar: Any | None) -> None:
    """The bar now on screen (None: gone): log lines go above it while it is shown."""
    _bar[:] = [bar] if bar is not None else []


def register_secret(value: str) -> None:
    """Remember a secret so every log event, ledger cell and message is scrubbed of it."""
    if value and value not in _secrets:
        _secrets.append(value)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no event, traceback included, ever holds a registered secret."""
    if not _secrets:
        return event_dict
    return {key: _scrub(value) for key, value in event_dict.items()}


def configure(
    log_format: str = "auto", stream: TextIO | None = None, console: Console | None = None
) -> None:
    """`auto` means console lines on a terminal, JSON lines otherwise. `console` gives the
    renderer of console lines (the CLI's: a run's start line, its report at the end); without
    one, structlog's own."""
    # here, not at the top: `--help` never logs, and structlog with the asyncio it imports
    # costs ~50 ms of start-up
    import logging

    import structlog

    out = stream or sys.stderr
    _mode["json"] = _uses_json(log_format, out)
    structlog.configure(
        processors=_processors(log_format, out, console),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *_args: LineWriter(out),
        cache_logger_on_first_use=False,
    )


def _uses_json(log_format: str, out: TextIO) -> bool:
    return log_format == "json" or (log_format == "auto" and not out.isatty())


def _processors(log_format: str, out: TextIO, console: Console | None = None) -> list[Processor]:
    import structlog

    if _uses_json(log_format, out):
        renderer: Any = structlog.processors.JSONRenderer()
    elif console is not None:
        renderer = console()  # asked for only here: cron (JSON) never imports it
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
        renderer,
    ]


@contextmanager
def library_logging(log_format: str = "json") -> Iterator[None]:
    """Where a Python call's events go, for its duration, without touching structlog's global
    configuration: a host that configured structlog gets them through its own processors (the
    key scrubbed before any of them); otherwise a private logger writes them to stderr as
    `log_format` says, as the command line would."""
    import logging

    import structlog

    if structlog.is_configured():
        # the run's own context first (its run_id: every event carries it, whatever the host's
        # processors merge), then the key scrubbed before any processor of the host sees it
        processors = [
            structlog.contextvars.merge_contextvars,
            redact_secrets,
            *structlog.get_config()["processors"],
        ]
        logger = structlog.wrap_logger(
            None, processors=processors, logger_factory_args=("sync_worker",)
        )
    else:
        out = sys.stderr
        logger = structlog.wrap_logger(
            LineWriter(out),
            processors=_processors(log_format, out),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            context_class=dict,
        )
    token = _call_logger.set(logger)
    try:
        yield
    finally:
        _call_logger.reset(token)


def get_logger() -> FilteringBoundLogger:
    logger = _call_logger.get()
    if logger is not None:
        return logger
    import structlog  # see configure()

    configured: FilteringBoundLogger = structlog.get_logger("sync_worker")
    return configured


def json_mode() -> bool:
    """True when events are JSON lines (cron): errors then go out as one JSON event too."""
    return _mode["json"]
