"""sync-worker: keep Hindsight interview notes in step with CRM exports.

From Python: `sync_worker.sync(inputs, **options) -> RunResult` and `sync_worker.validate(...)`;
see the README's "From Python" section."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync_worker.version import __version__

if TYPE_CHECKING:
    from sync_worker.commands.api import RunResult, ValidationResult, sync, validate

__all__ = ["RunResult", "ValidationResult", "__version__", "sync", "validate"]


def __getattr__(name: str) -> Any:
    """The API on first use: every `sync_worker.*` import runs this file, and `--help` does not
    need the structlog (and asyncio) that `api` brings (~45 ms)."""
    if name in __all__:
        from sync_worker.commands import api

        return getattr(api, name)
    raise AttributeError(f"module 'sync_worker' has no attribute {name!r}")
