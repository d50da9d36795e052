"""How the worker reaches the API from a company network: a proxy and a private CA.

The proxy is `[api] proxy` from the config, else the environment's, read as curl reads it:
`https_proxy` / `HTTPS_PROXY` for an https URL (`http_proxy` / `HTTP_PROXY` for http), else
`all_proxy` / `ALL_PROXY`, the lower-case name first; a value without a scheme is an http://
proxy; `NO_PROXY` (`*`, host names and domains with or without a leading dot, IP addresses and
CIDR ranges, each with an optional `:port`) sends the hosts it names straight. A SOCKS proxy is
refused, naming the variable: aiohttp speaks only to HTTP proxies, and would send the API's
requests to it as if it were one. The proxy is decided once per run, since every request goes
to one host: aiohttp's own `trust_env` decides again for every request, reading the
environment and ~/.netrc each time, which cost a run three quarters of its speed on loopback
(measured: 220,000 -> 61,000 requests a minute). TLS verifies against `[api] ca_bundle` when
set (a company's private CA, say for a proxy that re-signs traffic), else against
`SSL_CERT_FILE` when set, else against the system's store; a CA file that cannot be read stops
the run before anything is sent.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from sync_worker.errors import ConfigError

DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str) -> str:
    """One spelling of an API base URL, so that two spellings of one API (`HTTPS://`, a host in
    capitals or with its trailing dot, the scheme's own port, a trailing slash) choose the same
    state and are never taken for two APIs. The path keeps its case: servers tell paths apart."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:  # an IPv6 address goes back in brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


if TYPE_CHECKING:
    import ssl

CA_FILE_ENV = "SSL_CERT_FILE"
SOCKS = ("socks4", "socks4a", "socks5", "socks5h")


@dataclass(frozen=True)
class Route:
    """How the run's requests leave: through `proxy` (named by `source`), or straight."""

    proxy: str | None = None  # http(s)://[user:password@]host:port; None: a direct connection
    source: str = ""  # where the proxy came from: `[api] proxy`, `HTTPS_PROXY`, ...

    def shown(self) -> str:
        """The proxy as a message may show it: its source and address, never a password."""
        if self.proxy is None:
            return "no proxy"
        parts = urlsplit(self.proxy)
        host = parts.hostname or ""
        address = f"[{host}]" if ":" in host else host
        address += f":{parts.port}" if parts.port else ""
        return f"the proxy {urlunsplit((parts.scheme, address, '', '', ''))} ({self.source})"


def tls_context(
    ca_bundle: str | None,
    where: str = "[api] ca_bundle",
    environ: Mapping[str, str] = os.environ,
) -> ssl.SSLContext | None:
    """A context verifying against `ca_bundle`, else SSL_CERT_FILE; None: aiohttp's default
    (the system's store)."""
    if ca_bundle is None:
        if not environ.get(CA_FILE_ENV):
            return None
        ca_bundle, where = environ[CA_FILE_ENV], f"the environment variable {CA_FILE_ENV}"
    import ssl  # here: every command reads the config; only a CA bundle needs ssl (~10 ms)

    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except FileNotFoundError:
        raise ConfigError(
            f"{where} {ca_bundle}: no such file; give a PEM file of the CA certificates to trust"
        ) from None
    except PermissionError:
        raise ConfigError(f"{where} {ca_bundle}: cannot be read (permission denied)") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"{where} {ca_bundle}: not a CA bundle this machine can read ({exc}); give a PEM "
            "file of the CA certificates to trust"
        ) from None


def check_proxy(url: str) -> str:
    """An http(s) proxy URL, as aiohttp takes it (`http://host:port`, with user:password@ if
    the proxy needs them); `host:port` alone is an http:// proxy, as curl reads it."""
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # parsed only to fail here, not in the middle of a run
    except ValueError:
        raise ValueError("is not a proxy URL like http://proxy.corp:3128") from None
    if parts.scheme.lower() in SOCKS:
        raise ValueError(
            "is a SOCKS proxy, which sync-worker cannot use: give an http:// proxy like "
            "http://proxy.corp:3128"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// proxy URL like http://proxy.corp:3128")
    return url


def proxy_for(
    url: str, configured: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The proxy every request of the run goes through, or None for a direct connection."""
    return route(url, configured, environ).proxy


def route(url: str, configured: str | None, environ: Mapping[str, str] = os.environ) -> Route:
    """How requests to `url` leave: the config's proxy, else the environment's (module doc).
    A proxy from the environment that cannot be used is a ConfigError naming the variable."""
    if configured:
        return Route(configured, "[api] proxy")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    names = [f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"]
    name = next((n for n in names if environ.get(n, "").strip()), None)
    if name is None:
        return Route()
    no_proxy = environ.get("no_proxy", "") or environ.get("NO_PROXY", "")
    if bypassed(parts.hostname or "", parts.port, no_proxy):
        return Route()
    value = environ[name].strip()
    try:
        return Route(check_proxy(value), name)
    except ValueError as exc:
        raise ConfigError(
            f"the environment variable {name} {exc} (or add the host to NO_PROXY)"
        ) from None


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: `*`, or entries separated by commas or spaces, each a host
    name or domain (`corp` or `.corp`: the domain and every host under it), an IP address or
    a CIDR range, with an optional `:port` (a bracketed IPv6 address takes one too)."""
    host = host.lower().strip("[]").rstrip(".")
    address = _address(host)
    for entry in no_proxy.replace(",", " ").lower().split():
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != str(port):
            continue
        if address is not None and "/" in name:
            if _in_range(address, name):
                return True
            continue
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
        if address is not None and _address(name) == address:
            return True
    return False


def _split_port(entry: str) -> tuple[str, str | None]:
    """`host:port`, `[v6]:port`, a bare IPv6 address or CIDR (several colons: no port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in_range(address: ipaddress.IPv4Address | ipaddress.IPv6Address, cidr: str) -> bool:
    try:
        return address in ipaddress.ip_network(cidr, strict=False)
    except (ValueError, TypeError):
        return False
