"""The property behind coalescing: the server ends in the same state whether a contact's fields
travel once per contact or with every interview, over a first run and a later one.

In-process (click's runner, one sandbox for all examples) so that Hypothesis stays fast."""

from __future__ import annotations

import itertools
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
INTERVIEWS = 5
_bases = itertools.count(1)

words = st.sampled_from(["a", "b"])
cell = st.none() | words
contexts = st.none() | words | st.sampled_from(['{"stage": "Won"}', '{"owner": "Sam"}'])
interview = st.tuples(cell, cell, contexts)  # name, objective, context
exports = st.tuples(
    st.lists(st.integers(0, 1) | st.none(), min_size=INTERVIEWS, max_size=INTERVIEWS),  # emails
    st.lists(interview, min_size=INTERVIEWS, max_size=INTERVIEWS),  # first run
    st.lists(st.none() | interview, min_size=INTERVIEWS, max_size=INTERVIEWS),  # later run
)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sandbox = start_sandbox("--api-key", API_KEY, "--rate-limit", "100000", "--rate-period", "1")
    yield sandbox
    sandbox.stop()


def invoke(work: Path, *args: str) -> int:
    import os

    old = Path.cwd()
    os.chdir(work)
    try:
        result = CliRunner().invoke(
            main,
            [*args, "--log-format", "json", "--no-progress"],
            env={"HINDSIGHT_API_KEY": API_KEY},
        )
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code


def held(server: SandboxServer, ids: list[int]) -> list[Any]:
    found = [server.interview(i) for i in ids]
    return [None if f is None else {name: f[name] for name in FIELDS} for f in found]


def one_mode(
    server: SandboxServer,
    emails: list[int | None],
    first: list[tuple[str | None, ...]],
    later: list[tuple[str | None, ...] | None],
    merge: bool,
    *mode: str,
) -> list[Any]:
    """Both runs against fresh interviews, linked on the sandbox as their emails say; what the
    sandbox holds for each afterwards."""
    base = next(_bases) * 100
    ids = [base + i for i in range(INTERVIEWS)]
    firsts: dict[int, int] = {}
    links = {}
    for interview_id, email in zip(ids, emails, strict=True):
        if email is not None:
            links[interview_id] = firsts.setdefault(email, interview_id)
    server.link({k: v for k, v in links.items() if k != v})
    common = [
        "--base-url",
        server.base_url,
        "--state",
        "state.sqlite",
        "--rate-limit",
        "100000",
        "--rate-period",
        "1",
        *(["--merge"] if merge else []),
        *mode,
    ]

    def rows(values: list[Any]) -> list[list[Any]]:
        return [
            [i, "" if e is None else f"c{e}@x.com", *(v or "" for v in value)]
            for i, e, value in zip(ids, emails, values, strict=True)
            if value is not None and any(value)
        ]

    with tempfile.TemporaryDirectory(prefix="coalesce-property-") as folder:
        work = Path(folder)
        for name, values in (("a", first), ("b", later)):
            found = rows(values)
            if found:
                write_csv(work / f"{name}.csv", HEADER, found)
                assert invoke(work, "run", f"{name}.csv", "--ledger", f"{name}.l.csv", *common) == 0
    return held(server, ids)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(export=exports, merge=st.booleans())
def test_the_server_ends_the_same_with_and_without_coalescing(
    server: SandboxServer,
    export: tuple[list[int | None], list[Any], list[Any]],
    merge: bool,
) -> None:
    emails, first, later = export
    once = one_mode(server, emails, first, later, merge)
    every = one_mode(server, emails, first, later, merge, "--no-coalesce")
    assert once == every
