"""`make demo`: sync the samples against a local sandbox, show the summary, then run again.

Starts the sandbox on a free port of 127.0.0.1, syncs each sample with its CRM mapping, prints
each run's report and one contact's merged notes, runs everything again to show that nothing
unchanged is re-sent, and stops the sandbox (also on error or Ctrl-C), leaving no process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
KEY = "demo-key-not-a-real-one"
RUNS = [
    (
        "salesforce",
        [
            "samples/salesforce_contacts.csv",
            "--config",
            "config/salesforce.toml",
            "--existing-notes",
            "samples/existing_notes.csv",
        ],
    ),
    ("hubspot", ["samples/hubspot_contacts.csv", "--config", "config/hubspot.toml", "--merge"]),
    # a Salesforce report as Salesforce gives it: its footer is set aside, not read as rows
    ("salesforce-report", ["samples/salesforce_report.csv", "--config", "config/salesforce.toml"]),
    (
        "hubspot-xlsx",
        ["samples/hubspot_contacts.xlsx", "--config", "config/hubspot.toml", "--merge"],
    ),
    ("warehouse", ["samples/warehouse_contacts.parquet", "--merge"]),
]


def sync_worker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HINDSIGHT_API_KEY": KEY}
    command = [sys.executable, "-m", "sync_worker", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True)
    if check and result.returncode not in (0, 1):
        sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: `sync-worker {' '.join(args)}` exited {result.returncode}")
    return result


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "sync_worker", "sandbox", "--port", "0", "--api-key", KEY]
    sandbox = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert sandbox.stdout is not None
    line = sandbox.stdout.readline().strip()
    print(f"$ sync-worker sandbox --port 0\n{line}\n")
    return sandbox, line.rsplit(" ", 1)[-1]


def sync_all(base_url: str, round_name: str) -> None:
    for name, args in RUNS:
        ledger = WORK / f"{name}-{round_name}.csv"
        run_args = [
            "run",
            *args,
            "--base-url",
            base_url,
            "--state",
            str(WORK / "state.sqlite"),
            "--ledger",
            str(ledger),
            "--no-progress",
            "--log-format",
            "json",
        ]
        shown = " ".join(a for a in args)
        print(f"$ sync-worker run {shown}")
        result = sync_worker(*run_args)
        finished = [json.loads(x) for x in result.stderr.splitlines() if '"run_finished"' in x]
        aside = finished[-1].get("lines_set_aside")
        print(
            f"  exit {result.returncode}; summary: {json.dumps(finished[-1]['counts'])}, "
            f"requests sent: {finished[-1]['requests_sent']}"
            + (f", lines set aside: {aside}" if aside else "")
        )
        print("$ sync-worker report " + str(ledger.relative_to(ROOT)))
        print("  " + sync_worker("report", str(ledger)).stdout.strip().replace("\n", "\n  "))
        print()


def show_notes(base_url: str, interview_id: int) -> None:
    root = base_url.removesuffix("/api/v1")
    with urllib.request.urlopen(f"{root}/_sandbox/interviews/{interview_id}", timeout=5) as r:
        shown = json.loads(r.read())
    print(f"notes of interview {interview_id}'s contact, existing and new merged:")
    print("  " + json.dumps(shown["contact_context"], indent=2).replace("\n", "\n  ") + "\n")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    sandbox, base_url = start_sandbox()
    try:
        print("== first sync: every row is sent ==")
        sync_all(base_url, "first")
        show_notes(base_url, 4821)
        print("== same sync again: nothing changed, nothing re-sent ==")
        sync_all(base_url, "again")
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    print("sandbox stopped; ledgers and state are in .demo/")


if __name__ == "__main__":
    main()
