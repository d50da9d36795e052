"""Timestamps as the ledger, state and summary write them (a leaf: imports nothing of ours).

One format, UTC to the millisecond, `2026-11-29T15:27:52.497Z`: every time the state keeps is
written so, which is what lets them compare as text (a notes file's `updated_at` against a send,
a run's start against the history's horizon)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

SECONDS = "%Y-%m-%dT%H:%M:%S"  # up to the seconds; the milliseconds and Z follow
_second: list[int | str] = [-1, ""]  # (whole second, its text up to the seconds): results share it


def now_iso() -> str:
    """UTC now as 2026-11-29T15:27:52.497Z (the date and time formatted once per second)."""
    millis = int(time.time() * 1000)
    second, milli = divmod(millis, 1000)
    if second != _second[0]:
        text = datetime.fromtimestamp(second, UTC).strftime(SECONDS)
        _second[:] = [second, text]
    return f"{_second[1]}.{milli:03d}Z"


def iso(moment: datetime) -> str:
    """A UTC moment as `now_iso` writes it (milliseconds cut, not rounded)."""
    return f"{moment.strftime(SECONDS)}.{moment.microsecond // 1000:03d}Z"


def days_ago(days: int, now: datetime | None = None) -> str:
    """The whole second `days` before now, as `iso` writes it: a horizon that times compare
    against as text."""
    moment = (now or datetime.now(UTC)) - timedelta(days=days)
    return iso(moment.replace(microsecond=0))


def run_stamp() -> str:
    """UTC now as 20261129T152752Z (ISO 8601's basic form): a run id's prefix, sortable and
    safe in a file name."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
