"""sync-worker: keep Hindsight interview notes in step with CRM exports.

From Python: `sync_worker.sync(inputs, **options) -> RunResult` (or `await sync_async(...)`
inside an event loop), `validate(...)`, `plan_requests(...)` and `revert(run_id, ...)`, with the
options of the command line as keywords; every error derives from `SyncWorkerError`. See the
README's "From Python" section."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync_worker.version import __version__

if TYPE_CHECKING:
    from sync_worker.commands.api import (
        RunResult,
        ValidationResult,
        plan_requests,
        revert,
        sync,
        sync_async,
        validate,
    )
    from sync_worker.errors import (
        ConfigError,
        EventLoopError,
        FatalApiError,
        InputError,
        LockedError,
        SyncWorkerError,
    )
    from sync_worker.record.summary import RunSummary

# public name -> the module that holds it, imported on first use: `import sync_worker` (an
# Airflow DAG file parsed every few seconds) must not pay for structlog and asyncio (~45 ms),
# let alone pandas
_HOMES = {
    "sync": "sync_worker.commands.api",
    "sync_async": "sync_worker.commands.api",
    "validate": "sync_worker.commands.api",
    "plan_requests": "sync_worker.commands.api",
    "revert": "sync_worker.commands.api",
    "RunResult": "sync_worker.commands.api",
    "ValidationResult": "sync_worker.commands.api",
    "RunSummary": "sync_worker.record.summary",
    "SyncWorkerError": "sync_worker.errors",
    "ConfigError": "sync_worker.errors",
    "InputError": "sync_worker.errors",
    "LockedError": "sync_worker.errors",
    "FatalApiError": "sync_worker.errors",
    "EventLoopError": "sync_worker.errors",
}

__all__ = [
    "ConfigError",
    "EventLoopError",
    "FatalApiError",
    "InputError",
    "LockedError",
    "RunResult",
    "RunSummary",
    "SyncWorkerError",
    "ValidationResult",
    "__version__",
    "plan_requests",
    "revert",
    "sync",
    "sync_async",
    "validate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sync_worker' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
