"""How the worker reaches the API from a company network: a proxy and a private CA.

The proxy is `[api] proxy` from the config, else the environment's (`HTTPS_PROXY` or
`HTTP_PROXY` for the base URL's scheme, unless `NO_PROXY` names its host, as curl and pip read
them). It is decided once per run, since every request goes to one host: aiohttp's own
`trust_env` decides again for every request, reading the environment and ~/.netrc each time,
which cost a run three quarters of its speed on loopback (measured: 220,000 -> 61,000 requests
a minute). TLS verifies against `[api] ca_bundle` when set (a company's private CA, say for a
proxy that re-signs traffic), else against the system's store, which OpenSSL points elsewhere
when `SSL_CERT_FILE` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sync_worker.errors import ConfigError

if TYPE_CHECKING:
    import ssl


def tls_context(ca_bundle: str | None, where: str = "[api] ca_bundle") -> ssl.SSLContext | None:
    """A context verifying against `ca_bundle`; None: aiohttp's default (the system's store)."""
    if ca_bundle is None:
        return None
    import ssl  # here: every command reads the config; only a CA bundle needs ssl (~10 ms)

    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except FileNotFoundError:
        raise ConfigError(f"{where} {ca_bundle}: no such file") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"{where} {ca_bundle}: not a CA bundle this machine can read ({exc}); give a PEM "
            "file of the CA certificates to trust"
        ) from None


def check_proxy(url: str) -> str:
    """An http(s) proxy URL, as aiohttp takes it (`http://host:port`, with user:password@ if
    the proxy needs them)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// proxy URL like http://proxy.corp:3128")
    return url


def proxy_for(
    base_url: str, configured: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The proxy every request of the run goes through, or None for a direct connection."""
    if configured:
        return configured
    proxies = {
        name.lower().removesuffix("_proxy"): value
        for name, value in environ.items()
        if name.lower().endswith("_proxy") and value
    }  # as urllib.request.getproxies_environment reads them, from the mapping given
    parts = urlsplit(base_url)
    proxy = proxies.get(parts.scheme)
    if not proxy or _bypassed(parts.hostname or "", parts.port, proxies.get("no", "")):
        return None
    return proxy


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: `*`, or hosts and domains (`.corp` or `corp`), each with an
    optional `:port`, separated by commas."""
    host = host.lower()
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        name, _, entry_port = entry.partition(":")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False
