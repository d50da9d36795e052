"""Pings for a healthchecks-style monitor (`--ping-url`, `[metrics] ping_url`), as
healthchecks.io reads them: `URL/start` when sending begins, `URL/<exit code>` at the end
(`URL/0`: success) with the run's summary as the body, so the monitor shows what went wrong.

A ping goes through the proxy and CA settings the API's requests use (a monitor outside the
company network is reached the same way), carries no key, and waits at most PING_TIMEOUT_S. A
ping that fails is one warning: the monitor's trouble never changes the run's outcome.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any

from sync_worker.errors import ConfigError
from sync_worker.logs import get_logger, redact
from sync_worker.settings.network import route, tls_context
from sync_worker.version import __version__

PING_TIMEOUT_S = 10.0


def ping(
    url: str,
    what: str,
    summary: Mapping[str, Any] | None = None,
    proxy: str | None = None,
    ca_bundle: str | None = None,
) -> bool:
    """`URL/<what>` (`start`, or an exit code), with `summary` as a JSON body; False (and one
    warning) if the monitor could not be told."""
    target = f"{url.rstrip('/')}/{what}"
    body = None if summary is None else redact(json.dumps(summary, default=str)).encode()
    try:
        opener = _opener(target, proxy, ca_bundle)
        request = urllib.request.Request(
            target,
            data=body,
            method="GET" if body is None else "POST",
            headers={
                "User-Agent": f"sync-worker/{__version__}",
                "Content-Type": "application/json",
            },
        )
        with opener.open(request, timeout=PING_TIMEOUT_S) as answer:
            answer.read()
        return True
    except (ConfigError, OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        get_logger().warning(
            "ping_failed",
            url=target,
            error=redact(" ".join(str(getattr(exc, "reason", exc)).split())),
            message="the monitor was not told; the run goes on as if it had been",
        )
        return False


def _opener(target: str, proxy: str | None, ca_bundle: str | None) -> urllib.request.OpenerDirector:
    """An opener that reaches `target` as the API's requests would, and reads nothing else of
    the environment (no ~/.netrc, no second proxy rule)."""
    chosen = route(target, proxy)
    scheme = target.split(":", 1)[0].lower()
    proxies = {scheme: chosen.proxy} if chosen.proxy else {}
    return urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies),
        urllib.request.HTTPSHandler(context=tls_context(ca_bundle)),
    )
