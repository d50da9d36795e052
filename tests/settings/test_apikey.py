"""The API key: surrounding whitespace and a BOM removed; anything else odd refused, unquoted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import API_KEY, SandboxServer, run_ok

from sync_worker.errors import ConfigError
from sync_worker.logs import redact
from sync_worker.settings.apikey import clean_key, key_problem, load_key
from sync_worker.settings.config import Settings

KEY = "sk-test-7a1b2c3d4e5f6a7b"  # a made-up test key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (KEY, KEY),
        (f"{KEY}\n", KEY),
        (f"{KEY}\r\n", KEY),
        (f"\ufeff{KEY}\r\n", KEY),
        (f"  \t{KEY}  \n\n", KEY),
        (f"\n\ufeff{KEY}", KEY),
        ("\ufeff\r\n", ""),
    ],
    ids=["bare", "newline", "crlf", "bom-crlf", "blanks", "blank-line-then-bom", "bom-only"],
)
def test_clean_key_strips_whitespace_and_bom(text: str, key: str) -> None:
    assert clean_key(text) == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY, None),
        (f"{KEY}\nsecond", "line break"),
        (f"{KEY[:5]}\r{KEY[5:]}", "line break"),
        (f"{KEY[:5]} {KEY[5:]}", "space or tab"),
        (f"{KEY[:5]}\t{KEY[5:]}", "space or tab"),
        (f"{KEY[:5]}\u00a0{KEY[5:]}", "space or tab"),
        (f"{KEY}\x07", "control"),
        (f"{KEY}\x7f", "control"),
        (f"\u200b{KEY}", "invisible"),
        (f"{KEY}\u00e9", "not plain ASCII"),
    ],
    ids=[
        "fine",
        "two-lines",
        "carriage-return",
        "space",
        "tab",
        "no-break-space",
        "bell",
        "delete",
        "zero-width-space",
        "accent",
    ],
)
def test_key_problem_names_what_is_wrong(key: str, problem: str | None) -> None:
    found = key_problem(key)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert KEY[:5] not in found and KEY[-5:] not in found


def test_key_file_with_two_lines_is_refused_without_echo(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text(f"{KEY}\nsecond-line-secret\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"--api-key-file {path}: the key holds a")):
        load_key(Settings(), str(path))


def test_utf16_key_file_from_notepad_works(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_bytes(f"\ufeff{KEY}\r\n".encode("utf-16-le"))
    assert load_key(Settings(), str(path)) == KEY


def test_binary_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"\x80\x81\x82" + KEY.encode())
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_key(Settings(), str(path))


def test_key_from_the_environment_same_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", f"\ufeff{KEY}\n")
    assert load_key(Settings(api_key_env="MY_KEY"), None) == KEY
    assert redact(f"x {KEY} y") == "x [REDACTED] y"  # registered as a secret
    monkeypatch.setenv("MY_KEY", f"{KEY[:5]} {KEY[5:]}")
    with pytest.raises(ConfigError, match="the environment variable MY_KEY: the key holds a space"):
        load_key(Settings(api_key_env="MY_KEY"), None)


@pytest.mark.parametrize("short", ["2", "a", "s", "abcdefg"], ids=["1-digit", "1-letter", "s", "7"])
def test_a_key_too_short_to_be_one_is_refused_and_garbles_nothing(
    tmp_path: Path, short: str
) -> None:
    """Redacting a one-character key would scrub it from every line (`rows2.csv` shown as
    `rows[REDACTED].csv`): it is refused as not a key, and never registered as a secret."""
    from click.testing import CliRunner

    from sync_worker.cli.main import main

    (tmp_path / "rows2.csv").write_text("interview_id,objective\n1,a task\n")
    (tmp_path / "none.toml").write_text("")
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path / "rows2.csv"), "--config", str(tmp_path / "none.toml")],
        env={"HINDSIGHT_API_KEY": short},
    )
    assert result.exit_code == 2
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert "HINDSIGHT_API_KEY" in line and "too short to be an API key" in line
    assert "[REDACTED]" not in line
    assert redact("rows2.csv as a task in sync-state") == "rows2.csv as a task in sync-state"


@pytest.mark.parametrize(
    "key_text",
    [f"\ufeff{API_KEY}\r\n", f"  {API_KEY}\n\n", API_KEY],
    ids=["notepad-bom-crlf", "surrounding-blank", "bare"],
)
def test_key_file_with_bom_and_blank_lines_works(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sandbox: SandboxServer,
    key_text: str,
) -> None:
    key_file = tmp_path_factory.mktemp("keys") / "key.txt"
    key_file.write_text(key_text, encoding="utf-8", newline="")
    run_ok(tmp_path, sandbox, "--api-key-file", str(key_file), HINDSIGHT_API_KEY="")
    assert sandbox.interview(1) is not None  # the sandbox accepts only API_KEY itself


def test_key_variable_with_bom_and_newline_works(tmp_path: Path, sandbox: SandboxServer) -> None:
    run_ok(tmp_path, sandbox, HINDSIGHT_API_KEY=f"\ufeff{API_KEY}\n")
