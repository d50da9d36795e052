"""The corpus of edges: every odd input, path, server and signal a demanding user tried.

Each case drives the real CLI the way the user did and asserts the exit code, one clear line on
stderr (never a traceback), and, where a ledger is due, exactly one ledger line per input row.
Keep adding to it: a new edge found is a new case here, in the section it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import API_KEY, Result, SandboxServer, read_ledger, run_cli, write_csv


def assert_one_line(result: Result, code: int, *words: str) -> str:
    """Exit `code`, no traceback, and exactly one non-empty line on stderr holding `words`."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_no_traceback(result: Result, code: int) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr


def assert_ledger_rows(path: Path, rows: int) -> list[dict[str, str]]:
    """One ledger line per input row: source rows 1..rows, each once."""
    ledger = read_ledger(path)
    assert sorted(int(line["source_row"]) for line in ledger) == list(range(1, rows + 1))
    return ledger


# -- inputs ------------------------------------------------------------------------------------

# -- config, key and numbers -------------------------------------------------------------------

# This section's own imports: each section of the corpus is merged on its own.
import json  # noqa: E402

from conftest import cli_env  # noqa: E402

NOWHERE = "http://127.0.0.1:9/api/v1"  # nothing listens: a refused run must not get this far
PASTED = "sk-live-9d8c7b6a5f4e3d2c"  # a key pasted where it does not belong
KEYS = "KEYS/"  # stands for the directory of key files, kept out of tmp_path (its files are
# checked for the key after each test)
CONFIG_FILES: dict[str, bytes] = {
    "top-level-tier": b'tier = "growth"\n[api]\n',
    "tier-and-period": b'[api]\ntier = "enterprise"\nrate_period_s = 1\n',
    "period-alone": b"[api]\nrate_period_s = 10\n",
    "timeout-inf": b"[api]\ntimeout_s = inf\n",
    "period-nan": b"[api]\nrate_period_s = nan\n",
    "retries-negative": b"[api]\nmax_retries = -1\n",
    "timeout-zero": b"[api]\ntimeout_s = 0\n",
    "http-base-url": b'[api]\nbase_url = "http://api.example.com/v1"\n',
    "key-in-env-name": f'[api]\napi_key_env = "{PASTED}"\n'.encode(),
    "not-utf8": b'[api]\ntier = "gr\xf6wth"\n',
    "column-not-text": b"[columns]\ninterview_id = 7\n",
}
KEY_FILES: dict[str, bytes] = {
    "two-lines": f"{API_KEY}\nsecond-line\n".encode(),
    "inner-space": f"{API_KEY[:6]} {API_KEY[6:]}".encode(),
    "control-char": f"{API_KEY}\x07".encode(),
    "zero-width-space": f"\u200b{API_KEY}".encode(),
    "not-ascii": f"{API_KEY}\u00e9".encode(),
    "not-utf8": b"\x80\x81" + API_KEY.encode(),
}


def _setup(tmp_path: Path, keys: Path) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    for name, content in CONFIG_FILES.items():
        (tmp_path / name).write_bytes(content)
    for name, content in KEY_FILES.items():
        (keys / name).write_bytes(content)
    (tmp_path / "a-directory").mkdir()


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        # 1. the key: one line of printable ASCII, named by file or variable, never echoed
        (["--api-key-file", "KEYS/two-lines"], {}, ["two-lines:", "line break"]),
        (["--api-key-file", "KEYS/inner-space"], {}, ["inner-space:", "space"]),
        (["--api-key-file", "KEYS/control-char"], {}, ["control-char:", "control"]),
        (["--api-key-file", "KEYS/zero-width-space"], {}, ["zero-width-space", "invisible"]),
        (["--api-key-file", "KEYS/not-ascii"], {}, ["not-ascii:", "ASCII"]),
        (["--api-key-file", "KEYS/not-utf8"], {}, ["not-utf8:", "not UTF-8"]),
        (["--api-key-file", "a-directory"], {}, ["--api-key-file", "directory"]),
        (["--api-key-file", "missing-file"], {}, ["--api-key-file missing-file: cannot read"]),
        ([], {"HINDSIGHT_API_KEY": f"{API_KEY}\nx"}, ["variable HINDSIGHT_API_KEY", "line break"]),
        # 5. a key pasted where a variable's name goes
        (["--api-key-env", PASTED], {}, ["--api-key-env takes the NAME", "not the key"]),
        (["--config", "key-in-env-name"], {}, ["key-in-env-name: [api] api_key_env", "NAME"]),
        # 2. numbers: finite and positive, naming the option or the file and key
        (["--rate-period", "inf"], {}, ["--rate-period", "not a finite number"]),
        (["--rate-period", "nan"], {}, ["--rate-period", "not a finite number"]),
        (["--max-duration", "nan"], {}, ["--max-duration", "not a finite number"]),
        (["--max-duration", "inf"], {}, ["--max-duration", "not a finite number"]),
        (["--config", "timeout-inf"], {}, ["timeout-inf: [api] timeout_s", "finite", "inf"]),
        (["--config", "period-nan"], {}, ["period-nan: [api] rate_period_s", "finite", "nan"]),
        (["--config", "retries-negative"], {}, ["[api] max_retries", "0 or more"]),
        (["--config", "timeout-zero"], {}, ["[api] timeout_s", "above 0"]),
        (["--rate-limit", "0"], {}, ["--rate-limit", "0 is not in the range"]),
        (["--concurrency", "0"], {}, ["--concurrency", "0 is not in the range"]),
        (["--max-rows", "-1"], {}, ["--max-rows", "-1 is not in the range"]),
        # 3. where a base URL came from; a key outside its section
        (["--config", "http-base-url"], {}, ["http-base-url: [api] base_url", "use https"]),
        ([], {"HINDSIGHT_BASE_URL": "http://10.1.2.3/api"}, ["HINDSIGHT_BASE_URL", "use https"]),
        (["--base-url", "http://api.example.com"], {}, ["--base-url", "use https"]),
        ([], {"HINDSIGHT_BASE_URL": "garbage"}, ["HINDSIGHT_BASE_URL", "not an http(s) URL"]),
        (["--base-url", "http://[::1"], {}, ["--base-url", "not a valid URL"]),
        (["--base-url", "https://u:pw@x.example"], {}, ["--base-url", "user or password"]),
        (["--config", "top-level-tier"], {}, ["top-level-tier: key tier must be under [api]"]),
        # 4. a tier is per 60 s: a tier with another period and no rate limit is ambiguous
        (["--config", "tier-and-period"], {},
         ["tier-and-period: [api] rate_period_s = 1", "[api] tier = enterprise", "ambiguous"]),
        (["--tier", "growth", "--rate-period", "1"], {},
         ["--rate-period 1 with --tier growth", "ambiguous", "--rate-limit"]),
        (["--config", "period-alone"], {}, ["[api] rate_period_s = 10", "default tier"]),
        # 7. config files that cannot be used
        (["--config", "a-directory"], {}, ["--config", "directory"]),
        (["--config", "not-utf8"], {}, ["not-utf8: the config file is not UTF-8", "0xf6"]),
        (["--config", "column-not-text"], {}, ["column-not-text: [columns] interview_id"]),
        (["--tier", "platinum"], {}, ["--tier", "platinum"]),
    ],
    ids=[
        "key-two-lines", "key-inner-space", "key-control-char",
        "key-zero-width", "key-not-ascii", "key-not-utf8", "key-file-directory",
        "key-file-missing", "env-key-line-break",
        "key-as-env-name-flag", "key-as-env-name-file",
        "rate-period-inf", "rate-period-nan", "max-duration-nan", "max-duration-inf",
        "file-timeout-inf", "file-period-nan", "file-retries-negative", "file-timeout-zero",
        "rate-limit-0", "concurrency-0", "max-rows-negative",
        "http-url-file", "http-url-env", "http-url-flag", "garbage-url-env", "broken-ipv6-url",
        "url-with-password", "top-level-key",
        "file-tier-and-period", "flag-tier-and-period", "period-with-default-tier",
        "config-directory", "config-not-utf8", "config-column-not-text", "unknown-tier",
    ],
)  # fmt: skip
def test_config_key_and_numbers_refused_before_sending(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, args: list[str],
    env: dict[str, str], words: list[str],
) -> None:  # fmt: skip
    keys = tmp_path_factory.mktemp("keys")
    _setup(tmp_path, keys)
    args = [arg.replace(KEYS, f"{keys}/") for arg in args]
    url_case = "--base-url" in args or "HINDSIGHT_BASE_URL" in env or "http-base-url" in args
    nowhere = [] if url_case else ["--base-url", NOWHERE]  # a case let through stays local
    result = run_cli("run", "in.csv", *nowhere, *args, cwd=tmp_path, env=cli_env(**env))
    line = assert_one_line(result, 2, *words)
    for secret in (API_KEY[:12], API_KEY[-8:], PASTED[-8:], "second-line"):
        assert secret not in line  # run_cli checks for the whole key; this, for parts of keys
    assert not (tmp_path / "ledgers").exists()


def _run_ok(tmp_path: Path, server: SandboxServer, *args: str, **env: str) -> dict[str, object]:
    """A run that must succeed: exit 0, one ledger line, no traceback; its summary."""
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    result = run_cli("run", "in.csv", "--base-url", server.base_url, "--state", "s.sqlite",
                     "--ledger", "l.csv", *args, cwd=tmp_path, env=cli_env(**env))  # fmt: skip
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "l.csv", 1)
    summary: dict[str, object] = json.loads((tmp_path / "l.csv.summary.json").read_text())
    return summary


@pytest.mark.parametrize(
    "key_text",
    [f"\ufeff{API_KEY}\r\n", f"  {API_KEY}\n\n", API_KEY],
    ids=["notepad-bom-crlf", "surrounding-blank", "bare"],
)
def test_key_file_with_bom_and_blank_lines_works(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxServer,
    key_text: str,
) -> None:  # fmt: skip
    key_file = tmp_path_factory.mktemp("keys") / "key.txt"
    key_file.write_text(key_text, encoding="utf-8", newline="")
    _run_ok(tmp_path, sandbox, "--api-key-file", str(key_file), HINDSIGHT_API_KEY="")
    assert sandbox.interview(1) is not None  # the sandbox accepts only API_KEY itself


def test_key_variable_with_bom_and_newline_works(tmp_path: Path, sandbox: SandboxServer) -> None:
    _run_ok(tmp_path, sandbox, HINDSIGHT_API_KEY=f"\ufeff{API_KEY}\n")


def test_one_request_reports_no_more_than_the_limit(tmp_path: Path, sandbox: SandboxServer) -> None:
    summary = _run_ok(tmp_path, sandbox, "--rate-limit", "20", "--rate-period", "1")
    assert summary["requests_sent"] == 1
    per_minute = summary["effective_requests_per_minute"]
    assert isinstance(per_minute, float) and 0 < per_minute <= 20 * 60


def test_base_url_with_trailing_slash_works(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    result = run_cli("run", "in.csv", "--base-url", sandbox.base_url + "/", "--state", "s.sqlite",
                     "--ledger", "l.csv", "--rate-limit", "20", "--rate-period", "1",
                     cwd=tmp_path)  # fmt: skip
    assert_no_traceback(result, 0)
    assert [line["status"] for line in assert_ledger_rows(tmp_path / "l.csv", 1)] == ["ok"]


@pytest.mark.parametrize(
    ("config", "args", "limit", "period"),
    [
        ("[api]\nrate_limit = 5\nrate_period_s = 1\n", ["--tier", "enterprise"], 1000, 60.0),
        ('[api]\ntier = "growth"\nrate_period_s = 1\n', ["--tier", "ENTERPRISE"], 1000, 60.0),
        ("\ufeff[api]\n", [], 300, 60.0),
        ("", [], 300, 60.0),
    ],
    ids=["flag-tier-clears-file-rate", "flag-tier-upper-case", "config-with-bom", "config-empty"],
)  # fmt: skip
def test_tier_and_config_files_that_work(
    tmp_path: Path, config: str, args: list[str], limit: int, period: float
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    (tmp_path / "sync.toml").write_text(config, encoding="utf-8")
    result = run_cli("run", "in.csv", "--config", "sync.toml", "--dry-run", "--state", "s.sqlite",
                     "--ledger", "l.csv", *args, cwd=tmp_path)  # fmt: skip
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "l.csv", 1)
    started = result.event("run_started")
    assert (started["limit"], started["rate_period_s"]) == (limit, period)


# -- paths, state, ledger and report -----------------------------------------------------------

# -- the server: outages, garbage, stops -------------------------------------------------------

# -- the run: one ledger a run, deadlines, recording -------------------------------------------


def _run(tmp_path: Path, server: SandboxServer, *args: str) -> Result:
    return run_cli("run", "in.csv", "--base-url", server.base_url, "--state", "state.sqlite",
                   "--rate-limit", "1000", "--rate-period", "1", *args, cwd=tmp_path)  # fmt: skip


def test_a_ledger_path_is_never_reused(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    assert _run(tmp_path, sandbox, "--ledger", "night.csv").code == 0
    before = (tmp_path / "night.csv").read_bytes()
    again = _run(tmp_path, sandbox, "--ledger", "night.csv", "--force")
    assert_one_line(again, 2, "night.csv already exists", "{run_id}")
    assert (tmp_path / "night.csv").read_bytes() == before  # not one line of a second run
    assert len(sandbox.requests()) == 2  # refused before anything was sent


def test_run_id_and_date_are_filled_in(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    first = _run(tmp_path, sandbox, "--ledger", "l/{date}.csv")
    second = _run(tmp_path, sandbox, "--ledger", "l/{date}.csv", "--force")
    third = _run(tmp_path, sandbox, "--ledger", "l/x-{run_id}.jsonl", "--force")
    assert (first.code, second.code, third.code) == (0, 0, 0)
    day = first.event("run_started")["timestamp"][:10]
    second_id = second.event("run_started")["run_id"]
    assert first.event("run_started")["ledger"] == f"l/{day}.csv"
    assert second.event("run_started")["ledger"] == f"l/{day}-{second_id}.csv"  # same day: own
    third_id = third.event("run_started")["run_id"]
    assert sorted(p.name for p in (tmp_path / "l").iterdir() if "summary" not in p.name) == sorted(
        [f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"]
    )
    for name in (f"{day}.csv", f"{day}-{second_id}.csv", f"x-{third_id}.jsonl"):
        assert_ledger_rows(tmp_path / "l" / name, 1)


def test_max_duration_reached_with_every_row_done_exits_0(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "1000", "--rate-period", "1", "--latency-ms", "700")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = _run(tmp_path, server, "--ledger", "l.csv", "--max-duration", "0.005")  # 0.3 s
    assert_no_traceback(result, 0)  # the deadline came while the only row was in flight
    assert [x["status"] for x in assert_ledger_rows(tmp_path / "l.csv", 1)] == ["ok"]


def test_a_ledger_that_cannot_be_written_mid_run_stops_the_run(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the ledger: the run stops with one line, it does not drop results."""
    from click.testing import CliRunner

    from sync_worker.cli import main
    from sync_worker.ledger import Ledger

    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"],
              [[i, f"N{i}"] for i in range(1, 201)])  # fmt: skip
    flushes = []

    def full_disk(self: Ledger) -> None:
        flushes.append(1)
        if len(flushes) > 2:  # the settled rows' flush and a first batch go through
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ledger, "flush", full_disk)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HINDSIGHT_API_KEY", API_KEY)
    result = CliRunner().invoke(main, [
        "run", "in.csv", "--base-url", sandbox.base_url, "--state", "state.sqlite",
        "--ledger", "l.csv", "--rate-limit", "100", "--rate-period", "1", "--log-format", "json",
    ])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error = [line for line in result.stderr.splitlines() if '"error"' in line]
    assert len(error) == 1 and "No space left on device" in error[0]
    assert "cannot write the results" in error[0]
    assert len(sandbox.requests()) < 200  # it stopped sending
