"""A setting's value checks: each takes the raw value and returns the clean one, or raises
ValueError(why) in words that read after the setting's name ("[api] tier must be one of ...",
"tier= must be one of ..."). The option table (options.py) gives each option one of them, for
the config file and the Python keywords alike; `check` turns the complaint into a ConfigError.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sync_worker.errors import ConfigError

TIER_LIMITS = {"essentials": 60, "growth": 300, "enterprise": 1000}
LOG_FORMATS = ("auto", "json", "console")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A validator takes the raw value and returns the clean one, or raises ValueError(why).
Validator = Callable[[Any], Any]


class Unechoed(ValueError):
    """A complaint about a value that may be a secret (a key pasted in the wrong place): the
    message never repeats the value."""


def check(where: str, validate: Validator, value: Any) -> Any:
    """Run one validator, turning its complaint into a ConfigError that names `where`."""
    try:
        return validate(value)
    except Unechoed as exc:
        raise ConfigError(f"{where} {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where} {exc}, got {value!r}") from None


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a positive whole number")
    return value


HISTORY_DAYS = (1, 3650)  # a day to ten years: further back than a date can go is no setting


def history_days(value: Any) -> int:
    low, high = HISTORY_DAYS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be a whole number of days from {low} to {high}")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a finite number above 0")
    if not math.isfinite(value) or value <= 0:  # TOML has nan and inf
        raise ValueError("must be a finite number above 0")
    return float(value)


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def any_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def toml_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def python_bool(value: Any) -> bool:
    """A flag given from Python: True or False, never a truthy string ("no" is truthy)."""
    if not isinstance(value, bool):
        raise ValueError("must be True or False")
    return value


def path(value: Any) -> str:
    """A file path from Python: a string or a `pathlib.Path`, not empty."""
    if not isinstance(value, str | os.PathLike):
        raise ValueError("must be a path (a string or pathlib.Path)")
    given = os.fspath(value)
    if not isinstance(given, str) or not given:
        raise ValueError("must be a non-empty path")
    return given


def api_key(value: Any) -> str:
    """The key itself, given from Python: its content is load_key's to check, never echoed."""
    if not isinstance(value, str):
        raise Unechoed(f"must be a string (the key itself), got {type(value).__name__}")
    return value


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
        raise Unechoed(
            "takes the NAME of a variable, not the key itself (letters, digits and _, "
            "not starting with a digit)"
        )
    return value


def tier_name(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in TIER_LIMITS:
        raise ValueError(f"must be one of {', '.join(TIER_LIMITS)}")
    return value.lower()


def log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"must be {', '.join(LOG_FORMATS[:-1])} or {LOG_FORMATS[-1]}")
    return str(value)


def text_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def delimiter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise ValueError("must be a single character")
    return value


def encoding(value: Any) -> str:
    import codecs

    name = text(value)
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"is not an encoding Python knows ({name!r})") from None
    return name


@dataclass(frozen=True)
class MaxChanges:
    """`--max-changes`: a number of requests, or a share of the input rows (`10%`)."""

    count: int | None = None
    percent: float | None = None

    def limit(self, rows: int) -> int:
        """The most requests a run of `rows` input rows may send."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return math.floor(rows * self.percent / 100 + 1e-9)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def max_changes(value: Any) -> MaxChanges:
    """`N` (requests) or `P%` (of the input rows), from the command line, Python or the file."""
    if isinstance(value, MaxChanges):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return MaxChanges(count=value)
    given = value.strip() if isinstance(value, str) else ""
    if given.endswith("%"):
        try:
            percent = float(given[:-1])
        except ValueError:
            percent = math.nan
        if math.isfinite(percent) and 0 <= percent <= 100:
            return MaxChanges(percent=percent)
    elif given.isdigit():
        return MaxChanges(count=int(given))
    raise ValueError("must be a number of requests (like 500) or a share of the input rows (10%)")


def ping_url(value: Any) -> str:
    """An http(s) URL the run pings (`URL/start`, `URL/<exit code>`)."""
    url = text(value).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError("must be an http(s) URL without a query, like https://hc-ping.com/<uuid>")
    return url
