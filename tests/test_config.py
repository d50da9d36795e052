from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

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
