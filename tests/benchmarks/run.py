"""`make bench`: the figures of SPEC section 11 and start-up, each a ratio against a
baseline measured in the same run (absolute times drift on shared machines).

    python tests/benchmarks/run.py           # full sizes (a few minutes)
    python tests/benchmarks/run.py --smoke   # tiny sizes, to keep the script working (the tests)
    python tests/benchmarks/run.py --only startup   # the benchmarks whose name holds `startup`
    python tests/benchmarks/run.py --only plan,xlsx # ... or holds any of these
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import SandboxServer, sent_in_pauses, start_sandbox  # noqa: E402

KEY = "bench-key-not-secret"
ENV = {**os.environ, "HINDSIGHT_API_KEY": KEY}
# As an installed copy starts: compiled modules cached in `__pycache__` (Python's default). A
# checkout that never wrote them (PYTHONDONTWRITEBYTECODE) compiles the package's ~50 modules at
# every start, ~0.1 s the start-up figures would count and no installed copy pays.
INSTALLED = {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"}


@dataclass
class Figure:
    name: str
    measured: str
    baseline: str
    ratio: float
    goal: str
    met: bool
    extra: str = ""


@dataclass(frozen=True)
class Sizes:
    rate_limit: int
    rate_period: float
    rate_rows: int
    overhead_rows: int
    plan_rows: int
    diff_rows: int
    recovery_rows: int
    overhead_rounds: int  # alternated rounds of the overhead figure (medians compared)
    repeats: int  # runs of each command timed for the plan and nightly figures (least kept)
    slow_api: tuple[int, float, int, float]  # limit, period (s), rows, latency (ms, +- a quarter)
    whole_rows: int  # requests of the whole-process overhead figure
    whole_rounds: int  # its alternated rounds (least kept)
    startup_repeats: int  # alternated runs of each start-up command and its baseline (least kept)
    xlsx_rows: int = 100_000  # rows of the workbook planned
    state_rows: int = 100_000  # rows of the nightly runs whose state file is measured
    state_runs: int = 6  # those runs: a backfill, a forced re-send, a stopped one, nightlies
    needed_rows: int = 100_000  # rows of the requests-needed figure
    warm_up: int = 1  # untimed start-up rounds first, that fill the bytecode cache


FULL = Sizes(
    400, 10.0, 1300, 20_000, 1_000_000, 100_000, 300, 7, 3, (100, 6.0, 401, 2000.0), 100_000, 2, 20
)
SMOKE = Sizes(  # the suite runs it: each benchmark's every step, at the least size that shows
    rate_limit=20,
    rate_period=1.0,
    rate_rows=50,
    overhead_rows=200,
    plan_rows=5_000,
    diff_rows=400,
    recovery_rows=40,
    overhead_rounds=1,
    repeats=1,
    slow_api=(20, 1.0, 41, 200.0),
    whole_rows=200,
    whole_rounds=1,
    startup_repeats=1,
    xlsx_rows=500,
    state_rows=1_000,
    state_runs=4,
    needed_rows=400,
    warm_up=0,
)


def sync_worker(
    *args: str, cwd: Path, codes: tuple[int, ...] = (0, 1)
) -> subprocess.CompletedProcess[str]:
    """A run whose exit code must be one of `codes` (by default 0 or 1: some rows failed):
    anything else is a broken benchmark, not a figure."""
    command = [sys.executable, "-m", "sync_worker", *args]
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    if done.returncode not in codes:
        raise SystemExit(f"`sync-worker {' '.join(args)}` exited {done.returncode}: {done.stderr}")
    return done


def sandbox(*args: str) -> SandboxServer:
    return start_sandbox("--api-key", KEY, *args)


def write_rows(path: Path, count: int, seed: int = 1, changed: set[int] | None = None) -> Path:
    """interview_id, objective, contact_name, contact_email (with repeats), two context
    columns: each contact's name and context the same in all its rows (as a CRM exports them),
    each interview's objective its own, so every row is a request of its own. `changed`: rows
    whose objective changed."""
    rng = random.Random(seed)
    stages, titles = ["Closed Lost", "Closed Won", "Demo"], ["CTO", "VP Sales", "CFO", "COO"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "interview_id",
                "objective",
                "contact_name",
                "contact_email",
                "context.stage",
                "context.title",
            ]
        )
        for i in range(1, count + 1):
            goal = f"Objective {i}" + (" (changed)" if changed and i in changed else "")
            who = rng.randint(1, max(1, count * 6 // 10))
            stage, title = stages[who % len(stages)], titles[who % len(titles)]
            writer.writerow([i, goal, f"Name {who}", f"c{who}@x.example", stage, title])
    return path


def write_backfill(path: Path, count: int, seed: int = 1) -> Path:
    """The merge road's backfill: three contacts for every four rows, their rows far
    apart, title and stage context columns, an objective on two rows in three."""
    rng = random.Random(seed)
    contacts = max(1, count * 3 // 4)
    who = list(range(1, contacts + 1)) + [rng.randint(1, contacts) for _ in range(count - contacts)]
    rng.shuffle(who)
    stages, titles = ["Closed Lost", "Closed Won", "Demo"], ["CTO", "VP Sales", "CFO", "COO"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "interview_id",
                "contact_name",
                "contact_email",
                "objective",
                "context.stage",
                "context.title",
            ]
        )
        for i, contact in enumerate(who, start=1):
            writer.writerow(
                [
                    i,
                    f"Name {contact}",
                    f"c{contact}@x.example",
                    "Win back" if i % 3 else "",
                    rng.choice(stages),
                    rng.choice(titles),
                ]
            )
    return path


def summary_of(ledger: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(
        ledger.with_name(ledger.name + ".summary.json").read_text()
    )
    return summary


def run_args(
    server: SandboxServer, work: Path, name: str, *extra: str, state: str | None = None
) -> list[str]:
    """A run's arguments: its ledger named `name`, its state too unless `state` is given."""
    return [
        "run",
        *extra,
        "--base-url",
        server.base_url,
        "--state",
        str(work / (state or f"{name}.sqlite")),
        "--ledger",
        str(ledger_of(work, name)),
        "--no-progress",
    ]


def ledger_of(work: Path, name: str) -> Path:
    """A run's ledger: beside its input, never the input itself."""
    return work / f"{name}-ledger.csv"


# 1. Rate adherence -------------------------------------------------------------------------


def bench_rate(sizes: Sizes, work: Path) -> Figure:
    limit, period = sizes.rate_limit, sizes.rate_period
    log = _paced_run(work, "rate", sizes.rate_rows, limit, period)
    achieved, rejected, windows = _arrivals(log, period)
    allowed = limit / period
    ratio = achieved / allowed
    return Figure(
        "rate adherence",
        f"{achieved * 60:.1f}/min",
        f"{allowed * 60:.1f}/min allowed",
        ratio,
        ">= 0.995, 0 429s",
        ratio >= 0.995 and rejected == 0,
        f"{rejected} 429s over {windows:.1f} windows of {period:g} s",
    )


def _paced_run(
    work: Path, name: str, rows: int, limit: int, period: float, *server_args: str
) -> list[dict[str, Any]]:
    """`rows` rows sent at limit/period to a sandbox enforcing just that; its request log."""
    server = sandbox("--rate-limit", str(limit), "--rate-period", str(period), *server_args)
    try:
        write_rows(work / f"{name}.csv", rows)
        args = run_args(
            server,
            work,
            name,
            f"{name}.csv",
            "--rate-limit",
            str(limit),
            "--rate-period",
            str(period),
        )
        sync_worker(*args, cwd=work)
        return server.requests()
    finally:
        server.stop()


def _arrivals(log: list[dict[str, Any]], period: float, skip: int = 0) -> tuple[float, int, float]:
    """(requests a second between the first and last arrival after `skip`, 429s, windows)."""
    arrivals = sorted(r["t"] for r in log)[skip:]
    span = arrivals[-1] - arrivals[0]
    rejected = sum(1 for r in log if r["status"] == 429)
    return (len(arrivals) - 1) / span, rejected, span / period


# 2. Overhead against a bare aiohttp loop ----------------------------------------------------

BARE_LOOP = """
import asyncio, json, sys, time
import aiohttp

async def main(url, key, count, workers):
    body = json.dumps({"contact_name": "Name", "contact_context": {"stage": "Demo"}}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ids = iter(range(1, count + 1))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers),
                                     headers=headers) as session:
        async def worker():
            for i in ids:
                async with session.patch(f"{url}/interviews/{i}", data=body) as response:
                    await response.read()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        print(count / (time.perf_counter() - start))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def bench_overhead(sizes: Sizes, work: Path) -> Figure:
    workers, count = 16, sizes.overhead_rows
    server = sandbox("--rate-limit", "100000000", "--rate-period", "1")
    write_rows(work / "overhead.csv", count)
    bare: list[float] = []
    ours: list[float] = []
    try:
        for attempt in range(sizes.overhead_rounds):  # alternated: the machine drifts
            _reset(server)
            out = subprocess.run(
                [sys.executable, "-c", BARE_LOOP, server.base_url, KEY, str(count), str(workers)],
                capture_output=True,
                text=True,
                check=True,
            )
            bare.append(float(out.stdout))
            _reset(server)
            unlimited = ["--rate-limit", "100000000", "--rate-period", "1"]
            args = run_args(
                server,
                work,
                f"overhead{attempt}",
                "overhead.csv",
                *unlimited,
                "--concurrency",
                str(workers),
            )
            sync_worker(*args, cwd=work)
            ours.append(
                summary_of(ledger_of(work, f"overhead{attempt}"))["effective_requests_per_minute"]
                / 60
            )
    finally:
        server.stop()
    ours_rate, bare_rate = statistics.median(ours), statistics.median(bare)
    ratio = ours_rate / bare_rate
    rounds = [o / b for o, b in zip(ours, bare, strict=True)]
    return Figure(
        "overhead",
        f"{ours_rate:.0f} req/s",
        f"{bare_rate:.0f} req/s bare aiohttp",
        ratio,
        ">= 0.9",
        ratio >= 0.9,
        f"{count:,} requests, concurrency {workers}, "
        f"ledger and state on, medians of {len(ours)} (rounds {min(rounds):.2f}-"
        f"{max(rounds):.2f})",
    )


# 2b. Whole-process overhead: the same sending, timed from start to exit ----------------------

BARE_JOB = "import sys, pandas\npandas.read_csv(sys.argv[5], dtype=str)\n" + BARE_LOOP


@dataclass
class Phases:
    """Where one process's wall time went, in seconds (they add up to `total`)."""

    total: float
    before: float  # start -> first request: interpreter, imports, reading (and ours: planning)
    sending: float  # (ours: from the run_started event) -> the last request's arrival
    after: float  # the last arrival -> exit (ours: ledger, summary, the state's fold)
    startup: float = 0.0  # ours: start -> the run's start (interpreter, imports, settings)
    cpu: float = 0.0  # the process's CPU seconds (user + system): what load on the machine
    # moves least, since the sandbox and other programs take the wall time on shared cores


def bench_overhead_whole_process(sizes: Sizes, work: Path) -> Figure:
    """`sync-worker run` of a whole file, start to exit, against a bare process that reads the
    same file with pandas and sends the same requests with the bare loop (same concurrency, no
    limit). The send-phase overhead figure leaves out what this one adds: start-up, planning
    (and the history's planned changes) and the state's fold at the end."""
    workers, count = 16, sizes.whole_rows
    path = write_rows(work / "whole.csv", count)
    server = sandbox("--rate-limit", "100000000", "--rate-period", "1")
    ours: list[Phases] = []
    bare: list[Phases] = []
    try:
        for attempt in range(sizes.whole_rounds):  # alternated; the least of each
            _reset(server)
            command = [
                sys.executable,
                "-c",
                BARE_JOB,
                server.base_url,
                KEY,
                str(count),
                str(workers),
                str(path),
            ]
            took, began, _done = timed(command, work)
            bare.append(replace(_phases(server, took, began), cpu=_done.cpu))
            _reset(server)
            unlimited = ["--rate-limit", "100000000", "--rate-period", "1"]
            args = run_args(
                server,
                work,
                f"whole{attempt}",
                "whole.csv",
                *unlimited,
                "--concurrency",
                str(workers),
            )
            took, began, done = timed([sys.executable, "-m", "sync_worker", *args], work)
            phases = _our_phases(server, took, began, done, ledger_of(work, f"whole{attempt}"))
            ours.append(replace(phases, cpu=done.cpu))
    finally:
        server.stop()
    mine, theirs = min(ours, key=lambda p: p.total), min(bare, key=lambda p: p.total)
    ratio = theirs.total / mine.total
    cpu_ratio = min(p.cpu for p in bare) / min(p.cpu for p in ours)
    return Figure(
        "overhead, whole process",
        f"{mine.total:.2f} s ({count / mine.total:.0f} req/s)",
        f"{theirs.total:.2f} s bare read_csv + aiohttp",
        ratio,
        ">= 0.9",
        ratio >= 0.9,
        f"{count:,} requests, concurrency {workers}, least of {len(ours)}; ours: start-up "
        f"{mine.startup:.2f} s, reading and planning {mine.before - mine.startup:.2f} s, "
        f"sending {mine.sending:.2f} s, after {mine.after:.2f} s; bare: before "
        f"{theirs.before:.2f} s, sending {theirs.sending:.2f} s, after {theirs.after:.2f} s; "
        f"CPU {min(p.cpu for p in ours):.2f} s against {min(p.cpu for p in bare):.2f} s bare: "
        f"{cpu_ratio:.3f}; load average {os.getloadavg()[0]:.1f}",
    )


@dataclass
class Done:
    """A finished process: what it printed, and the CPU seconds it used."""

    stdout: str
    stderr: str
    cpu: float


def timed(command: list[str], cwd: Path) -> tuple[float, float, Done]:
    """Wall seconds of one process from start to exit (as installed: bytecode cached), when it
    started (Unix time), and what it printed and used. Exit 0 or 1 only, as `sync_worker`
    asks."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    began, start = time.time(), time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=INSTALLED, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"`{' '.join(command[:4])}` exited {done.returncode}: {done.stderr}")
    cpu = after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
    return took, began, Done(done.stdout, done.stderr, cpu)


def _phases(server: SandboxServer, took: float, began: float) -> Phases:
    """Before the first request's arrival at the sandbox, up to the last, and after."""
    arrivals = [r["t"] for r in server.requests()]
    first, last = min(arrivals) - began, max(arrivals) - began
    return Phases(took, first, last - first, took - last)


def _our_phases(
    server: SandboxServer,
    took: float,
    began: float,
    done: Done,
    ledger: Path,
) -> Phases:
    """The worker's own marks: the run's start (summary) and its run_started event (after
    planning, before the first request)."""
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    sending_from = _unix(next(e for e in events if e["event"] == "run_started")["timestamp"])
    whole = _phases(server, took, began)
    before = sending_from - began
    return Phases(
        took,
        before,
        whole.before + whole.sending - before,
        whole.after,
        startup=_unix(summary_of(ledger)["started_at"]) - began,
    )


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _reset(server: SandboxServer) -> None:
    request = urllib.request.Request(server.root + "/_sandbox/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


# 3. Planning a million rows ------------------------------------------------------------------

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
elapsed = time.perf_counter() - start
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(command: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command in its own process."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, peak = out.stdout.split()
    return float(seconds), int(peak)


def bench_plan(sizes: Sizes, work: Path) -> list[Figure]:
    path = write_rows(work / "plan.csv", sizes.plan_rows)
    bare = [sys.executable, "-c", f"import pandas; pandas.read_csv({str(path)!r}, dtype=str)"]
    ours = [
        sys.executable,
        "-m",
        "sync_worker",
        "plan",
        str(path),
        "--state",
        str(work / "no-state.sqlite"),
    ]
    base_runs, our_runs = [], []
    for _ in range(sizes.repeats):  # alternated; the least of each (noise only ever adds)
        base_runs.append(measure(bare, work))
        our_runs.append(measure(ours, work))
    base_t, base_m = min(t for t, _m in base_runs), min(m for _t, m in base_runs)
    our_t, our_m = min(t for t, _m in our_runs), min(m for _t, m in our_runs)
    rows = f"{sizes.plan_rows:,} rows"
    return [
        Figure(
            "planning time",
            f"{our_t:.2f} s",
            f"{base_t:.2f} s read_csv",
            our_t / base_t,
            "<= 1.5",
            our_t / base_t <= 1.5,
            rows,
        ),
        Figure(
            "planning memory",
            f"{our_m / 1024:.0f} MiB",
            f"{base_m / 1024:.0f} MiB read_csv",
            our_m / base_m,
            "<= 1.5",
            our_m / base_m <= 1.5,
            rows,
        ),
    ]


# 3a. Planning a workbook ------------------------------------------------------------------------


def write_workbook(path: Path, count: int, seed: int = 1) -> Path:
    """`write_rows` as an XLSX sheet, the way HubSpot writes one: ids as number cells, a date."""
    import xlsxwriter  # a test dependency: the worker itself only reads workbooks

    rng = random.Random(seed)
    stages, titles = ["Closed Lost", "Closed Won", "Demo"], ["CTO", "VP Sales", "CFO", "COO"]
    book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = book.add_worksheet("Contacts")
    dates = book.add_format({"num_format": "yyyy-mm-dd"})
    sheet.write_row(
        0,
        0,
        [
            "interview_id",
            "contact_name",
            "contact_email",
            "context.stage",
            "context.title",
            "context.created",
        ],
    )
    for i in range(1, count + 1):
        email = f"c{rng.randint(1, max(1, count * 6 // 10))}@x.example"
        sheet.write_row(i, 0, [i, f"Name {i}", email, rng.choice(stages), rng.choice(titles)])
        sheet.write_datetime(i, 5, datetime(2026, 1 + i % 12, 1 + i % 28), dates)
    book.close()
    return path


def bench_xlsx(sizes: Sizes, work: Path) -> list[Figure]:
    """`plan` of a workbook against bare `pandas.read_excel(engine="calamine", dtype=str)` of
    the same file: what reading every cell as text, and planning, add to the reading."""
    path = write_workbook(work / "plan.xlsx", sizes.xlsx_rows)
    bare = [
        sys.executable,
        "-c",
        f"import pandas; pandas.read_excel({str(path)!r}, engine='calamine', dtype=str)",
    ]
    ours = [
        sys.executable,
        "-m",
        "sync_worker",
        "plan",
        str(path),
        "--state",
        str(work / "no-state.sqlite"),
    ]
    base_runs, our_runs = [], []
    for _ in range(sizes.repeats):  # alternated; the least of each (noise only ever adds)
        base_runs.append(measure(bare, work))
        our_runs.append(measure(ours, work))
    base_t, base_m = min(t for t, _m in base_runs), min(m for _t, m in base_runs)
    our_t, our_m = min(t for t, _m in our_runs), min(m for _t, m in our_runs)
    rows = f"{sizes.xlsx_rows:,} rows"
    return [
        Figure(
            "xlsx planning time",
            f"{our_t:.2f} s",
            f"{base_t:.2f} s read_excel",
            our_t / base_t,
            "<= 1.5",
            our_t / base_t <= 1.5,
            rows,
        ),
        Figure(
            "xlsx planning memory",
            f"{our_m / 1024:.0f} MiB",
            f"{base_m / 1024:.0f} MiB read_excel",
            our_m / base_m,
            "<= 1.5",
            our_m / base_m <= 1.5,
            rows,
        ),
    ]


# 3b. Planning a million rows with --merge ---------------------------------------------------

MERGE_GOALS = {"first backfill": (2.0, 1.5), "nightly": (3.0, 1.5)}  # time, memory: see README


def bench_merge(sizes: Sizes, work: Path) -> list[Figure]:
    """`plan --merge` of the backfill with nothing in the state (the first backfill), and with
    the state knowing every contact's notes and every payload (the nightly run after it)."""
    path = write_backfill(work / "backfill.csv", sizes.plan_rows)
    _remember_merged(path, work / "merged.sqlite")
    bare = [sys.executable, "-c", f"import pandas; pandas.read_csv({str(path)!r}, dtype=str)"]
    cases = {"first backfill": work / "nothing.sqlite", "nightly": work / "merged.sqlite"}
    runs: dict[str, list[tuple[float, int]]] = {"bare": [], **{case: [] for case in cases}}
    for _ in range(sizes.repeats):  # alternated; the least of each (noise only ever adds)
        runs["bare"].append(measure(bare, work))
        for case, state in cases.items():
            runs[case].append(
                measure(
                    [
                        sys.executable,
                        "-m",
                        "sync_worker",
                        "plan",
                        str(path),
                        "--merge",
                        "--state",
                        str(state),
                    ],
                    work,
                )
            )
    base_t, base_m = (min(values) for values in zip(*runs["bare"], strict=True))
    figures = []
    for case in cases:
        our_t, our_m = (min(values) for values in zip(*runs[case], strict=True))
        time_goal, memory_goal = MERGE_GOALS[case]
        note = f"{sizes.plan_rows:,} rows, {sizes.plan_rows * 3 // 4:,} contacts"
        figures += [
            Figure(
                f"merged planning time, {case}",
                f"{our_t:.2f} s",
                f"{base_t:.2f} s read_csv",
                our_t / base_t,
                f"<= {time_goal:g}",
                our_t / base_t <= time_goal,
                note,
            ),
            Figure(
                f"merged planning memory, {case}",
                f"{our_m / 1024:.0f} MiB",
                f"{base_m / 1024:.0f} MiB read_csv",
                our_m / base_m,
                f"<= {memory_goal:g}",
                our_m / base_m <= memory_goal,
                note,
            ),
        ]
    return figures


def _remember_merged(path: Path, state_path: Path) -> None:
    """The state as a merged run of `path` leaves it: every request sent, every contact's
    combined context remembered."""
    sys.path.insert(0, str(ROOT))
    from sync_worker.plan import Memory, PlanOptions, build_plan
    from sync_worker.read.reader import ReadOptions, read_batch
    from sync_worker.store.state import State, Success

    batch = read_batch([str(path)], ReadOptions())
    plan = build_plan(batch, PlanOptions(merge=True, coalesce=False), Memory())
    state = State.open(state_path)
    for start in range(0, len(plan.table), 100_000):
        state.add(
            [
                Success(
                    r.interview_id,
                    r.sha256,
                    r.contact,
                    r.context_json,
                    "bench",
                    "2026-01-01T00:00:00.000Z",
                )
                for r in plan.table.slice(start, start + 100_000)
            ]
        )
        state.flush()
    state.close()


# 4. Nightly diff -------------------------------------------------------------------------------


def bench_nightly(sizes: Sizes, work: Path) -> Figure:
    count = sizes.diff_rows
    changed = set(random.Random(2).sample(range(1, count + 1), count // 100))
    write_rows(work / "night0.csv", count)
    write_rows(work / "night1.csv", count, changed=changed)
    with (
        open(work / "night1.csv", encoding="utf-8") as src,
        open(work / "changed.csv", "w", encoding="utf-8") as dst,
    ):
        lines = src.readlines()
        dst.write(lines[0] + "".join(lines[i] for i in sorted(changed)))
    rate = ["--rate-limit", "1000", "--rate-period", "1"]  # the runs timed pace themselves
    server = sandbox("--rate-limit", "100000000", "--rate-period", "1")
    plans, sends, diffs = [], [], []
    try:
        _sent_before(server, work, "night0.csv", "night.sqlite")
        for attempt in range(sizes.repeats):  # alternated; the least of each
            plans.append(
                measure(
                    [
                        sys.executable,
                        "-m",
                        "sync_worker",
                        "plan",
                        "night1.csv",
                        "--state",
                        "night.sqlite",
                        "--base-url",
                        server.base_url,
                    ],
                    work,
                )[0]
            )
            _reset(server)
            only_changed = run_args(server, work, f"changed-only{attempt}", "changed.csv", *rate)
            sends.append(measure([sys.executable, "-m", "sync_worker", *only_changed], work)[0])
            _reset(server)
            state = work / f"night{attempt}.sqlite"  # each diff starts from the same state
            shutil.copy(work / "night.sqlite", state)
            diffs.append(
                measure(
                    [
                        sys.executable,
                        "-m",
                        "sync_worker",
                        "run",
                        "night1.csv",
                        *rate,
                        "--base-url",
                        server.base_url,
                        "--state",
                        str(state),
                        "--ledger",
                        "night.csv",
                        "--no-progress",
                    ],
                    work,
                )[0]
            )
            counts = summary_of(work / "night.csv")["counts"]
            assert counts.get("ok") == len(changed), counts
            (work / "night.csv").unlink()
    finally:
        server.stop()
    plan_t, send_t, diff_t = min(plans), min(sends), min(diffs)
    ratio = (diff_t - plan_t) / send_t
    return Figure(
        "nightly diff",
        f"{diff_t:.2f} s ({count:,} rows, 1% changed)",
        f"{send_t:.2f} s sending the {len(changed):,} + {plan_t:.2f} s planning",
        ratio,
        "<= 1.1 (after planning)",
        ratio <= 1.1,
        "at 1000 requests/s",
    )


def _sent_before(server: SandboxServer, work: Path, source: str, state: str) -> None:
    """The state a previous nightly run leaves: `source` sent, unpaced, by a real run (its
    values confirmed field by field, as the next run compares them)."""
    unlimited = ("--rate-limit", "100000000", "--rate-period", "1")
    sync_worker(
        *run_args(server, work, "before", source, *unlimited, state=state), cwd=work, codes=(0,)
    )


# 4b. Requests needed -------------------------------------------------------------------------


def write_contacts(
    path: Path, count: int, contacts_changed: set[int], goals: set[int], seed: int = 3
) -> list[tuple[int, int]]:
    """`count` interviews of contacts with one to four interviews each, a CRM export's rows:
    each contact's name and context repeated in its rows, `objective` empty but for the
    interviews in `goals`, the context of the contacts in `contacts_changed` changed. Returns
    (interview, contact) of each row."""
    rng = random.Random(seed)
    rows: list[tuple[int, int]] = []
    contact = 0
    while len(rows) < count:
        contact += 1
        rows += [(0, contact)] * min(rng.randint(1, 4), count - len(rows))
    rng.shuffle(rows)  # a contact's interviews are scattered through the export
    rows = [(number, who) for number, (_zero, who) in enumerate(rows, 1)]
    stages = ["Closed Lost", "Closed Won", "Demo"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["interview_id", "contact_email", "contact_name", "context.stage", "objective"]
        )
        for interview, who in rows:
            stage = stages[who % 3] + (" (moved)" if who in contacts_changed else "")
            goal = f"Renewal {interview}" if interview in goals else ""
            writer.writerow([interview, f"c{who}@x.example", f"Name {who}", stage, goal])
    return rows


def bench_requests_needed(sizes: Sizes, work: Path) -> list[Figure]:
    """Requests sent against requests needed (SPEC section 11): a first backfill, then a nightly
    re-run where 1% of the rows changed, half of them a contact's context (in all its rows),
    half an interview's objective (of other contacts). Needed = contacts whose fields changed +
    interviews whose own fields changed, counted from the export; sent = the run's
    `requests_sent`. Without coalescing for comparison."""
    count = sizes.needed_rows
    rows = write_contacts(work / "backfill.csv", count, set(), set())
    contacts = sorted({who for _i, who in rows})
    rng = random.Random(4)
    moved = set(rng.sample(contacts, max(1, count // 200)))
    others = [interview for interview, who in rows if who not in moved]
    goals = set(rng.sample(others, max(1, count // 200)))
    write_contacts(work / "nightly.csv", count, moved, goals)
    unlimited = ["--rate-limit", "100000000", "--rate-period", "1"]
    server = sandbox(*unlimited)
    figures = []
    try:
        for mode, extra in (("coalesced", []), ("--no-coalesce", ["--no-coalesce"])):
            _reset(server)
            state = f"needed-{mode.strip('-')}.sqlite"
            sent = []
            for name in ("backfill", "nightly"):
                ledger = f"{name}-{mode.strip('-')}"
                args = run_args(
                    server, work, ledger, f"{name}.csv", *unlimited, *extra, state=state
                )
                sync_worker(*args, cwd=work, codes=(0,))
                sent.append(summary_of(ledger_of(work, ledger))["requests_sent"])
            if mode != "coalesced":
                baseline = sent
                continue
            ours = sent
        needed = [len(contacts), len(moved) + len(goals)]
        for index, name in enumerate(("backfill", "nightly, 1% changed")):
            ratio = ours[index] / needed[index]
            figures.append(
                Figure(
                    f"requests needed, {name}",
                    f"{ours[index]:,} requests sent",
                    f"{needed[index]:,} needed",
                    ratio,
                    "= 1.0",
                    ratio == 1.0,
                    f"{count:,} rows, {len(contacts):,} contacts of 1-4 interviews; "
                    f"without coalescing {baseline[index]:,} sent",
                )
            )
    finally:
        server.stop()
    return figures


# 5. Recovery ----------------------------------------------------------------------------------


def bench_recovery(sizes: Sizes, work: Path) -> list[Figure]:
    count = sizes.recovery_rows
    whole = "--whole-second-reset"  # X-RateLimit-Reset an integer: up to a second late
    scenarios = [
        ("lower limit", ["--rate-limit", "25", "--rate-period", "1"], 25, 1.0, ["50", "1"]),
        ("longer window", ["--rate-limit", "25", "--rate-period", "3"], 25, 3.0, ["25", "1"]),
        (
            "lower limit, whole-second reset",
            ["--rate-limit", "25", "--rate-period", "2", whole],
            25,
            2.0,
            ["50", "2"],
        ),
        (
            "longer window, whole-second reset",
            ["--rate-limit", "20", "--rate-period", "2", whole],
            20,
            2.0,
            ["20", "1"],
        ),
        (
            "both, whole seconds to wait",
            ["--rate-limit", "20", "--rate-period", "2", whole, "--reset-format", "seconds"],
            20,
            2.0,
            ["40", "1"],
        ),
    ]
    figures = []
    for name, server_args, limit, span, told in scenarios:
        server = sandbox(*server_args)
        tag = name.replace(" ", "-").replace(",", "")
        try:
            write_rows(work / f"{tag}.csv", count)
            done = sync_worker(
                *run_args(
                    server,
                    work,
                    tag,
                    f"{tag}.csv",
                    "--rate-limit",
                    told[0],
                    "--rate-period",
                    told[1],
                ),
                cwd=work,
            )
            log = server.requests()
        finally:
            server.stop()
        arrivals = [r["t"] for r in log]
        during_pause = len(sent_in_pauses(log))
        lost = count - len({r["id"] for r in log if r["status"] == 200})
        least = (math.ceil(count / limit) - 1) * span
        took = max(arrivals) - min(arrivals)
        ratio = took / least
        learned = _learned(done.stderr, ledger_of(work, tag))
        rejected = sum(1 for r in log if r["status"] == 429)
        figures.append(
            Figure(
                f"recovery, {name}",
                f"{took:.2f} s",
                f"{least:.2f} s least the server allows",
                ratio,
                "<= 1.2, 0 lost, 0 in pause",
                ratio <= 1.2 and lost == 0 and during_pause == 0,
                f"{lost} rows lost, {during_pause} requests during a pause, told {told[0]} per "
                f"{told[1]} s, server {limit} per {span:g} s, {learned}, {rejected} 429s",
            )
        )
    return figures


def _learned(stderr: str, ledger: Path) -> str:
    """What the run learned: its `server_limit_learned` log lines, and the window it paced to
    at the end (the summary's rate; a change under 5% is not logged again)."""
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    learned = [e for e in events if e.get("event") == "server_limit_learned"]
    per_minute = summary_of(ledger).get("server_limit_learned_per_minute")
    if not learned or not per_minute:
        return "nothing learned"
    limit = learned[-1]["limit"]
    return f"learned {limit} per {limit * 60 / per_minute:.3f} s ({len(learned)} log lines)"


# 6. A slow API ---------------------------------------------------------------------------------


def bench_slow_api(sizes: Sizes, work: Path) -> Figure:
    """Enterprise's 1,000 a minute (in a shrunk window) against answers of 1.5-2.5 s: the pool
    must grow to rate x latency. Measured at the sandbox from the second arrival: the first
    request goes alone by design (SPEC section 7), and its 2 s would say nothing about the pool."""
    limit, period, rows, latency = sizes.slow_api
    log = _paced_run(
        work,
        "slow",
        rows,
        limit,
        period,
        "--latency-ms",
        str(latency),
        "--latency-jitter-ms",
        str(latency / 4),
    )
    achieved, rejected, windows = _arrivals(log, period, skip=1)
    allowed = limit / period
    ratio = achieved / allowed
    summary = summary_of(ledger_of(work, "slow"))
    return Figure(
        "slow API",
        f"{achieved * 60:.1f}/min",
        f"{allowed * 60:.1f}/min allowed",
        ratio,
        ">= 0.98, 0 429s",
        ratio >= 0.98 and rejected == 0,
        f"latency {latency * 0.75 / 1000:g}-{latency * 1.25 / 1000:g} s, {rejected} 429s over "
        f"{windows:.1f} windows of {period:g} s, pool peak {summary['workers_peak']}, "
        f"most in flight at the server {max(r['in_flight'] for r in log)}",
    )


# 7. Start-up ---------------------------------------------------------------------------------

BARE_TEN = """
import asyncio, sys
import aiohttp, pandas

async def main(url, key, ids):
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for i in ids:
            async with session.patch(f"{url}/interviews/{i}", json={"contact_name": "N"}) as answer:
                await answer.read()

asyncio.run(main(sys.argv[1], sys.argv[2], pandas.read_csv(sys.argv[3], dtype=str)["interview_id"]))
"""


def bench_startup(sizes: Sizes, work: Path) -> list[Figure]:
    """Whole-process wall time of small commands against a bare process doing the least the
    same job needs: a 10-row run against reading the file with pandas and sending its 10
    requests with aiohttp; `validate` of it against reading it; `--help` against importing
    click. Least of alternated runs, after one untimed round that fills the bytecode cache."""
    path = write_rows(work / "ten.csv", 10)
    server = sandbox("--rate-limit", "100000", "--rate-period", "1")
    unlimited = ["--rate-limit", "100000", "--rate-period", "1", "--force"]  # no pacing
    py, worker = sys.executable, [sys.executable, "-m", "sync_worker"]
    pairs = {
        "10-row run": (
            [*worker, *run_args(server, work, "ten", "ten.csv", *unlimited)],
            [py, "-c", BARE_TEN, server.base_url, KEY, str(path)],
            "bare read_csv + 10 aiohttp requests",
        ),
        "validate": (
            [*worker, "validate", "ten.csv"],
            [py, "-c", f"import pandas; pandas.read_csv({str(path)!r}, dtype=str)"],
            "bare import pandas + read_csv",
        ),
        "--help": ([*worker, "--help"], [py, "-c", "import click"], "bare import click"),
    }
    least: dict[str, list[float]] = {name: [math.inf, math.inf] for name in pairs}
    try:
        for attempt in range(sizes.warm_up + sizes.startup_repeats):
            for name, (ours, bare, _label) in pairs.items():
                for side, command in enumerate((ours, bare)):
                    ledger_of(work, "ten").unlink(missing_ok=True)  # a run refuses a used one
                    took = timed(command, work)[0]
                    if attempt >= sizes.warm_up:  # the warm-up rounds are not timed
                        least[name][side] = min(least[name][side], took)
    finally:
        server.stop()
    return [_startup_figure(name, *least[name], pairs[name][2], sizes) for name in pairs]


def _startup_figure(name: str, ours: float, bare: float, label: str, sizes: Sizes) -> Figure:
    ratio = ours / bare
    goal = 1.5 if name == "--help" else 1.25
    return Figure(
        f"start-up, {name}",
        f"{ours * 1000:.0f} ms",
        f"{bare * 1000:.0f} ms {label}",
        ratio,
        f"<= {goal}",
        ratio <= goal,
        f"whole process, least of {sizes.startup_repeats}",
    )


# 9. The state's size after many runs ----------------------------------------------------------


def bench_state_size(sizes: Sizes, work: Path) -> Figure:
    """Runs over the same rows as a nightly job sees them: a backfill, a forced re-send of
    everything, a backfill stopped by its window (--force, a few seconds at 100 a second), then
    nightly runs with 1% changed. The state file's size after the last, against the bytes its
    tables hold (SQLite's dbstat)."""
    count, runs = sizes.state_rows, sizes.state_runs
    server = sandbox("--rate-limit", "100000000", "--rate-period", "1")
    unlimited = ["--rate-limit", "100000000", "--rate-period", "1", "--concurrency", "16"]
    plans = [(["--force"], 0), (["--force", "--max-duration", "0.05", "--rate-limit", "100"], 0)]
    worst = 0.0
    try:
        for run in range(runs):
            extra, changed = ([], 0) if run == 0 else plans[run - 1] if run <= 2 else ([], run)
            rng = random.Random(run)
            edits = set(rng.sample(range(1, count + 1), count // 100)) if changed else None
            write_rows(work / "nightly.csv", count, changed=edits)
            _reset(server)
            args = run_args(server, work, "size", "nightly.csv", *unlimited, *extra)
            ledger = ledger_of(work, "size")
            args[args.index("--ledger") + 1] = str(ledger.with_name(f"size-{run}.csv"))
            command = [sys.executable, "-m", "sync_worker", *args]
            done = subprocess.run(command, cwd=work, env=ENV, capture_output=True, text=True)
            if done.returncode not in (0, 1, 4):
                raise SystemExit(f"`sync-worker {' '.join(args)}` exited {done.returncode}")
            size, data = _state_size(work / "size.sqlite")
            worst = max(worst, size / data)
    finally:
        server.stop()
    ratio = size / data
    return Figure(
        "state size after nightly runs",
        f"{size / 2**20:.1f} MiB file",
        f"{data / 2**20:.1f} MiB held",
        ratio,
        "<= 2",
        worst <= 2,
        f"{runs} runs over {count:,} rows (a backfill, a forced re-send, one stopped by its "
        f"window, nightly runs with 1% changed); the worst after any run {worst:.2f}",
    )


def _state_size(path: Path) -> tuple[int, int]:
    """The file's bytes, and the bytes of the rows and keys its tables hold."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        (held,) = db.execute("SELECT sum(payload) FROM dbstat").fetchone()
    finally:
        db.close()
    return path.stat().st_size, int(held)


BENCHES: list[Callable[[Sizes, Path], Figure | list[Figure]]] = [
    bench_rate,
    bench_overhead,
    bench_overhead_whole_process,
    bench_plan,
    bench_xlsx,
    bench_merge,
    bench_nightly,
    bench_requests_needed,
    bench_recovery,
    bench_slow_api,
    bench_startup,
    bench_state_size,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument(
        "--only", help="run only benchmarks whose name contains this (or any of a,b,...)"
    )
    options = parser.parse_args()
    sizes = SMOKE if options.smoke else FULL
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        for bench in BENCHES:
            if options.only and not any(part in bench.__name__ for part in options.only.split(",")):
                continue
            result = bench(sizes, Path(tmp))
            figures.extend(result if isinstance(result, list) else [result])
    print_table(figures)
    return 0


def print_table(figures: list[Figure]) -> None:
    import aiohttp
    import pandas

    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"pandas {pandas.__version__}, aiohttp {aiohttp.__version__}"
    )
    header = ("figure", "measured", "baseline", "ratio", "goal", "met", "notes")
    rows = [
        (
            f.name,
            f.measured,
            f.baseline,
            f"{f.ratio:.3f}",
            f.goal,
            "yes" if f.met else "NO",
            f.extra,
        )
        for f in figures
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
