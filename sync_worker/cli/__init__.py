"""The click layer: options in, one line out for every expected error."""

from sync_worker.cli.main import main

__all__ = ["main"]
