"""How the worker reaches the API from a company network: a proxy and a private CA.

aiohttp's session trusts the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, as curl and
pip do), and `[api] proxy` in the config wins over it. TLS verifies against `[api] ca_bundle`
when set (a company's private CA, say for a proxy that re-signs traffic), else against the
system's store, which OpenSSL points elsewhere when `SSL_CERT_FILE` is set.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from sync_worker.errors import ConfigError


def tls_context(ca_bundle: str | None, where: str = "[api] ca_bundle") -> ssl.SSLContext | None:
    """A context verifying against `ca_bundle`; None: aiohttp's default (the system's store)."""
    if ca_bundle is None:
        return None
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
