"""The property behind revert: a run and its revert leave every known field as it was.

In-process (click's runner, one sandbox for all examples) so that Hypothesis stays fast."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import API_KEY, SandboxServer, start_sandbox, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker.cli.main import main

HEADER = ["interview_id", "contact_email", "contact_name", "objective", "contact_context"]
FIELDS = ("contact_name", "objective", "contact_context")
INTERVIEWS = 3
_bases = itertools.count(1)

words = st.text(alphabet="abcxyz é.,'-=", min_size=1, max_size=10).map(str.strip).filter(bool)
objects = st.dictionaries(st.sampled_from(["stage", "owner", "notes"]), words, min_size=1)
contexts = st.one_of(words, objects.map(lambda o: json.dumps(o, ensure_ascii=False)))
# Per interview and field: None leaves it alone in run B, else the value B writes.
changes = st.lists(
    st.tuples(st.none() | words, st.none() | words, st.none() | contexts),
    min_size=INTERVIEWS,
    max_size=INTERVIEWS,
)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sandbox = start_sandbox("--api-key", API_KEY, "--rate-limit", "100000", "--rate-period", "1")
    yield sandbox
    sandbox.stop()


def invoke(work: Path, *args: str) -> int:
    runner = CliRunner()
    with _cwd(work):
        result = runner.invoke(
            main,
            [*args, "--log-format", "json", "--no-progress"],
            env={"HINDSIGHT_API_KEY": API_KEY},
        )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code


class _cwd:
    def __init__(self, path: Path) -> None:
        self.path, self.old = path, Path.cwd()

    def __enter__(self) -> None:
        import os

        os.chdir(self.path)

    def __exit__(self, *_exc: object) -> None:
        import os

        os.chdir(self.old)


def fields_of(server: SandboxServer, ids: list[int]) -> dict[int, str]:
    held: dict[int, Any] = {i: server.interview(i) for i in ids}
    return {i: json.dumps({f: v[f] for f in FIELDS}, sort_keys=True) for i, v in held.items()}


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=changes, merge=st.booleans())
def test_run_then_revert_leaves_every_known_field_as_it_was(
    server: SandboxServer, changes: list[tuple[str | None, str | None, str | None]], merge: bool
) -> None:
    base = next(_bases) * 10
    ids = [base + i for i in range(INTERVIEWS)]
    common = [
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--rate-limit",
        "100000",
        "--rate-period",
        "1",
    ]
    with tempfile.TemporaryDirectory(prefix="revert-property-") as folder:
        work = Path(folder)
        write_csv(
            work / "a.csv",
            HEADER,
            [[i, f"c{i}@x.com", f"Name {i}", f"Goal {i}", f"Notes {i}"] for i in ids],
        )
        assert invoke(work, "run", "a.csv", "--ledger", "a.csv.l.csv", *common) == 0
        known = fields_of(server, ids)
        rows = [
            [i, f"c{i}@x.com", *(v or "" for v in change)]
            for i, change in zip(ids, changes, strict=True)
            if any(change)
        ]
        if not rows:
            return
        write_csv(work / "b.csv", HEADER, rows)
        merging = ["--merge"] if merge else []
        assert invoke(work, "run", "b.csv", "--ledger", "b.csv.l.csv", *merging, *common) == 0
        run_b = json.loads((work / "b.csv.l.csv.summary.json").read_text())["run_id"]
        assert invoke(work, "revert", run_b, "--ledger", "r.csv", *common) == 0
        assert fields_of(server, ids) == known
