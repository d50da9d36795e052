"""The local stand-in for the Hindsight API (`sync-worker sandbox`)."""

from sync_worker.sandbox.server import SandboxConfig, serve

__all__ = ["SandboxConfig", "serve"]
