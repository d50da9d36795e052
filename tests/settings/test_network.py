"""Company networks: a forward proxy from the environment or the config, and a CA bundle."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from helpers import API_KEY, SandboxServer, assert_no_key, cli_env, read_ledger, run_cli, write_csv
from local_server import serving

from sync_worker.cli.main import main
from sync_worker.errors import ConfigError
from sync_worker.settings.network import proxy_for, route, tls_context


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


def forwarded(proxy_url: str, what: str = "seen") -> list[str]:
    """What the proxy forwarded (`seen`), or the Proxy-Authorization of each (`auth`)."""
    with urllib.request.urlopen(f"{proxy_url}/_proxy/seen", timeout=5) as answer:
        seen: list[str] = json.loads(answer.read())[what]
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
    assert tls_context(None, environ={}) is None  # the system's store, as aiohttp uses it
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


@pytest.mark.parametrize(
    ("base_url", "environ", "expected"),
    [
        ("https://api.x.com/v1", {"HTTPS_PROXY": "127.0.0.1:3128"}, "http://127.0.0.1:3128"),
        ("https://api.x.com/v1", {"ALL_PROXY": "http://all:1"}, "http://all:1"),
        (
            "https://api.x.com/v1",
            {"all_proxy": "http://a:1", "HTTPS_PROXY": "http://p:2"},
            "http://p:2",
        ),
        ("http://10.1.2.3:8/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, None),
        (
            "http://10.1.2.3:8/v1",
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "11.0.0.0/8"},
            "http://p:1",
        ),
        ("http://127.0.0.1:8/v1", {"ALL_PROXY": "http://p:1", "no_proxy": "127.0.0.0/8"}, None),
        ("http://[::1]:8/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "::1/128"}, None),
        ("http://[::1]:8/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "[::1]:8"}, None),
        ("https://x.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".x.com"}, None),
        ("https://api.x.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.com x.com"}, None),
        (
            "https://api.x.com:8443/v1",
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x.com:8443"},
            None,
        ),
        (
            "https://api.x.com/v1",
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x.com:8443"},
            "http://p:1",
        ),
        ("https://api.x.com/v1", {"HTTPS_PROXY": " ", "ALL_PROXY": "http://a:1"}, "http://a:1"),
    ],
    ids=[
        "no-scheme-is-http",
        "all-proxy",
        "scheme-proxy-before-all-proxy",
        "no-proxy-cidr",
        "no-proxy-other-cidr",
        "no-proxy-cidr-for-all-proxy",
        "no-proxy-ipv6-cidr",
        "no-proxy-ipv6-port",
        "dot-domain-matches-the-domain-itself",
        "space-separated",
        "domain-with-port",
        "domain-with-another-port",
        "blank-is-unset",
    ],
)
def test_the_environment_proxy_as_curl_reads_it(
    base_url: str, environ: dict[str, str], expected: str | None
) -> None:
    assert proxy_for(base_url, None, environ) == expected


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "ALL_PROXY", "https_proxy"])
@pytest.mark.parametrize("scheme", ["socks5", "socks4", "socks5h"])
def test_a_socks_proxy_is_refused_naming_the_variable(name: str, scheme: str) -> None:
    with pytest.raises(ConfigError, match=f"the environment variable {name} is a SOCKS proxy"):
        proxy_for("https://api.x.com/v1", None, {name: f"{scheme}://p:1080"})
    assert (
        proxy_for("https://api.x.com/v1", None, {name: f"{scheme}://p:1", "NO_PROXY": "*"}) is None
    )


def test_route_names_the_proxy_without_its_password() -> None:
    way = route("https://api.x.com/v1", None, {"HTTPS_PROXY": "http://me:secret@p.corp:3128"})
    assert way.proxy == "http://me:secret@p.corp:3128"
    assert way.shown() == "the proxy http://p.corp:3128 (HTTPS_PROXY)"


def invoke_run(tmp_path: Path, base_url: str, env: dict[str, str], config: str = "") -> Any:
    """`sync-worker run` in-process; the result (its exit code, its stderr)."""
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    (tmp_path / "sync.toml").write_text(config)
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path / "in.csv"),
            "--config",
            str(tmp_path / "sync.toml"),
            "--base-url",
            base_url,
            "--state",
            str(tmp_path / "s.sqlite"),
            "--ledger",
            str(tmp_path / "l.csv"),
            "--log-format",
            "console",
        ],
        env={"HINDSIGHT_API_KEY": API_KEY, "HTTP_PROXY": None, "HTTPS_PROXY": None, **env},
    )
    assert "Traceback" not in result.stderr
    assert_no_key(result.stdout, result.stderr)
    return result


def test_a_proxy_without_a_scheme_is_used_as_http(
    tmp_path: Path, sandbox: SandboxServer, proxy: str
) -> None:
    address = proxy.removeprefix("http://")
    assert invoke_run(tmp_path, sandbox.base_url, {"HTTP_PROXY": address}).exit_code == 0
    assert len(forwarded(proxy)) == 2


def test_a_proxys_credentials_go_with_every_request(
    tmp_path: Path, sandbox: SandboxServer, proxy: str
) -> None:
    """The PATCHes, and the GETs that resolve contacts, carry the proxy URL's user and password
    to the proxy (base64 of `u:pw`), never in the clear or in a log."""
    (tmp_path / "sync.toml").write_text("[merge]\nresolve_contacts = true\n")
    with_user = proxy.replace("http://", "http://u:pw@")
    env = cli_env(HTTP_PROXY=with_user)
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    args = ["--base-url", sandbox.base_url, "--state", "s.sqlite", "--config", "sync.toml"]
    result = run_cli("run", "in.csv", *args, "--ledger", "l.csv", "--merge", cwd=tmp_path, env=env)
    assert result.code == 0, result.stderr
    methods = [line.split()[0] for line in forwarded(proxy)]
    assert sorted(methods) == ["GET", "GET", "PATCH", "PATCH"]
    assert forwarded(proxy, "auth") == ["Basic dTpwdw=="] * 4
    assert "pw@" not in result.stderr


def test_a_proxy_that_is_down_is_named(tmp_path: Path, sandbox: SandboxServer) -> None:
    port = _closed_port()
    result = invoke_run(tmp_path, sandbox.base_url, {"HTTP_PROXY": f"http://u:pw@127.0.0.1:{port}"})
    assert result.exit_code == 3
    assert f"the proxy http://127.0.0.1:{port} (HTTP_PROXY) cannot be reached" in result.stderr
    assert "pw" not in result.stderr.replace("pwd", "")
    assert sandbox.requests() == []
    assert {x["status"] for x in read_ledger(tmp_path / "l.csv")} == {"not_attempted"}


def test_a_socks_proxy_in_the_environment_stops_before_sending(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    result = invoke_run(tmp_path, sandbox.base_url, {"HTTP_PROXY": "socks5://127.0.0.1:1080"})
    assert result.exit_code == 2
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert "the environment variable HTTP_PROXY is a SOCKS proxy" in line
    assert sandbox.requests() == []


@pytest.mark.parametrize("what", ["missing", "unreadable"])
def test_a_ca_file_from_the_environment_that_cannot_be_read_is_exit_2(
    tmp_path: Path, sandbox: SandboxServer, what: str
) -> None:
    path = tmp_path / "ca.pem"
    if what == "unreadable":
        path.write_text("not a certificate\n")
    result = invoke_run(tmp_path, sandbox.base_url, {"SSL_CERT_FILE": str(path)})
    assert result.exit_code == 2
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert f"the environment variable SSL_CERT_FILE {path}" in line
    assert sandbox.requests() == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl on this machine to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _accept(request: web.Request) -> web.Response:
    return web.json_response({"interview_request_id": int(request.path.rsplit("/", 1)[-1])})


def test_an_untrusted_certificate_names_ca_bundle_and_ssl_cert_file(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with serving(_accept, tls) as server:
        untrusted = invoke_run(tmp_path, server.base_url, {})
        assert untrusted.exit_code == 3
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        assert "[api] ca_bundle" in untrusted.stderr and "SSL_CERT_FILE" in untrusted.stderr
        assert server.seen == []
        (tmp_path / "l.csv").unlink()
        trusted = invoke_run(tmp_path, server.base_url, {}, f'[api]\nca_bundle = "{cert}"\n')
        assert trusted.exit_code == 0, trusted.stderr
        (tmp_path / "l.csv").unlink()
        from_env = invoke_run(tmp_path, server.base_url, {"SSL_CERT_FILE": str(cert)})
        assert from_env.exit_code == 0, from_env.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("url", "same_as"),
    [
        ("https://app.usehindsight.com:443/api/v1", "https://app.usehindsight.com/api/v1"),
        ("HTTPS://APP.usehindsight.com/api/v1/", "https://app.usehindsight.com/api/v1"),
        ("https://app.usehindsight.com./api/v1", "https://app.usehindsight.com/api/v1"),
        ("HTTP://127.0.0.1:8765/api/v1", "http://127.0.0.1:8765/api/v1"),
        ("http://[::1]:80/api/v1", "http://[::1]/api/v1"),
        ("http://127.0.0.1:8765/API/v1", "http://127.0.0.1:8765/API/v1"),  # paths keep case
    ],
    ids=["default-port", "upper-case-and-slash", "trailing-dot", "upper-scheme", "ipv6", "path"],
)
def test_one_api_has_one_spelling(url: str, same_as: str) -> None:
    from sync_worker.settings.config import default_state
    from sync_worker.settings.network import canonical_url

    assert canonical_url(url) == same_as
    assert default_state(url) == default_state(same_as)


def test_a_state_knows_its_api_however_it_is_spelled(tmp_path: Path) -> None:
    from sync_worker.errors import ConfigError
    from sync_worker.store.state import State

    state = State.open(tmp_path / "s.sqlite")
    try:
        state.belongs_to("https://app.usehindsight.com/api/v1")
        state.belongs_to("HTTPS://App.Usehindsight.com:443/api/v1/")  # the same API
        with pytest.raises(ConfigError, match=r"belongs to the API at https://app\.usehindsight"):
            state.belongs_to("https://eu.usehindsight.com/api/v1")
    finally:
        state.close()
