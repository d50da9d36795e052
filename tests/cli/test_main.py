"""The command line in-process (CliRunner): help, secrets and hosts, mappings, progress."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import API_KEY, SandboxServer, cli_env, write_csv

from sync_worker.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env or {"HINDSIGHT_API_KEY": API_KEY})
    return result.exit_code, result.output


def all_commands() -> list[tuple[str, click.Command]]:
    assert isinstance(main, click.Group)
    return [("main", main), *main.commands.items()]


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=[n for n, _ in all_commands()])
def test_every_command_and_option_has_help(name: str, command: click.Command) -> None:
    assert command.help, name
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{name} {param.opts}"
    code, output = invoke(*([] if name == "main" else [name]), "--help")
    assert code == 0 and "Usage:" in output


@pytest.mark.parametrize(
    "args",
    [["--api-key", "sk-live-abcdef123"], ["--api-key=sk-live-abcdef123"]],
    ids=["separate", "equals"],
)
def test_key_flag_is_a_usage_error_and_not_echoed(tmp_path: Path, args: list[str]) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    code, output = invoke("run", str(tmp_path / "in.csv"), *args)
    assert code == 2
    assert "never taken on the command line" in output
    assert "sk-live-abcdef123" not in output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--base-url", "http://api.example.com/v1"], {}, "plain http to a non-loopback host"),
        ([], {"HINDSIGHT_BASE_URL": "http://10.1.2.3/api"}, "plain http to a non-loopback host"),
        (["--api-key-env", "EMPTY_KEY"], {"EMPTY_KEY": "  "}, "EMPTY_KEY"),
        (["--api-key-file", "/nonexistent/key"], {}, "--api-key-file /nonexistent/key"),
        (["--config", "bad.toml"], {}, "unknown key [api] tierr"),
    ],
    ids=["http-public-flag", "http-private-env", "empty-key", "missing-key-file", "bad-config"],
)
def test_refused_before_anything_is_sent(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    (tmp_path / "bad.toml").write_text('[api]\ntierr = "growth"\n')
    code, output = invoke(
        "run", "in.csv", "--log-format", "console", *args, env={"HINDSIGHT_API_KEY": API_KEY, **env}
    )
    assert code == 2
    assert message in output
    assert not (tmp_path / "ledgers").exists()


@pytest.mark.parametrize(
    ("sample", "config"),
    [
        ("samples/salesforce_contacts.csv", "config/salesforce.toml"),
        ("samples/hubspot_contacts.csv", "config/hubspot.toml"),
        ("samples/warehouse_contacts.parquet", "config/sync.toml"),
    ],
    ids=["salesforce", "hubspot", "parquet"],
)
def test_ready_mappings_validate_their_samples(sample: str, config: str) -> None:
    code, output = invoke("validate", str(ROOT / sample), "--config", str(ROOT / config))
    assert code == 0, output
    assert re.search(r"\d+ rows in 1 file\(s\): \d+ requests to send, 0 invalid rows", output)


def test_validate_lists_row_problems(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [["x1", "a"], [2, ""], [3, "b"]])
    code, output = invoke("validate", str(tmp_path / "in.csv"))
    assert code == 1
    assert "in.csv row 1, column interview_id" in output and "[invalid_interview_id]" in output
    assert "in.csv row 2: nothing to update" in output
    assert "3 rows in 1 file(s): 1 requests to send, 2 invalid rows" in output


def run_on_terminal(args: list[str], cwd: Path) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return what it showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    process.wait(timeout=60)
    os.close(leader)
    return shown.decode("utf-8", "replace")


def test_progress_and_console_logs_only_on_a_terminal(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[i, "x"] for i in range(1, 21)])
    args = [
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "s.sqlite",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
    ]
    shown = run_on_terminal([*args, "--ledger", "a.csv"], tmp_path)
    assert re.search(r"20/20 \[.*row/s\]", shown), shown  # rows done, rate, time
    assert "ledger a.csv: 20 rows" in shown and '{"' not in shown  # the report, not JSON
    quiet = run_on_terminal([*args, "--ledger", "b.csv", "--no-progress", "--force"], tmp_path)
    assert "20/20" not in quiet and "ledger b.csv: 20 rows" in quiet
    assert API_KEY not in shown + quiet


def test_usage_errors_are_one_line_but_bare_command_shows_help() -> None:
    code, output = invoke("run", "in.csv", "--rate-limit", "x")
    assert code == 2 and "--rate-limit" in output and "Usage:" not in output
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    code, output = invoke()
    assert "Usage:" in output and "Commands:" in output


@pytest.mark.parametrize(
    ("words", "json_line"),
    [
        (["--log-format", "console"], False),
        (["--log-format=console"], False),
        (["--log-format", "json"], True),
        ([], True),  # not a terminal: JSON
    ],
    ids=["console", "console-with-equals", "json", "auto"],
)
def test_a_usage_error_takes_the_log_format_asked_for(words: list[str], json_line: bool) -> None:
    code, output = invoke("run", "in.csv", "--rate-limit", "0", *words)
    assert code == 2
    assert output.lstrip().startswith("{") is json_line, output


# Start-up: a command imports only what it uses. The module lists at exit, not
# timings (those are `make bench`'s start-up figures); each case also names modules it must have
# imported, so a list taken too early cannot pass.
MODULES_AT_EXIT = """
import atexit, runpy, sys
out, sys.argv = sys.argv[1], ["sync-worker", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write("\\n".join(sys.modules)))
runpy.run_module("sync_worker", run_name="__main__")
"""
HEAVY = {"pandas", "numpy", "pyarrow", "structlog", "aiohttp", "sqlite3"}
SENDING = {"aiohttp", "yarl", "aiolimiter", "sync_worker.send.client", "sync_worker.send.sender"}
# a progress bar (only on a terminal), --metrics-file, a Parquet input, Arrow's query engine
EXTRAS = {"tqdm", "prometheus_client", "pyarrow.parquet", "pyarrow.acero", "pyarrow.dataset"}


def modules_at_exit(args: list[str], cwd: Path) -> set[str]:
    command = [sys.executable, "-c", MODULES_AT_EXIT, str(cwd / "modules.txt"), *args]
    done = subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set((cwd / "modules.txt").read_text().split())


@pytest.mark.parametrize(
    ("args", "imported", "not_imported"),
    [
        (["--help"], {"click", "sync_worker.cli.main"}, HEAVY | {"sync_worker.commands.api"}),
        (["validate", "in.csv"], {"pandas", "structlog"}, SENDING | EXTRAS),
        (["plan", "in.csv", "--state", "s.sqlite"], {"pandas", "sqlite3"}, SENDING | EXTRAS),
        (["run", "in.csv", "--dry-run", "--state", "s.sqlite"], {"pandas"}, {"aiohttp", *EXTRAS}),
        (["run", "in.csv", "--state", "s.sqlite", "--base-url"], {"aiohttp"}, EXTRAS),
    ],
    ids=["help", "validate", "plan", "dry-run", "run"],
)
def test_commands_import_only_what_they_use(
    tmp_path: Path,
    sandbox: SandboxServer,
    args: list[str],
    imported: set[str],
    not_imported: set[str],
) -> None:
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_email", "contact_context"],
        [[1, "a@x.example", "first"], [2, "a@x.example", "second"]],
    )
    if args[-1] == "--base-url":
        args = [*args, sandbox.base_url]
    modules = modules_at_exit(args, tmp_path)
    assert imported <= modules
    assert not modules & not_imported, sorted(modules & not_imported)


def test_importing_the_package_imports_no_dependency() -> None:
    """`import sync_worker` (an Airflow DAG file parsed every few seconds) costs nothing until
    `sync_worker.sync` is used."""
    code = "import sync_worker, sys; print(' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    assert not set(done.stdout.split()) & (HEAVY | {"click", "sync_worker.commands.api"})


def test_plan_into_a_pipe_closed_early_exits_0(tmp_path: Path) -> None:
    """`plan big.csv | head -1` under `set -o pipefail`: exit 1 would read as failed rows."""
    write_csv(
        tmp_path / "in.csv",
        ["interview_id", "contact_name"],
        [[i, "x" * 200] for i in range(1, 20001)],
    )
    command = [sys.executable, "-m", "sync_worker", "plan", "in.csv"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b'{"interview_id": 1')
    process.stdout.close()
    assert process.wait(timeout=30) == 0
    assert b"Traceback" not in process.stderr.read()


def test_a_ctrl_c_before_the_run_has_its_handler_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C while the options are read or the command loads what it needs exits 130, as a
    stopped run does, not with click's `Aborted!` and exit 1 (a wrapper reads 1 as failed
    rows)."""
    cli = sys.modules["sync_worker.cli.main"]  # the module (its name `main` is the group)

    def interrupted(_action: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_finish", interrupted)
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    with pytest.raises(SystemExit) as stopped:
        main.main(["validate", str(tmp_path / "in.csv")], prog_name="sync-worker")
    assert stopped.value.code == 130
    assert "Aborted" not in capsys.readouterr().err


class _Interrupting:
    """An import finder that meets a Ctrl-C at the command's modules."""

    @staticmethod
    def find_spec(name: str, *_args: object) -> None:
        if name == "sync_worker.cli":
            raise KeyboardInterrupt


def test_a_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sync_worker.__main__ import entry

    monkeypatch.delitem(sys.modules, "sync_worker.cli")
    monkeypatch.setattr(sys, "meta_path", [_Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stopped:
        entry()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == ""
