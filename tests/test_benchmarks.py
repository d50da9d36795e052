"""Keep `make bench` working: a tiny run of every benchmark must print every figure (`make
bench-smoke`, which CI runs after `make test`).

No timing is asserted here (shared machines drift); `make bench` measures at full size. Each
benchmark runs in a process of its own, all at once: at the smoke's sizes most of their time is
pacing (asleep), which need not be waited out one benchmark after another."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

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
    "requests needed, backfill",
    "requests needed, nightly, 1% changed",
]
# `run.py --only A,B` runs the benchmarks whose function name holds A or B. Three processes of
# about the same length (recovery alone is the longest); together, every benchmark once.
ONLY = ["recovery", "startup,overhead,rate,needed", "nightly,slow,merge,xlsx,plan,state_size"]


def _benchmark_names() -> list[str]:
    """The functions listed in run.py's BENCHES."""
    for node in ast.parse(SCRIPT.read_text()).body:
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "BENCHES":
            assert isinstance(node.value, ast.List)
            return [ast.unparse(element) for element in node.value.elts]
    raise AssertionError("run.py lists no BENCHES")


def test_every_benchmark_is_run_once_by_the_smoke() -> None:
    for name in _benchmark_names():
        assert sum(part in name for only in ONLY for part in only.split(",")) == 1, name


@pytest.mark.bench
def test_every_benchmark_prints_its_figure(tmp_path: Path) -> None:
    started = []
    for only in ONLY:
        name = only.replace(",", "-")
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            command = [sys.executable, str(SCRIPT), "--smoke", "--only", only]
            started.append((subprocess.Popen(command, stdout=stdout, stderr=stderr), out, err))
    rows: dict[str, str] = {}
    try:
        for process, out, err in started:
            assert process.wait(timeout=170) == 0, err.read_text()
            for line in out.read_text().splitlines():
                rows.setdefault(line.split(" | ")[0].strip(), line)
    finally:
        for process, _out, _err in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    for figure in FIGURES:
        assert figure in rows, "\n".join(rows.values())
        ratio = float(rows[figure].split(" | ")[3])  # a measured number, not a placeholder
        assert math.isfinite(ratio)
