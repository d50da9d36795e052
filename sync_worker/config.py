"""Settings: defaults < config file < environment < command line, validated in one place."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sync_worker.errors import ConfigError
from sync_worker.fields import CANONICAL_COLUMNS

DEFAULT_CONFIG = Path("config/sync.toml")
DEFAULT_BASE_URL = "https://app.usehindsight.com/api/v1"
TIER_LIMITS = {"essentials": 60, "growth": 300, "enterprise": 1000}
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, after precedence is applied."""

    base_url: str = DEFAULT_BASE_URL
    tier: str = "growth"
    rate_limit: int | None = None  # None: from the tier
    rate_period_s: float = 60.0
    concurrency: int | None = None  # None: enough for the limit at 500 ms latency
    timeout_s: float = 30.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    api_key_env: str = "HINDSIGHT_API_KEY"
    encoding: str | None = None
    delimiter: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    context_columns: Mapping[str, str] = field(default_factory=dict)
    merge: bool = False
    merge_separator: str = "\n\n"
    append_keys: tuple[str, ...] = ()
    ledger_path: str | None = None
    state_path: str = "state/sync-state.sqlite"
    metrics_path: str | None = None  # Prometheus textfile written at the end of every run

    @property
    def limit(self) -> int:
        """Requests allowed per rate period."""
        return self.rate_limit if self.rate_limit is not None else TIER_LIMITS[self.tier]

    @property
    def workers(self) -> int:
        """Requests in flight at once: enough to reach the limit at 500 ms latency."""
        if self.concurrency is not None:
            return self.concurrency
        per_second = self.limit / self.rate_period_s
        return max(2, min(256, math.ceil(per_second * 0.5 * 1.5) + 1))


# A validator takes the raw value and returns the clean one, or raises ValueError(why).
Validator = Callable[[Any], Any]


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("must be a number above 0")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _any_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _tier(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in TIER_LIMITS:
        raise ValueError(f"must be one of {', '.join(TIER_LIMITS)}")
    return value.lower()


def _text_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _delimiter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise ValueError("must be a single character")
    return value


def _encoding(value: Any) -> str:
    import codecs

    text = _text(value)
    try:
        codecs.lookup(text)
    except LookupError:
        raise ValueError(f"is not an encoding Python knows ({text!r})") from None
    return text


# section -> key -> (Settings field, validator)
SCHEMA: dict[str, dict[str, tuple[str, Validator]]] = {
    "api": {
        "base_url": ("base_url", _text),
        "tier": ("tier", _tier),
        "rate_limit": ("rate_limit", _positive_int),
        "rate_period_s": ("rate_period_s", _positive_number),
        "concurrency": ("concurrency", _positive_int),
        "timeout_s": ("timeout_s", _positive_number),
        "max_retries": ("max_retries", _non_negative_int),
        "backoff_base_s": ("backoff_base_s", _positive_number),
        "api_key_env": ("api_key_env", _text),
    },
    "input": {"encoding": ("encoding", _encoding), "delimiter": ("delimiter", _delimiter)},
    "merge": {
        "enabled": ("merge", _bool),
        "separator": ("merge_separator", _any_text),
        "append_keys": ("append_keys", _text_list),
    },
    "ledger": {"path": ("ledger_path", _text)},
    "state": {"path": ("state_path", _text)},
    "metrics": {"path": ("metrics_path", _text)},
}
MAPPING_SECTIONS = ("columns", "context_columns")


def load_file(path: Path) -> dict[str, Any]:
    """Read and validate a TOML config file into Settings field values."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return _validate_sections(raw, str(path))


def _validate_sections(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    known = [*SCHEMA, *MAPPING_SECTIONS]
    values: dict[str, Any] = {}
    for section, body in raw.items():
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


def _validate_mapping(section: str, body: Mapping[str, Any], origin: str) -> dict[str, str]:
    for key, value in body.items():
        if section == "columns" and key not in CANONICAL_COLUMNS:
            raise ConfigError(
                f"{origin}: unknown key [columns] {key} "
                f"(canonical fields: {', '.join(CANONICAL_COLUMNS)})"
            )
        check(f"{origin}: [{section}] {key}", _text, value)
    return dict(body)


def check(where: str, validate: Validator, value: Any) -> Any:
    """Run one validator, turning its complaint into a ConfigError that names `where`."""
    try:
        return validate(value)
    except ValueError as exc:
        raise ConfigError(f"{where} {exc}, got {value!r}") from None


def resolve(
    config_path: Path | None,
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Apply precedence: command line > environment > config file > defaults."""
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(load_file(config_path))
    elif DEFAULT_CONFIG.is_file():
        values.update(load_file(DEFAULT_CONFIG))
    if environ.get("HINDSIGHT_BASE_URL"):
        values["base_url"] = environ["HINDSIGHT_BASE_URL"]
    given = {k: v for k, v in overrides.items() if v is not None}
    if "tier" in given and "rate_limit" not in given:
        values.pop("rate_limit", None)  # --tier on the command line beats the file's rate_limit
    values.update(given)
    settings = replace(Settings(), **values)
    check_base_url(settings.base_url)
    return settings


def check_base_url(url: str) -> None:
    """Refuse anything but https, except plain http to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"base URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"base URL {url!r} uses plain http to a non-loopback host: use https "
            "(plain http is allowed only for 127.0.0.1, ::1 or localhost)"
        )


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
