from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    API_KEY,
    SandboxServer,
    assert_ledger_rows,
    assert_no_traceback,
    assert_one_line,
    cli_env,
    fast_rows,
    fast_run_args,
    run_cli,
    write_csv,
)

from sync_worker.errors import ConfigError
from sync_worker.settings.config import check_base_url, load_file, resolve


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sync.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("file_text", "environ", "overrides", "expected"),
    [
        ("", {}, {}, {"base_url": "https://app.usehindsight.com/api/v1", "limit": 300}),
        ('[api]\ntier = "enterprise"', {}, {}, {"limit": 1000}),
        ('[api]\ntier = "enterprise"', {}, {"tier": "essentials"}, {"limit": 60}),
        ("[api]\nrate_limit = 50", {}, {}, {"limit": 50}),
        ("[api]\nrate_limit = 50", {}, {"tier": "growth"}, {"limit": 300}),
        ("[api]\nrate_limit = 50", {}, {"rate_limit": 7}, {"limit": 7}),
        (
            '[api]\nbase_url = "https://file.example/api"',
            {"HINDSIGHT_BASE_URL": "https://env.example/api"},
            {},
            {"base_url": "https://env.example/api"},
        ),
        (
            '[api]\nbase_url = "https://file.example/api"',
            {"HINDSIGHT_BASE_URL": "https://env.example/api"},
            {"base_url": "http://127.0.0.1:9/api/v1"},
            {"base_url": "http://127.0.0.1:9/api/v1"},
        ),
        ("[merge]\nenabled = true", {}, {"merge": False}, {"merge": False}),
        ("[merge]\nenabled = true", {}, {"merge": None}, {"merge": True}),
    ],
    ids=[
        "defaults",
        "file-tier",
        "flag-tier-beats-file",
        "file-rate-limit",
        "flag-tier-beats-file-rate-limit",
        "flag-rate-limit",
        "env-beats-file",
        "flag-beats-env",
        "flag-no-merge-beats-file",
        "unset-flag-keeps-file",
    ],
)
def test_precedence(
    tmp_path: Path,
    file_text: str,
    environ: dict[str, str],
    overrides: dict[str, object],
    expected: dict[str, object],
) -> None:
    settings = resolve(write(tmp_path, file_text), overrides, environ)
    for name, value in expected.items():
        assert getattr(settings, name) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\nrate_limt = 5", "unknown key [api] rate_limt"),
        ("[apii]\nx = 1", "unknown section [apii]"),
        ("[api]\nrate_limit = -3", "[api] rate_limit must be a positive whole number, got -3"),
        ("[api]\nrate_limit = 2.5", "[api] rate_limit must be a positive whole number"),
        ('[api]\ntier = "platinum"', "[api] tier must be one of essentials, growth, enterprise"),
        ("[api]\nrate_period_s = 0", "[api] rate_period_s must be a finite number above 0"),
        ('[merge]\nenabled = "yes"', "[merge] enabled must be true or false"),
        ('[merge]\nappend_keys = "notes"', "[merge] append_keys must be a list of strings"),
        ('[input]\nencoding = "klingon"', "[input] encoding is not an encoding"),
        ('[input]\ndelimiter = ";;"', "[input] delimiter must be a single character"),
        ('[columns]\nfirst_name = "First"', "unknown key [columns] first_name"),
        ("[columns]\ninterview_id = 3", "[columns] interview_id must be a non-empty string"),
        ("[api\n", "not valid TOML"),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "negative",
        "fraction",
        "tier",
        "period",
        "bool",
        "list",
        "encoding",
        "delimiter",
        "unknown-canonical",
        "mapping-type",
        "toml-syntax",
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(tmp_path / "nope.toml", {}, {})


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://app.usehindsight.com/api/v1", True),
        ("http://127.0.0.1:8765/api/v1", True),
        ("http://localhost:8765", True),
        ("http://[::1]:8765", True),
        ("http://127.3.4.5:1", True),
        ("http://LOCALHOST./api/v1", True),
        ("http://localhost.evil.example/api/v1", False),
        ("http://app.usehindsight.com/api/v1", False),
        ("http://10.0.0.1/api", False),
        ("ftp://x/y", False),
    ],
    ids=[
        "https",
        "loopback-ip",
        "localhost",
        "ipv6-loopback",
        "loopback-range",
        "localhost-fully-qualified",
        "localhost-as-a-subdomain",
        "http-public",
        "http-private",
        "not-http",
    ],
)
def test_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    if ok:
        check_base_url(url)
    else:
        with pytest.raises(ConfigError):
            check_base_url(url)


@pytest.mark.parametrize(
    ("file_text", "overrides", "fixed", "maximum"),
    [
        ("", {}, None, 256),
        ("[api]\nmax_concurrency = 64", {}, None, 64),
        ("[api]\nconcurrency = 8", {}, 8, 256),
        ("[api]\nconcurrency = 8", {"concurrency": 3}, 3, 256),
    ],
    ids=["adaptive-default", "max-from-file", "fixed-from-file", "flag-beats-file"],
)
def test_concurrency_is_adaptive_unless_fixed(
    tmp_path: Path, file_text: str, overrides: dict[str, Any], fixed: int | None, maximum: int
) -> None:
    path = tmp_path / "sync.toml"
    path.write_text(file_text)
    settings = resolve(path, overrides, environ={})
    assert (settings.concurrency, settings.max_concurrency) == (fixed, maximum)


@pytest.mark.parametrize(
    ("file_text", "overrides", "limit", "period"),
    [
        ("[api]\nrate_limit = 5\nrate_period_s = 1", {"tier": "enterprise"}, 1000, 60.0),
        ('[api]\ntier = "enterprise"\nrate_limit = 5\nrate_period_s = 1', {}, 5, 1.0),
        ("[api]\nrate_limit = 5\nrate_period_s = 1", {"rate_limit": 7}, 7, 1.0),
        ('[api]\ntier = "growth"\nrate_period_s = 60', {}, 300, 60.0),
        ("", {"tier": "growth", "rate_limit": 20, "rate_period_s": 1.0}, 20, 1.0),
        ("[api]\nrate_period_s = 1", {"tier": "essentials"}, 60, 60.0),
    ],
    ids=[
        "flag-tier-clears-file-limit-and-period",
        "file-limit-beats-file-tier",
        "flag-limit-keeps-file-period",
        "tier-with-60s",
        "flag-limit-with-tier-and-period",
        "flag-tier-clears-file-period",
    ],
)
def test_a_tier_is_its_limit_per_minute(
    tmp_path: Path, file_text: str, overrides: dict[str, object], limit: int, period: float
) -> None:
    settings = resolve(write(tmp_path, file_text), overrides, {})
    assert (settings.limit, settings.rate_period_s) == (limit, period)


@pytest.mark.parametrize(
    ("file_text", "overrides", "words"),
    [
        (
            '[api]\ntier = "enterprise"\nrate_period_s = 1',
            {},
            [
                "sync.toml: [api] rate_period_s = 1 with",
                "sync.toml: [api] tier = enterprise",
                "1000 requests per 60 s",
                "[api] rate_limit",
            ],
        ),
        (
            "",
            {"tier": "growth", "rate_period_s": 1.0},
            ["--rate-period 1 with --tier growth", "--rate-limit N"],
        ),
        ("", {"rate_period_s": 2.0}, ["--rate-period 2 with the default tier growth"]),
        (
            "[api]\nrate_limit = 5\nrate_period_s = 1",
            {"tier": "growth", "rate_period_s": 1.0},
            ["--rate-period 1 with --tier growth"],
        ),
    ],
    ids=[
        "file-tier-and-period",
        "flag-tier-and-period",
        "flag-period-default-tier",
        "flag-tier-clears-file-limit-flag-period",
    ],
)
def test_a_tier_with_another_period_is_ambiguous(
    tmp_path: Path, file_text: str, overrides: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ConfigError, match="ambiguous") as error:
        resolve(write(tmp_path, file_text), overrides, {})
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    ("file_text", "environ", "overrides", "source"),
    [
        ('[api]\nbase_url = "http://x.example/api"', {}, {}, "sync.toml: [api] base_url"),
        (
            "",
            {"HINDSIGHT_BASE_URL": "http://x.example/api"},
            {},
            "environment variable HINDSIGHT_BASE_URL",
        ),
        ("", {}, {"base_url": "http://x.example/api"}, "--base-url"),
    ],
    ids=["file", "environment", "flag"],
)
def test_refused_base_url_names_its_source(
    tmp_path: Path,
    file_text: str,
    environ: dict[str, str],
    overrides: dict[str, object],
    source: str,
) -> None:
    with pytest.raises(ConfigError, match="plain http") as error:
        resolve(write(tmp_path, file_text), overrides, environ)
    assert str(error.value).startswith(f"{tmp_path / source}" if ": [" in source else source)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1", "not a valid URL"),
        ("https://x.example:port/api", "not a valid URL"),
        ("https://user:sk-secret@x.example/api", "user or password"),
        ("https://x.example/api?key=1", "query or fragment"),
        ("https://x.example/api v1", "space or control character"),
        ("garbage", "not an http(s) URL"),
    ],
    ids=["broken-ipv6", "bad-port", "password", "query", "space", "garbage"],
)
def test_bad_base_url_is_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        check_base_url(url, "--base-url")
    assert "sk-secret" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('tier = "growth"\n[api]\n', "key tier must be under [api]"),
        ("encoding = 'cp1252'", "key encoding must be under [input]"),
        ("colour = 1", "top-level key colour is not a setting"),
        ("[api]\ntimeout_s = inf", "[api] timeout_s must be a finite number above 0, got inf"),
        ("[api]\nrate_period_s = nan", "[api] rate_period_s must be a finite number above 0"),
        ("[api]\nbackoff_base_s = -inf", "[api] backoff_base_s must be a finite number above 0"),
    ],
    ids=["top-level-tier", "top-level-encoding", "top-level-unknown", "inf", "nan", "minus-inf"],
)
def test_file_keys_outside_sections_and_non_finite_numbers(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


@pytest.mark.parametrize(
    "name", ["sk-live-abc123", "1KEY", "MY KEY", ""], ids=["a-key", "digit-first", "space", "empty"]
)
def test_api_key_env_takes_a_name_and_never_echoes_the_value(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="--api-key-env takes the NAME") as error:
        resolve(write(tmp_path, ""), {"api_key_env": name}, {})
    path = write(tmp_path, f'[api]\napi_key_env = "{name}"')
    with pytest.raises(ConfigError, match=r"\[api\] api_key_env takes the NAME") as in_file:
        load_file(path)
    for message in (str(error.value), str(in_file.value).removeprefix(str(path))):
        assert "got" not in message and (not name or name not in message)


def test_config_file_with_bom_or_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sync.toml"
    path.write_bytes(b'\xef\xbb\xbf[api]\ntier = "enterprise"\n')
    assert load_file(path) == {"tier": "enterprise"}
    path.write_bytes(b'[api]\ntier = "gr\xf6wth"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xf6 at offset 16\); save it"):
        load_file(path)


def test_max_concurrency_must_be_a_positive_whole_number(tmp_path: Path) -> None:
    path = tmp_path / "sync.toml"
    path.write_text("[api]\nmax_concurrency = 0\n")
    with pytest.raises(ConfigError, match="max_concurrency"):
        resolve(path, {}, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 300.0), ("[api]\nmax_outage_s = 2", 2.0), ("[api]\nmax_outage_s = 0.5", 0.5)],
    ids=["default", "whole", "fraction"],
)
def test_max_outage_s(tmp_path: Path, text: str, expected: float) -> None:
    assert resolve(write(tmp_path, text), {}, {}).max_outage_s == expected


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "inf", "nan", '"60"', "true"],
    ids=["zero", "negative", "inf", "nan", "text", "bool"],
)
def test_max_outage_s_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[api\] max_outage_s must be a finite number above 0"):
        load_file(write(tmp_path, f"[api]\nmax_outage_s = {value}"))


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
        (
            ["--config", "tier-and-period"],
            {},
            ["tier-and-period: [api] rate_period_s = 1", "[api] tier = enterprise", "ambiguous"],
        ),
        (
            ["--tier", "growth", "--rate-period", "1"],
            {},
            ["--rate-period 1 with --tier growth", "ambiguous", "--rate-limit"],
        ),
        (["--config", "period-alone"], {}, ["[api] rate_period_s = 10", "default tier"]),
        # 7. config files that cannot be used
        (["--config", "a-directory"], {}, ["--config", "directory"]),
        (["--config", "not-utf8"], {}, ["not-utf8: the config file is not UTF-8", "0xf6"]),
        (["--config", "column-not-text"], {}, ["column-not-text: [columns] interview_id"]),
        (["--tier", "platinum"], {}, ["--tier", "platinum"]),
    ],
    ids=[
        "key-two-lines",
        "key-inner-space",
        "key-control-char",
        "key-zero-width",
        "key-not-ascii",
        "key-not-utf8",
        "key-file-directory",
        "key-file-missing",
        "env-key-line-break",
        "key-as-env-name-flag",
        "key-as-env-name-file",
        "rate-period-inf",
        "rate-period-nan",
        "max-duration-nan",
        "max-duration-inf",
        "file-timeout-inf",
        "file-period-nan",
        "file-retries-negative",
        "file-timeout-zero",
        "rate-limit-0",
        "concurrency-0",
        "max-rows-negative",
        "http-url-file",
        "http-url-env",
        "http-url-flag",
        "garbage-url-env",
        "broken-ipv6-url",
        "url-with-password",
        "top-level-key",
        "file-tier-and-period",
        "flag-tier-and-period",
        "period-with-default-tier",
        "config-directory",
        "config-not-utf8",
        "config-column-not-text",
        "unknown-tier",
    ],
)
def test_config_key_and_numbers_refused_before_sending(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    args: list[str],
    env: dict[str, str],
    words: list[str],
) -> None:
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


def test_base_url_with_trailing_slash_works(tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url + "/",
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        "--rate-limit",
        "20",
        "--rate-period",
        "1",
        cwd=tmp_path,
    )
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
)
def test_tier_and_config_files_that_work(
    tmp_path: Path, config: str, args: list[str], limit: int, period: float
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "objective"], [[1, "x"]])
    (tmp_path / "sync.toml").write_text(config, encoding="utf-8")
    result = run_cli(
        "run",
        "in.csv",
        "--config",
        "sync.toml",
        "--dry-run",
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        *args,
        cwd=tmp_path,
    )
    assert_no_traceback(result, 0)
    assert_ledger_rows(tmp_path / "l.csv", 1)
    started = result.event("run_started")
    assert (started["limit"], started["rate_period_s"]) == (limit, period)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("option", "0"),
        ("option", "nan"),
        ("option", "inf"),
        ("config", "0"),
        ("config", "inf"),
        ("config", "-5"),
        ("config", '"300"'),
    ],
    ids=[
        "option-zero",
        "option-nan",
        "option-inf",
        "config-zero",
        "config-inf",
        "config-negative",
        "config-text",
    ],
)
def test_max_outage_must_be_finite_and_positive(
    tmp_path: Path, sandbox: SandboxServer, where: str, value: str
) -> None:
    fast_rows(tmp_path, 3)
    if where == "option":
        result = run_cli(*fast_run_args(sandbox, "--max-outage", value), cwd=tmp_path)
        assert_no_traceback(result, 2)
        assert "--max-outage" in result.stderr
    else:
        (tmp_path / "fast.toml").write_text(f"[api]\nmax_outage_s = {value}\n")
        result = run_cli(*fast_run_args(sandbox), cwd=tmp_path)
        assert_one_line(result, 2, "fast.toml", "[api] max_outage_s", "finite number above 0")
    assert sandbox.requests() == []
