"""How a run tells its monitoring how it went: the metrics file and the pings (SPEC section 13).

Both report every ending once they are known, a config error or a refused guard included:
a nightly job that stopped starting must show as failing, not as last night's success.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync_worker.errors import SyncWorkerError
from sync_worker.logs import get_logger
from sync_worker.settings.config import Settings
from sync_worker.vocabulary import ExitCode


@dataclass
class Monitor:
    metrics_path: str | None = None  # the Prometheus textfile, if any
    ping_url: str | None = None  # the healthchecks-style URL, if any
    proxy: str | None = None  # [api] proxy: pings go the API's way
    ca_bundle: str | None = None
    began: float = field(default_factory=time.monotonic)
    _metrics_writable: bool = True

    @classmethod
    def of(cls, settings: Settings) -> Monitor:
        return cls(settings.metrics_path, settings.ping_url, settings.proxy, settings.ca_bundle)

    def check(self) -> None:
        """Before a run: a metrics file that cannot be written is a usage error (exit 2), and
        gets no metrics."""
        if self.metrics_path is None:
            return
        # here, not at the top: only --metrics-file needs prometheus_client (~25 ms to import)
        from sync_worker.record.metrics import check_writable

        self._metrics_writable = False
        check_writable(Path(self.metrics_path))
        self._metrics_writable = True

    def started(self) -> None:
        """Sending begins: `URL/start`."""
        if self.ping_url is not None:
            from sync_worker.record.ping import ping  # urllib: only a run that pings needs it

            ping(self.ping_url, "start", None, self.proxy, self.ca_bundle)

    def finished(self, summary: Mapping[str, Any]) -> None:
        """The run ended (`summary` holds its exit_code): metrics, then `URL/<exit code>`."""
        code = int(summary.get("exit_code", ExitCode.ABORTED))
        if self.metrics_path is not None and self._metrics_writable:
            self._write_metrics(summary)
        if self.ping_url is not None:
            from sync_worker.record.ping import ping  # see started()

            ping(self.ping_url, str(code), summary, self.proxy, self.ca_bundle)

    def failed(self, run_id: str | None, exc: BaseException) -> None:
        """The run ended on an error before its summary: report its exit code and message."""
        code = exc.exit_code if isinstance(exc, SyncWorkerError) else ExitCode.ABORTED
        ending: dict[str, Any] = {"exit_code": int(code), "error": str(exc)}
        if run_id is not None:
            ending = {"run_id": run_id, **ending}
        self.finished(ending)

    def _write_metrics(self, summary: Mapping[str, Any]) -> None:
        """A failure to write them is logged, never hides the run's exit code."""
        from sync_worker.record.metrics import write_metrics  # see check()

        assert self.metrics_path is not None
        try:
            write_metrics(Path(self.metrics_path), summary, time.monotonic() - self.began)
        except SyncWorkerError as exc:
            get_logger().error("metrics_not_written", message=str(exc))
