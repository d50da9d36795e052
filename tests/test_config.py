from __future__ import annotations

from pathlib import Path

import pytest

from sync_worker.config import Settings, check_base_url, load_file, resolve
from sync_worker.errors import ConfigError


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
        "defaults", "file-tier", "flag-tier-beats-file", "file-rate-limit",
        "flag-tier-beats-file-rate-limit", "flag-rate-limit", "env-beats-file",
        "flag-beats-env", "flag-no-merge-beats-file", "unset-flag-keeps-file",
    ],
)  # fmt: skip
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
        ("[api]\nrate_period_s = 0", "[api] rate_period_s must be a number above 0"),
        ('[merge]\nenabled = "yes"', "[merge] enabled must be true or false"),
        ('[merge]\nappend_keys = "notes"', "[merge] append_keys must be a list of strings"),
        ('[input]\nencoding = "klingon"', "[input] encoding is not an encoding"),
        ('[input]\ndelimiter = ";;"', "[input] delimiter must be a single character"),
        ('[columns]\nfirst_name = "First"', "unknown key [columns] first_name"),
        ("[columns]\ninterview_id = 3", "[columns] interview_id must be a non-empty string"),
        ("[api\n", "not valid TOML"),
    ],
    ids=[
        "unknown-key", "unknown-section", "negative", "fraction", "tier", "period", "bool",
        "list", "encoding", "delimiter", "unknown-canonical", "mapping-type", "toml-syntax",
    ],
)  # fmt: skip
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
    ids=["https", "loopback-ip", "localhost", "ipv6-loopback", "loopback-range", "http-public",
         "http-private", "not-http"],
)  # fmt: skip
def test_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    if ok:
        check_base_url(url)
    else:
        with pytest.raises(ConfigError):
            check_base_url(url)


@pytest.mark.parametrize(
    ("limit", "period", "workers"),
    [(60, 60.0, 2), (300, 60.0, 5), (1000, 60.0, 14), (20, 1.0, 16)],
    ids=["essentials", "growth", "enterprise", "test-window"],
)
def test_default_concurrency_reaches_limit_at_500ms(
    limit: int, period: float, workers: int
) -> None:
    settings = Settings(rate_limit=limit, rate_period_s=period)
    assert settings.workers == workers
    assert settings.workers / 0.5 >= limit / period  # in flight at 500 ms covers the rate
