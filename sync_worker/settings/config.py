"""Settings: defaults < config file < environment < command line, validated in one place."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sync_worker.errors import ConfigError
from sync_worker.fields import CANONICAL_COLUMNS
from sync_worker.settings.checks import TIER_LIMITS, MaxChanges, check, env_name, ping_url
from sync_worker.settings.checks import text as non_empty_text
from sync_worker.settings.network import canonical_url
from sync_worker.settings.options import file_schema, setting_names

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CONFIG = Path("config/sync.toml")
DEFAULT_BASE_URL = "https://app.usehindsight.com/api/v1"
DEFAULT_STATE = "state/sync-state.sqlite"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
TIER_PERIOD_S = 60.0  # a tier's limit is always per minute
BASE_URL_ENV = "HINDSIGHT_BASE_URL"
# Where each setting came from, as the user would name it: "sync.toml: [api] tier", "--tier".
Sources = dict[str, str]
FRAME_SOURCE = "<DataFrame>"  # how a pandas DataFrame input is named (ledger, messages)
# How the command line names each setting it can override, for messages naming the source.
FLAGS = setting_names("cli")


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, after precedence is applied."""

    base_url: str = DEFAULT_BASE_URL
    tier: str = "growth"
    rate_limit: int | None = None  # None: from the tier
    rate_period_s: float = 60.0
    concurrency: int | None = None  # None: the pool follows the API's latency (pool.py)
    max_concurrency: int = 256  # the most requests in flight the adaptive pool grows to
    timeout_s: float = 30.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    coalesce: bool = True  # a contact's fields once per contact, not with each interview
    max_outage_s: float = 300.0  # how long the API may not answer at all before the run stops
    proxy: str | None = None  # None: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment
    ca_bundle: str | None = None  # None: the system's CA store (or SSL_CERT_FILE)
    api_key_env: str = "HINDSIGHT_API_KEY"
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None  # the XLSX sheet to read; None: the first
    columns: Mapping[str, str] = field(default_factory=dict)
    context_columns: Mapping[str, str] = field(default_factory=dict)
    merge: bool = False
    resolve_contacts: bool = False  # ask the API each interview's contact (GET /interviews/{id})
    merge_separator: str = "\n\n"
    append_keys: tuple[str, ...] = ()
    ledger_path: str | None = None
    state_path: str = DEFAULT_STATE  # resolve() makes it the base URL's own (default_state)
    metrics_path: str | None = None  # Prometheus textfile written at the end of every run
    ping_url: str | None = None  # a healthchecks-style monitor: URL/start, then URL/<exit code>
    max_changes: MaxChanges | None = None  # refuse a run that would send more requests than this
    max_unknown_notes: int = 100  # a merged run may overwrite this many contacts' unknown notes
    allow_unknown_notes: bool = False  # ... or any number of them
    first_rejections: int = 20  # this many first answers, all one 400/404 code, stop a run (0: off)
    history_days: int = 90  # versions kept in the state's history (SPEC section 12)

    @property
    def limit(self) -> int:
        """Requests allowed per rate period."""
        return self.rate_limit if self.rate_limit is not None else TIER_LIMITS[self.tier]


@dataclass(frozen=True)
class RunOptions:
    """What one invocation asks for beyond the settings: its inputs and run limits."""

    inputs: tuple[str | pd.DataFrame, ...]
    existing_notes: str | None = None
    force: bool = False
    dry_run: bool = False
    max_rows: int | None = None
    max_duration_min: float | None = None
    ledger: str | None = None
    progress: bool = True

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs as the ledger, the summary and the logs name them."""
        return tuple(i if isinstance(i, str) else FRAME_SOURCE for i in self.inputs)


# section -> key -> (Settings field, check): the option table's config keys
SCHEMA = file_schema()
MAPPING_SECTIONS = ("columns", "context_columns")
# Settings field -> where it lives in the file ("[api] tier"), for messages.
FILE_KEYS = {
    name: f"[{section}] {key}"
    for section, keys in SCHEMA.items()
    for key, (name, _) in keys.items()
}


def load_file(path: Path) -> dict[str, Any]:
    """Read and validate a TOML config file into Settings field values."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Notepad saves a BOM
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: the config file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return _validate_sections(raw, str(path))


def _validate_sections(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    known = [*SCHEMA, *MAPPING_SECTIONS]
    values: dict[str, Any] = {}
    for section, body in raw.items():
        if section not in known and not isinstance(body, dict):
            raise ConfigError(_top_level_key(section, origin))
        if section not in known:
            raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(known)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        if section in MAPPING_SECTIONS:
            values[section] = _validate_mapping(section, body, origin)
        else:
            values.update(_validate_keys(section, body, origin))
    return values


def _validate_keys(section: str, body: Mapping[str, Any], origin: str) -> dict[str, Any]:
    schema = SCHEMA[section]
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key not in schema:
            raise ConfigError(
                f"{origin}: unknown key [{section}] {key} (known: {', '.join(schema)})"
            )
        name, validate = schema[key]
        values[name] = check(f"{origin}: [{section}] {key}", validate, value)
    return values


def _top_level_key(key: str, origin: str) -> str:
    """A key outside any section: say which section it belongs in (TOML reads `tier = ...`
    above `[api]` as a key of no section, not as part of [api])."""
    sections = " or ".join(f"[{section}]" for section, keys in SCHEMA.items() if key in keys)
    if sections:  # `path` is a key of two sections
        return (
            f"{origin}: key {key} must be under {sections} (put it after that section's "
            "line; keys above the first [section] belong to none)"
        )
    return (
        f"{origin}: top-level key {key} is not a setting: every key goes under a section "
        f"({', '.join(f'[{s}]' for s in [*SCHEMA, *MAPPING_SECTIONS])})"
    )


def _validate_mapping(section: str, body: Mapping[str, Any], origin: str) -> dict[str, str]:
    for key, value in body.items():
        if section == "columns" and key not in CANONICAL_COLUMNS:
            raise ConfigError(
                f"{origin}: unknown key [columns] {key} "
                f"(canonical fields: {', '.join(CANONICAL_COLUMNS)})"
            )
        check(f"{origin}: [{section}] {key}", non_empty_text, value)
    return dict(body)


def resolve(
    config_path: Path | None,
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
    names: Mapping[str, str] = FLAGS,
) -> Settings:
    """Apply precedence: command line > environment > config file > defaults.

    A tier is its limit per 60 s. So a tier clears the rate_limit and rate_period_s of a layer
    below it (`--tier enterprise` over a file's `rate_period_s = 1` is 1000 a minute, not a
    second), and a rate period other than 60 s without a rate limit is refused as ambiguous.
    """
    values: dict[str, Any] = {}
    sources: Sources = {}
    for layer, layer_sources in (
        _file_layer(config_path),
        _env_layer(environ),
        _flag_layer(overrides, names),
    ):
        if "tier" in layer:
            for name in ("rate_limit", "rate_period_s"):
                values.pop(name, None)
                sources.pop(name, None)
        values.update(layer)
        sources.update(layer_sources)
    settings = replace(Settings(), **values)
    check_rate(settings, sources)
    check_base_url(settings.base_url, sources.get("base_url", "the default base URL"))
    if "state_path" not in values:
        settings = replace(settings, state_path=default_state(settings.base_url))
    return settings


def default_state(base_url: str) -> str:
    """Each API its own state, so a trial against the sandbox never changes what a run against
    the API skips, merges or reverts: the vendor's URL keeps the plain name (the states made
    before this rule), any other gets its host and port in the name."""
    if canonical_url(base_url) == DEFAULT_BASE_URL:
        return DEFAULT_STATE
    parts = urlsplit(canonical_url(base_url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", parts.hostname or "api")
    return str(Path(DEFAULT_STATE).with_name(f"sync-state-{host}-{port}.sqlite"))


def _file_layer(config_path: Path | None) -> tuple[dict[str, Any], Sources]:
    path = config_path if config_path is not None else DEFAULT_CONFIG
    if config_path is None and not DEFAULT_CONFIG.is_file():
        return {}, {}
    values = load_file(path)
    return values, {name: f"{path}: {FILE_KEYS.get(name, f'[{name}]')}" for name in values}


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], Sources]:
    if not environ.get(BASE_URL_ENV):
        return {}, {}
    return {"base_url": environ[BASE_URL_ENV]}, {"base_url": f"environment variable {BASE_URL_ENV}"}


def _flag_layer(
    overrides: Mapping[str, Any], names: Mapping[str, str]
) -> tuple[dict[str, Any], Sources]:
    """The command line's values (or the Python API's), each named as its caller wrote it."""
    values = {name: value for name, value in overrides.items() if value is not None}
    sources = {name: names.get(name, name) for name in values}
    if "api_key_env" in values:
        values["api_key_env"] = check(sources["api_key_env"], env_name, values["api_key_env"])
    return values, sources


def check_rate(settings: Settings, sources: Mapping[str, str]) -> None:
    """A tier means its limit per 60 s: another period needs a rate limit of its own."""
    period = settings.rate_period_s
    if settings.rate_limit is not None or period == TIER_PERIOD_S:
        return
    period_source = sources.get("rate_period_s", "rate period")
    tier_source = sources.get("tier", "the default tier")
    limit_name = "--rate-limit N" if period_source.startswith("--") else "[api] rate_limit"
    raise ConfigError(
        f"{_named(period_source, f'{period:g}')} with {_named(tier_source, settings.tier)} is "
        f"ambiguous: a tier means {settings.limit} requests per 60 s; for a {period:g} s window "
        f"give {limit_name} too, or drop the period"
    )


def _named(source: str, value: str) -> str:
    """`--tier growth` for an option or a default, `sync.toml: [api] tier = growth` for a key."""
    return f"{source} = {value}" if ": [" in source else f"{source} {value}"


def check_base_url(url: str, source: str = "base URL") -> None:
    """Refuse anything but https, except plain http to a loopback host. `source` names where
    the URL came from (`--base-url`, the environment variable, the file and key)."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ConfigError(f"{source} holds a space or control character: give the bare URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # parsed only to fail here, not in the middle of a run
    except ValueError as exc:
        raise ConfigError(f"{source} {url!r} is not a valid URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{source} holds a user or password: give the URL without them "
            "(the key goes in HINDSIGHT_API_KEY)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source} {url!r} is not an http(s) URL (like {DEFAULT_BASE_URL})")
    if parts.query or parts.fragment:
        raise ConfigError(f"{source} {url!r} has a query or fragment: give the base URL only")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{source} {url!r} uses plain http to a non-loopback host: use https "
            "(plain http is allowed only for 127.0.0.1, ::1 or localhost)"
        )


def _is_loopback(host: str) -> bool:
    host = host.removesuffix(".")  # `localhost.`: the same host, written fully qualified
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reporting_despite_error(
    config_path: Path | None, overrides: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """Where a run whose settings could not be resolved still reports its exit code (the
    metrics file, the ping URL): the command line's, else what the config file says, if it
    reads as TOML at all. A monitor must hear of a broken config too."""
    section: Mapping[str, Any] = {}
    path = config_path if config_path is not None else DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        section = raw.get("metrics", {}) if isinstance(raw.get("metrics"), dict) else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    metrics = overrides.get("metrics_path") or section.get("path")
    url = overrides.get("ping_url") or section.get("ping_url")
    try:
        url = ping_url(url) if url is not None else None
    except ValueError:
        url = None
    return (metrics if isinstance(metrics, str) and metrics else None), url
