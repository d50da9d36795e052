"""sync-worker: keep Hindsight interview notes in step with CRM exports.

From Python: `sync_worker.sync(inputs, **options) -> RunResult` and `sync_worker.validate(...)`;
see the README's "From Python" section."""

__version__ = "0.1.0"

from sync_worker.api import RunResult, ValidationResult, sync, validate

__all__ = ["RunResult", "ValidationResult", "__version__", "sync", "validate"]
