"""Company networks: a forward proxy from the environment or the config, and a CA bundle."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SandboxServer, cli_env, read_ledger, run_cli, write_csv

from sync_worker.errors import ConfigError
from sync_worker.settings.network import proxy_for, tls_context


@pytest.fixture
def proxy() -> Iterator[str]:
    """A forward proxy on 127.0.0.1 (tests/forward_proxy.py); yields its URL."""
    script = Path(__file__).parents[1] / "forward_proxy.py"
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = process.stdout.readline().split()[-1]
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=5)


def forwarded(proxy_url: str) -> list[str]:
    with urllib.request.urlopen(f"{proxy_url}/_proxy/seen", timeout=5) as answer:
        seen: list[str] = json.loads(answer.read())["seen"]
    return seen


def _run(tmp_path: Path, server: SandboxServer, ledger: str, env: dict[str, str]) -> int:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        server.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        ledger,
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        "--force",
        cwd=tmp_path,
        env=env,
    )
    assert [x["status"] for x in read_ledger(tmp_path / ledger)] == ["ok", "ok"], result.stderr
    return result.code


def test_the_environment_proxy_is_used_and_no_proxy_honoured(
    tmp_path: Path, sandbox: SandboxServer, proxy: str
) -> None:
    assert _run(tmp_path, sandbox, "one.csv", cli_env(HTTP_PROXY=proxy)) == 0
    assert forwarded(proxy) == [
        f"PATCH {sandbox.base_url}/interviews/1",
        f"PATCH {sandbox.base_url}/interviews/2",
    ]
    assert _run(tmp_path, sandbox, "two.csv", cli_env(HTTP_PROXY=proxy, NO_PROXY="127.0.0.1")) == 0
    assert len(forwarded(proxy)) == 2  # NO_PROXY: straight to the API


def test_the_config_proxy_wins_over_the_environment(
    tmp_path: Path, sandbox: SandboxServer, proxy: str
) -> None:
    (tmp_path / "sync.toml").write_text(f'[api]\nproxy = "{proxy}"\n')
    env = cli_env(HTTP_PROXY="http://127.0.0.1:9")  # nothing listens there
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = run_cli(
        "run",
        "in.csv",
        "--config",
        "sync.toml",
        "--base-url",
        sandbox.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        "--rate-limit",
        "1000",
        "--rate-period",
        "1",
        cwd=tmp_path,
        env=env,
    )
    assert result.code == 0, result.stderr
    assert len(forwarded(proxy)) == 1


def test_an_unreachable_api_says_a_proxy_may_be_needed(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        "http://127.0.0.1:9/api/v1",
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        cwd=tmp_path,
    )
    assert result.code == 3
    assert "HTTPS_PROXY" in result.event("run_aborted")["reason"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ('[api]\nproxy = "socks5://p:1080"\n', ["[api] proxy", "http://"]),
        ('[api]\nca_bundle = "missing.pem"\n', ["[api] ca_bundle missing.pem", "no such file"]),
        ('[api]\nca_bundle = "garbage.pem"\n', ["[api] ca_bundle garbage.pem", "PEM"]),
    ],
    ids=["proxy-not-http", "ca-bundle-missing", "ca-bundle-not-pem"],
)
def test_bad_proxy_or_ca_bundle_is_one_line_before_sending(
    tmp_path: Path, sandbox: SandboxServer, config: str, words: list[str]
) -> None:
    (tmp_path / "sync.toml").write_text(config)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    result = run_cli(
        "run",
        "in.csv",
        "--config",
        "sync.toml",
        "--base-url",
        sandbox.base_url,
        "--state",
        "s.sqlite",
        "--ledger",
        "l.csv",
        cwd=tmp_path,
    )
    assert result.code == 2 and "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert all(word in line for word in words), line
    assert sandbox.requests() == []


def test_a_ca_bundle_is_what_tls_trusts(tmp_path: Path) -> None:
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    if not system.is_file():
        pytest.skip("no system CA bundle on this machine to load")
    context = tls_context(str(system))
    assert context is not None and context.cert_store_stats()["x509_ca"] > 0
    assert tls_context(None) is None  # the system's store, as aiohttp uses it
    with pytest.raises(ConfigError, match="no such file"):
        tls_context(str(tmp_path / "none.pem"))


@pytest.mark.parametrize(
    ("base_url", "configured", "environ", "expected"),
    [
        ("https://api.x.com/v1", None, {}, None),
        ("https://api.x.com/v1", None, {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        (
            "https://api.x.com/v1",
            None,
            {"https_proxy": "http://p:1", "HTTP_PROXY": "http://q:2"},
            "http://p:1",
        ),
        ("http://127.0.0.1:8/v1", None, {"HTTP_PROXY": "http://p:1"}, "http://p:1"),
        ("https://api.x.com/v1", None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x.com"}, None),
        ("https://api.x.com/v1", None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".x.com"}, None),
        ("https://api.x.com/v1", None, {"HTTPS_PROXY": "http://p:1", "no_proxy": "a, *"}, None),
        (
            "https://api.x.com/v1",
            None,
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ax.com"},
            "http://p:1",
        ),
        (
            "http://127.0.0.1:8/v1",
            None,
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1:9"},
            "http://p:1",
        ),
        (
            "https://api.x.com/v1",
            "http://cfg:1",
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"},
            "http://cfg:1",
        ),
    ],
    ids=[
        "none",
        "https-proxy",
        "lower-case-first",
        "http-scheme",
        "no-proxy-domain",
        "no-proxy-dot-domain",
        "no-proxy-star",
        "not-a-suffix",
        "other-port",
        "config-wins",
    ],
)
def test_the_proxy_is_decided_once_as_curl_would(
    base_url: str, configured: str | None, environ: dict[str, str], expected: str | None
) -> None:
    assert proxy_for(base_url, configured, environ) == expected
