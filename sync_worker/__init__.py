"""sync-worker: keep Hindsight interview notes in step with CRM exports."""

__version__ = "0.1.0"
