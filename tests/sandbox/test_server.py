"""The sandbox as a real server: the API's shapes and errors, its strict window, misbehaviour."""

from __future__ import annotations

import http.client
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY, SandboxServer, assert_one_line, run_cli, start_sandbox


def call(
    server: SandboxServer,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = API_KEY,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.base_url + path, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.mark.parametrize(
    ("path", "body", "key", "raw", "status", "code"),
    [
        ("/interviews/4821", {"objective": "x"}, API_KEY, None, 200, None),
        ("/interviews/4821", {"objective": "x"}, None, None, 401, "unauthorized"),
        ("/interviews/4821", {"objective": "x"}, "wrong", None, 401, "unauthorized"),
        ("/interviews/4821", {}, API_KEY, None, 400, "bad_request"),
        ("/interviews/4821", None, API_KEY, b"{not json", 400, "bad_request"),
        ("/interviews/4821", {"contact_context": 5}, API_KEY, None, 400, "bad_request"),
        ("/interviews/900000001", {"objective": "x"}, API_KEY, None, 404, "not_found"),
        ("/interviews/abc", {"objective": "x"}, API_KEY, None, 404, "not_found"),
    ],
    ids=[
        "ok",
        "no-key",
        "wrong-key",
        "empty-body",
        "invalid-json",
        "bad-context-type",
        "unknown-id",
        "non-integer-id",
    ],
)
def test_api_shapes_and_errors(
    sandbox: SandboxServer,
    path: str,
    body: Any,
    key: str | None,
    raw: bytes | None,
    status: int,
    code: str | None,
) -> None:
    got_status, payload, _headers = call(sandbox, "PATCH", path, body, key, raw)
    assert got_status == status
    if code is None:
        assert payload == {"interview_request_id": 4821}
    else:
        assert payload["error"]["code"] == code and payload["error"]["message"]


def test_keeps_notes_per_contact(sandbox: SandboxServer) -> None:
    _s, first, _h = call(sandbox, "POST", "/interviews", {"contact_email": "ana@x.com"})
    _s, second, _h = call(sandbox, "POST", "/interviews", {"contact_email": "ANA@x.com"})
    assert first["contact_id"] == second["contact_id"]
    context = {"title": "CTO", "evaluation_notes": "POC done"}
    call(
        sandbox,
        "PATCH",
        f"/interviews/{first['interview_request_id']}",
        {"contact_context": context},
    )
    shown = sandbox.interview(second["interview_request_id"])
    assert shown is not None and shown["contact_context"] == context  # one notes field
    assert json.loads(shown["notes"]) == context


@pytest.mark.parametrize("reset_format", ["unix", "seconds"])
@pytest.mark.timing
def test_strict_window_answers_429_with_reset(
    sandbox_factory: Callable[..., SandboxServer], reset_format: str
) -> None:
    server = sandbox_factory(
        "--rate-limit", "3", "--rate-period", "2", "--reset-format", reset_format
    )
    statuses = [call(server, "PATCH", "/interviews/1", {"objective": "x"})[0] for _ in range(3)]
    status, payload, headers = call(server, "PATCH", "/interviews/1", {"objective": "x"})
    assert statuses == [200, 200, 200] and status == 429
    assert payload["error"]["code"] == "rate_limit_exceeded"
    reset = float(headers["X-RateLimit-Reset"])
    wait = reset - time.time() if reset_format == "unix" else reset
    assert 1.0 < wait <= 2.0
    assert int(headers["Retry-After"]) == 2
    assert [r["status"] for r in server.requests()] == [200, 200, 200, 429]


@pytest.mark.parametrize("reset_format", ["unix", "seconds"])
@pytest.mark.timing
def test_whole_second_reset_is_rounded_up(
    sandbox_factory: Callable[..., SandboxServer], reset_format: str
) -> None:
    server = sandbox_factory(
        "--rate-limit",
        "1",
        "--rate-period",
        "1.5",
        "--reset-format",
        reset_format,
        "--whole-second-reset",
    )
    call(server, "PATCH", "/interviews/1", {"objective": "x"})
    _status, _payload, headers = call(server, "PATCH", "/interviews/1", {"objective": "x"})
    first, refused = server.requests()
    announced = int(headers["X-RateLimit-Reset"])  # a whole number
    free_at = first["t"] + 1.5
    assert refused["reset_at"] == (
        announced if reset_format == "unix" else refused["t"] + announced
    )
    assert free_at <= refused["reset_at"] < free_at + 1.0  # never early, under a second late


def test_misbehaves_on_request(sandbox_factory: Callable[..., SandboxServer]) -> None:
    failing = sandbox_factory("--fail-rate", "1")
    assert call(failing, "PATCH", "/interviews/1", {"objective": "x"})[0] == 503
    dropping = sandbox_factory("--drop-rate", "1")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        call(dropping, "PATCH", "/interviews/1", {"objective": "x"})
    slow = sandbox_factory("--latency-ms", "300")
    started = time.monotonic()
    assert call(slow, "PATCH", "/interviews/1", {"objective": "x"})[0] == 200
    assert time.monotonic() - started >= 0.3


def test_answers_that_are_not_http_on_request(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    import socket
    from urllib.parse import urlsplit

    from sync_worker.sandbox.server import NOT_HTTP

    garbling = sandbox_factory("--garbage-rate", "1")
    address = urlsplit(garbling.root)
    body = b'{"objective": "x"}'
    request = (
        f"PATCH /api/v1/interviews/1 HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(4096):  # the sandbox closes after the garbage
            received += chunk
    assert received == NOT_HTTP
    assert [r.get("not_http") for r in garbling.requests()] == [True]


def admin(server: SandboxServer, method: str, path: str, body: Any = None) -> Any:
    """A call to the sandbox's own /_sandbox/ routes (beside the API, not under /api/v1)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.root + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_get_interview_answers_as_the_api_with_its_contact(sandbox: SandboxServer) -> None:
    status, body, _h = call(sandbox, "GET", "/interviews/4821")
    assert status == 200
    assert body["interview_request_id"] == 4821 and body["contact_id"] == 4821
    assert set(body) >= {"deal_id", "survey_url", "status", "objective", "created_at"}
    assert "contact_context" not in body and "notes" not in body  # the API never reads notes back
    assert call(sandbox, "GET", "/interviews/4821", key=None)[0] == 401
    assert call(sandbox, "GET", "/interviews/900000001")[:2] == (
        404,
        {"error": {"code": "not_found", "message": "Interview request not found"}},
    )
    gets = [r for r in sandbox.requests() if r.get("method") == "GET"]
    assert [r["status"] for r in gets] == [200, 401, 404]


def test_get_interview_is_paced_under_the_same_window(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory("--rate-limit", "2", "--rate-period", "30")
    assert call(server, "PATCH", "/interviews/1", {"objective": "x"})[0] == 200
    assert call(server, "GET", "/interviews/1")[0] == 200
    status, body, headers = call(server, "GET", "/interviews/2")
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    assert "X-RateLimit-Reset" in headers


def test_linked_interviews_share_one_contact_and_its_notes(sandbox: SandboxServer) -> None:
    assert admin(sandbox, "POST", "/_sandbox/contacts", {"502": 501, "503": 501})[0] == 200
    assert call(sandbox, "PATCH", "/interviews/502", {"contact_context": "Jane"})[0] == 200
    assert call(sandbox, "PATCH", "/interviews/503", {"objective": "renewal"})[0] == 200
    assert call(sandbox, "GET", "/interviews/503")[1]["contact_id"] == 501
    assert admin(sandbox, "GET", "/_sandbox/interviews/503")[1]["notes"] == "Jane"
    # 501 itself was never sent, but its contact was updated through 502
    assert admin(sandbox, "GET", "/_sandbox/interviews/501")[1]["contact_context"] == "Jane"
    assert call(sandbox, "GET", "/interviews/504")[1]["contact_id"] == 504
    status, body = admin(sandbox, "POST", "/_sandbox/contacts", {"502": 9})
    assert (status, "already in use" in body["error"]["message"]) == (400, True)


def test_contacts_file_links_interviews_at_start(
    sandbox_factory: Callable[..., SandboxServer], tmp_path: Any
) -> None:
    links = tmp_path / "contacts.json"
    links.write_text('{"7001": 7002}')
    server = sandbox_factory("--contacts", str(links))
    assert call(server, "PATCH", "/interviews/7002", {"contact_context": "Q"})[0] == 200
    assert call(server, "GET", "/interviews/7001")[1]["contact_id"] == 7002
    assert admin(server, "GET", "/_sandbox/interviews/7001")[1]["notes"] == "Q"
    admin(server, "POST", "/_sandbox/reset")
    assert call(server, "GET", "/interviews/7001")[1]["contact_id"] == 7002  # the file's links stay


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "expected an object"),
        ("{not json", "not JSON"),
        ('{"abc": 1}', "is not interview_id: contact_id"),
        ('{"5": "x"}', "is not interview_id: contact_id"),
        ('{"5": 0}', "ids must be positive"),
    ],
    ids=["a-list", "not-json", "id-not-digits", "contact-not-int", "contact-zero"],
)
def test_contacts_file_errors_are_one_line(tmp_path: Any, text: str, expected: str) -> None:
    from click.testing import CliRunner

    from sync_worker.cli import main

    links = tmp_path / "contacts.json"
    links.write_text(text)
    result = CliRunner().invoke(main, ["sandbox", "--port", "0", "--contacts", str(links)])
    assert result.exit_code == 2
    assert expected in result.output and str(links) in result.output
    assert "Traceback" not in result.output


def test_sandbox_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    first = start_sandbox()
    try:
        port = first.root.rsplit(":", 1)[1]
        result = run_cli("sandbox", "--port", port, cwd=tmp_path, timeout=20)
        assert_one_line(result, 2, f"port {port}", "in use", "--port")
    finally:
        first.stop()


def test_sandbox_stopped_by_sigint_or_sigterm_exits_0() -> None:
    """Stopping it is its normal end (SIGTERM exited 1 through aiohttp's GracefulExit)."""
    servers = {sig: start_sandbox() for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, server in servers.items():
        server.process.send_signal(sig)
    for sig, server in servers.items():
        _out, err = server.process.communicate(timeout=10)
        assert server.process.returncode == 0, (sig.name, err)
        assert "Traceback" not in err
