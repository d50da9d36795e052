"""Keep `make bench` working: a tiny run of every benchmark must print every figure.

No timing is asserted here (shared machines drift); `make bench` measures at full size."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "benchmarks" / "run.py"
FIGURES = [
    "rate adherence",
    "overhead",
    "overhead, whole process",
    "planning time",
    "planning memory",
    "xlsx planning time",
    "xlsx planning memory",
    "merged planning time, first backfill",
    "merged planning memory, first backfill",
    "merged planning time, nightly",
    "merged planning memory, nightly",
    "nightly diff",
    "recovery, lower limit",
    "recovery, longer window",
    "recovery, lower limit, whole-second reset",
    "recovery, longer window, whole-second reset",
    "recovery, both, whole seconds to wait",
    "slow API",
    "start-up, 10-row run",
    "start-up, validate",
    "start-up, --help",
]


def test_every_benchmark_prints_its_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split(" | ")[0].strip(): line for line in result.stdout.splitlines()}
    for figure in FIGURES:
        assert figure in rows, result.stdout
        ratio = float(rows[figure].split(" | ")[3])  # a measured number, not a placeholder
        assert math.isfinite(ratio)
