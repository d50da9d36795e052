"""The option table: the command line's options, the Python keywords and the config file's keys
are all made from it, and a message in the command line's words reads in a Python caller's."""

from __future__ import annotations

import inspect

import click
import pytest

import sync_worker
from sync_worker.cli.main import main
from sync_worker.settings.config import SCHEMA
from sync_worker.settings.options import OPTIONS, for_command, in_python_words

COMMANDS = ("run", "plan", "validate", "revert")
FUNCTIONS = {"run": "sync", "plan": "plan_requests", "validate": "validate", "revert": "revert"}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_s_flags_and_keywords_are_the_table_s(command: str) -> None:
    table = for_command(command)  # type: ignore[arg-type]
    group = main
    assert isinstance(group, click.Group)
    params = group.commands[command].params
    flags = {p.name for p in params if isinstance(p, click.Option) and p.expose_value}
    assert flags == {o.keyword for o in table if o.flag is not None}
    function = getattr(sync_worker, FUNCTIONS[command])
    keywords = list(inspect.signature(function).parameters)[1:]
    assert keywords == [o.keyword for o in table]


def test_the_config_file_s_keys_are_the_table_s() -> None:
    keys = {(section, key) for section, body in SCHEMA.items() for key in body}
    assert keys == {o.file_key for o in OPTIONS if o.file_key is not None}
    assert list(SCHEMA) == ["api", "input", "merge", "ledger", "state", "metrics", "guard"]


@pytest.mark.parametrize(
    ("cli", "python"),
    [
        ("(or use --api-key-file PATH)", "(or use api_key_file=PATH)"),
        ("--state names the wrong file", "state= names the wrong file"),
        ("give --rate-limit N too", "give rate_limit=N too"),
        ("--rate-period 1 with --tier growth", "rate_period= 1 with tier= growth"),
        ("left alone (--force puts it back)", "left alone (force=True puts it back)"),
        ("--merge/--no-merge, --no-merge", "merge=, merge=False"),
        ("check --base-url", "check base_url="),
        ("--email and --interview", "--email and --interview"),  # no such keyword: as written
        ("/data/--state.csv", "/data/--state.csv"),
    ],
    ids=["metavar", "bare", "number", "two", "flag", "switch", "end", "not-options", "in-a-path"],
)
def test_messages_reworded_for_python(cli: str, python: str) -> None:
    assert in_python_words(cli) == python
