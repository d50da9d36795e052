"""structlog set-up: JSON lines for cron, console lines on a terminal, the key never shown."""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

REDACTED = "[REDACTED]"
_secrets: list[str] = []  # values that must never leave the process in any text
_mode = {"json": True}  # how the last configure() renders: JSON lines or console lines
_bar: list[Any] = []  # the progress bar on screen (tqdm), if any: lines are written above it


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
    log_format: str = "auto",
    stream: TextIO | None = None,
    console: Callable[[], Any] | None = None,
) -> None:
    """`auto` means console lines on a terminal, JSON lines otherwise. `console` gives the
    renderer of console lines (the CLI's: a run's start line, its report at the end); without
    one, structlog's own."""
    # here, not at the top: `--help` never logs, and structlog with the asyncio it imports
    # costs ~50 ms of start-up
    import logging

    import structlog

    out = stream or sys.stderr
    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    _mode["json"] = use_json
    if use_json:
        renderer: Any = structlog.processors.JSONRenderer()
    elif console is not None:
        renderer = console()  # asked for only here: cron (JSON) never imports it
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *_args: LineWriter(out),
        cache_logger_on_first_use=False,
    )


def get_logger() -> FilteringBoundLogger:
    import structlog  # see configure()

    logger: FilteringBoundLogger = structlog.get_logger("sync_worker")
    return logger


def json_mode() -> bool:
    """True when events are JSON lines (cron): errors then go out as one JSON event too."""
    return _mode["json"]
