"""Timestamps as the ledger, state and summary write them (a leaf: imports nothing of ours)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_second: list[int | str] = [-1, ""]  # (whole second, its text up to the seconds): results share it


def now_iso() -> str:
    """UTC now as 2026-11-29T15:27:52.497Z (the date and time formatted once per second)."""
    millis = int(time.time() * 1000)
    second, milli = divmod(millis, 1000)
    if second != _second[0]:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[:] = [second, text]
    return f"{_second[1]}.{milli:03d}Z"
