"""A local stand-in for the Hindsight API (`sync-worker sandbox`), on 127.0.0.1 only.

Same shapes and errors as the real API (../shared/api): bearer-key check, 400 for an empty or
invalid body, 404 for unknown ids, a strict sliding-window limit answered with 429 and
X-RateLimit-Reset. It keeps each contact's notes in memory and shows them, with a record of
every request's arrival, under /_sandbox/. On request it misbehaves: latency, random 5xx,
dropped connections, answers that are not HTTP, a lower limit or longer window than the client
was told.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import random
import signal
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sync_worker.errors import ConfigError
from sync_worker.fields import CONTACT_FIELDS, CONTEXT, FIELDS, SENT_FIELDS, Kind

UNKNOWN_IDS_FROM = 900_000_000  # ids from here up do not exist (404)
NOT_HTTP = b"HTTP/1.1 2OO OK\r\n\r\n"  # what a garbled answer looks like on the wire


@dataclass
class SandboxConfig:
    limit: int = 300
    period_s: float = 60.0
    api_key: str | None = None  # None: any non-empty bearer key is accepted
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0  # each answer's delay is latency_ms +- up to this, uniformly
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    garbage_rate: float = 0.0  # share of answers that are not HTTP (raw bytes, then closed)
    reset_format: str = "unix"  # unix: absolute Unix seconds; seconds: seconds to wait
    whole_seconds: bool = False  # the reset rounded up to a whole second, as many servers send it
    seed: int | None = None
    links: dict[int, int] = field(default_factory=dict)  # interview id -> contact id (--contacts)


@dataclass
class Contact:
    contact_id: int
    email: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # its fields as last sent
    updates: int = 0  # contexts received

    @property
    def notes(self) -> Any:
        """The notes Paige reads: the context as last sent, text or a JSON object."""
        return self.values.get(CONTEXT)


@dataclass
class Interview:
    interview_id: int
    contact_id: int
    values: dict[str, Any] = field(default_factory=dict)  # its fields as last sent
    updates: int = 0
    created_at: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )


@dataclass
class Sandbox:
    config: SandboxConfig
    contacts: dict[int, Contact] = field(default_factory=dict)
    interviews: dict[int, Interview] = field(default_factory=dict)
    window: deque[float] = field(default_factory=deque)  # arrival times of accepted requests
    log: list[dict[str, Any]] = field(default_factory=list)  # every PATCH, in arrival order
    jitter: random.Random = field(default_factory=random.Random)  # apart: failures stay seeded
    random: random.Random = field(default_factory=random.Random)
    in_flight: int = 0  # PATCHes received and not yet answered
    next_id: int = 1_000_000
    links: dict[int, int] = field(default_factory=dict)  # --contacts, and POST /_sandbox/contacts

    def interview(self, interview_id: int) -> Interview | None:
        """Every id below UNKNOWN_IDS_FROM exists. Each is its own contact (whose id is the
        interview's) unless --contacts links it to another: {"7001": 7002} puts interview 7001
        on the contact of interview 7002, and two interviews linked to one new id share it."""
        if interview_id in self.interviews:
            return self.interviews[interview_id]
        if not 0 < interview_id < UNKNOWN_IDS_FROM:
            return None
        contact_id = self.links.get(interview_id, interview_id)
        contact = self.contacts.setdefault(contact_id, Contact(contact_id))
        return self.interviews.setdefault(interview_id, Interview(interview_id, contact.contact_id))

    def admit(self, now: float) -> float | None:
        """Sliding window: None if the request fits, else seconds until a slot frees."""
        span = self.config.period_s
        while self.window and now - self.window[0] >= span:
            self.window.popleft()
        if len(self.window) >= self.config.limit:
            return self.window[0] + span - now
        self.window.append(now)
        return None


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _sandbox(request: web.Request) -> Sandbox:
    sandbox: Sandbox = request.app[SANDBOX_KEY]
    return sandbox


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


def _authorised(request: web.Request, sandbox: Sandbox) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return False
    return sandbox.config.api_key is None or key.strip() == sandbox.config.api_key


async def patch_interview(request: web.Request) -> web.StreamResponse:
    sandbox = _sandbox(request)
    arrived, arrived_unix = time.monotonic(), time.time()
    entry: dict[str, Any] = {
        "t": arrived_unix,
        "id": request.match_info["id"],
        "user_agent": request.headers.get("User-Agent", ""),
    }
    sandbox.log.append(entry)
    sandbox.in_flight += 1
    entry["in_flight"] = sandbox.in_flight  # this one included: what the client keeps open
    try:
        response = await _patch(request, sandbox, arrived, entry)
    except ConnectionError:  # the client hung up before its body was read (a stop's cut-off)
        response = web.Response(status=499)  # nginx's "client closed request"; nobody reads it
    finally:
        sandbox.in_flight -= 1
    entry["status"] = response.status
    return response


async def _patch(
    request: web.Request, sandbox: Sandbox, arrived: float, entry: dict[str, Any]
) -> web.StreamResponse:
    config = sandbox.config
    refused = _refused(request, sandbox, arrived, entry)
    if refused is not None:
        return refused
    if sandbox.random.random() < config.drop_rate:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=499)
    # drawn only when asked for, so seeded runs without it meet the same failures as before
    if config.garbage_rate and sandbox.random.random() < config.garbage_rate:
        entry["not_http"] = True
        if request.transport is not None:
            request.transport.write(NOT_HTTP)
            request.transport.close()
        return web.Response(status=499)
    if config.latency_ms or config.latency_jitter_ms:
        await asyncio.sleep(_latency_s(sandbox))
    if sandbox.random.random() < config.fail_rate:
        return error(503, "server_error", "Service temporarily unavailable")
    return await _update(request, sandbox, entry)


def _refused(
    request: web.Request, sandbox: Sandbox, arrived: float, entry: dict[str, Any]
) -> web.Response | None:
    """The API's first word on any call: a 401 for a wrong key, a 429 when the window is full
    (GETs and PATCHes share it), else None."""
    if not _authorised(request, sandbox):
        return error(401, "unauthorized", "Invalid or missing API key")
    wait = sandbox.admit(arrived)
    if wait is None:
        return None
    reset, entry["reset_at"] = announced_reset(sandbox.config, wait, entry["t"])
    return _too_many(wait, reset)  # reset_at: what the 429 announces, for the tests to check


def _latency_s(sandbox: Sandbox) -> float:
    config = sandbox.config
    jitter = sandbox.jitter.uniform(-1.0, 1.0) * config.latency_jitter_ms
    return max(0.0, float(config.latency_ms) + jitter) / 1000


def announced_reset(config: SandboxConfig, wait: float, now_unix: float) -> tuple[str, float]:
    """X-RateLimit-Reset for a slot free in `wait` seconds, and that reset as Unix time.

    Whole seconds are rounded up (never announce a reset before the slot frees): an integer
    Unix time, or whole seconds to wait; either may be up to a second later than the truth."""
    unix = config.reset_format == "unix"
    if not config.whole_seconds:
        return (f"{now_unix + wait:.3f}" if unix else f"{wait:.3f}"), now_unix + wait
    if unix:
        at = math.ceil(now_unix + wait)
        return str(at), float(at)
    return str(math.ceil(wait)), now_unix + math.ceil(wait)


def _too_many(wait: float, reset: str) -> web.Response:
    return error(
        429,
        "rate_limit_exceeded",
        "Too many requests",
        **{"X-RateLimit-Reset": reset, "Retry-After": str(math.ceil(wait))},
    )


async def _update(request: web.Request, sandbox: Sandbox, entry: dict[str, Any]) -> web.Response:
    raw_id = request.match_info["id"]
    interview = sandbox.interview(int(raw_id)) if raw_id.isdigit() else None
    if interview is None:
        return error(404, "not_found", "Interview request not found")
    body, problem = await _read_body(request)
    if problem:
        return error(400, "bad_request", problem)
    entry["fields"] = sorted(name for name in SENT_FIELDS if name in body)  # what it carried
    contact = sandbox.contacts[interview.contact_id]
    for name in SENT_FIELDS:
        if name in body:
            (contact if name in CONTACT_FIELDS else interview).values[name] = body[name]
    contact.updates += CONTEXT in body
    interview.updates += 1
    return web.json_response({"interview_request_id": interview.interview_id})


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(
            await request.read() or b"null", parse_constant=_not_json, parse_float=_finite
        )
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _not_json(name: str) -> Any:
    """NaN and Infinity are Python's extension, not JSON: the real API refuses them."""
    raise ValueError(f"{name} is not JSON")


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):  # 1e400: Python makes it inf; JSON has no such number
        raise ValueError(f"{literal} is out of range")
    return number


async def _read_body(request: web.Request) -> tuple[dict[str, Any], str]:
    body = await _json_object(request)
    if body is None:
        return {}, "Invalid JSON"
    if not any(k in body for k in SENT_FIELDS):
        return {}, f"No fields provided: send {', '.join(SENT_FIELDS)}"
    for field_ in FIELDS:
        value = body.get(field_.column)
        if field_.column not in body or not field_.sent:
            continue
        if field_.kind is Kind.CONTEXT and not isinstance(value, str | dict):
            return {}, f"{field_.column} must be a string or an object"
        if field_.kind is Kind.TEXT and not isinstance(value, str):
            return {}, f"{field_.column} must be a string"
    return body, ""


async def create_interview(request: web.Request) -> web.Response:
    """POST /interviews: contacts are created or found by email, so interviews can share one."""
    sandbox = _sandbox(request)
    if not _authorised(request, sandbox):
        return error(401, "unauthorized", "Invalid or missing API key")
    body = await _json_object(request) or {}
    email = str(body.get("contact_email") or "").strip().lower()
    if not email:
        return error(400, "bad_request", "contact_email is required")
    contact = next((c for c in sandbox.contacts.values() if c.email == email), None)
    if contact is None:
        sandbox.next_id += 1
        contact = sandbox.contacts.setdefault(sandbox.next_id, Contact(sandbox.next_id, email))
    sandbox.next_id += 1
    interview = Interview(sandbox.next_id, contact.contact_id)
    sandbox.interviews[interview.interview_id] = interview
    for name in SENT_FIELDS:
        if name in body:
            (contact if name in CONTACT_FIELDS else interview).values[name] = body[name]
    body_out = {"interview_request_id": interview.interview_id, "contact_id": contact.contact_id}
    return web.json_response(body_out, status=201)


async def get_interview(request: web.Request) -> web.StreamResponse:
    """GET /interviews/{id}: as the API answers it, with the interview's `contact_id`; under
    the same key check and the same window as a PATCH, and logged with its method."""
    sandbox = _sandbox(request)
    entry: dict[str, Any] = {"t": time.time(), "id": request.match_info["id"], "method": "GET"}
    sandbox.log.append(entry)
    response = await _get(request, sandbox, entry)
    entry["status"] = response.status
    return response


async def _get(request: web.Request, sandbox: Sandbox, entry: dict[str, Any]) -> web.Response:
    refused = _refused(request, sandbox, time.monotonic(), entry)
    if refused is not None:
        return refused
    raw_id = request.match_info["id"]
    interview = sandbox.interview(int(raw_id)) if raw_id.isdigit() else None
    if interview is None:
        return error(404, "not_found", "Interview request not found")
    return web.json_response(
        {
            "interview_request_id": interview.interview_id,
            "contact_id": interview.contact_id,
            "deal_id": None,
            "survey_url": f"https://app.usehindsight.com/s/{interview.interview_id}",
            "status": "created",
            "objective": interview.values.get("objective"),
            "email_sent_at": None,
            "created_at": interview.created_at,
            "transcript": None,
        }
    )


def read_links(text: str, source: str) -> dict[int, int]:
    """A --contacts file: a JSON object {interview_id: contact_id}, both positive integers."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"sandbox: --contacts {source}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"sandbox: --contacts {source}: expected an object {{interview_id: contact_id}}"
        )
    links: dict[int, int] = {}
    for key, value in raw.items():
        if not (str(key).isdigit() and isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(
                f"sandbox: --contacts {source}: {key!r}: {value!r} is not "
                "interview_id: contact_id (positive integers)"
            )
        if not (0 < int(key) < UNKNOWN_IDS_FROM and value > 0):
            raise ConfigError(
                f"sandbox: --contacts {source}: {key}: {value}: ids must be positive, "
                f"interview ids below {UNKNOWN_IDS_FROM}"
            )
        links[int(key)] = value
    return links


async def show_interview(request: web.Request) -> web.Response:
    """GET /_sandbox/interviews/{id}: what the sandbox holds, notes included."""
    sandbox = _sandbox(request)
    raw_id = request.match_info["id"]
    interview = sandbox.interviews.get(int(raw_id)) if raw_id.isdigit() else None
    if (
        interview is None
        and raw_id.isdigit()
        and sandbox.links.get(int(raw_id), int(raw_id)) in sandbox.contacts
    ):  # its contact (its own, or the one it is linked to) was updated through another
        interview = sandbox.interview(int(raw_id))
    if interview is None:
        return error(404, "not_found", "No update received for this interview or its contact")
    contact = sandbox.contacts[interview.contact_id]
    notes = contact.notes
    values = {
        name: (contact if name in CONTACT_FIELDS else interview).values.get(name)
        for name in SENT_FIELDS
    }
    return web.json_response(
        {
            "interview_request_id": interview.interview_id,
            "contact_id": contact.contact_id,
            **values,
            "notes": notes if notes is None or isinstance(notes, str) else json.dumps(notes),
            "updates": interview.updates,
        }
    )


async def show_requests(request: web.Request) -> web.Response:
    """GET /_sandbox/requests: every PATCH with its arrival (Unix seconds) and answer."""
    return web.json_response({"requests": _sandbox(request).log})


async def set_latency(request: web.Request) -> web.Response:
    """POST /_sandbox/latency {"latency_ms": ..., "latency_jitter_ms": ...}: change it mid-run."""
    config = _sandbox(request).config
    body = await _json_object(request) or {}
    try:
        latency = float(body.get("latency_ms", config.latency_ms))
        jitter = float(body.get("latency_jitter_ms", config.latency_jitter_ms))
    except (TypeError, ValueError):
        return error(400, "bad_request", "latency_ms and latency_jitter_ms must be numbers")
    if not (math.isfinite(latency) and math.isfinite(jitter)) or min(latency, jitter) < 0:
        return error(400, "bad_request", "latency_ms and latency_jitter_ms must be 0 or more")
    config.latency_ms, config.latency_jitter_ms = latency, jitter
    return web.json_response({"latency_ms": latency, "latency_jitter_ms": jitter})


async def link_contacts(request: web.Request) -> web.Response:
    """POST /_sandbox/contacts {interview_id: contact_id}: link interviews not yet seen to a
    shared contact, as --contacts does at start (kept until the next reset)."""
    sandbox = _sandbox(request)
    try:
        links = read_links(await request.text(), "POST /_sandbox/contacts")
    except ConfigError as exc:
        return error(400, "bad_request", str(exc))
    taken = sorted(set(links) & set(sandbox.interviews))
    if taken:
        return error(400, "bad_request", f"interviews already in use: {taken}")
    sandbox.links.update(links)
    return web.json_response({"linked": len(links)})


async def reset(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    sandbox.links = dict(sandbox.config.links)
    sandbox.contacts.clear()
    sandbox.interviews.clear()
    sandbox.window.clear()
    sandbox.log.clear()
    return web.json_response({"reset": True})


def make_app(config: SandboxConfig) -> web.Application:
    app = web.Application()
    sandbox = Sandbox(config, links=dict(config.links))
    sandbox.random.seed(config.seed)
    sandbox.jitter.seed(config.seed)
    app[SANDBOX_KEY] = sandbox
    for prefix in ("/api/v1", ""):
        app.router.add_patch(prefix + "/interviews/{id}", patch_interview)
        app.router.add_post(prefix + "/interviews", create_interview)
        app.router.add_get(prefix + "/interviews/{id}", get_interview)
    app.router.add_get("/_sandbox/interviews/{id}", show_interview)
    app.router.add_get("/_sandbox/requests", show_requests)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/latency", set_latency)
    app.router.add_post("/_sandbox/contacts", link_contacts)
    return app


async def serve(config: SandboxConfig, port: int, announce: Any = print) -> None:
    """Serve until cancelled, SIGINT or SIGTERM (a normal end: it returns, after cleaning up);
    announces the base URL once listening. A port that cannot be had is a ConfigError."""
    runner = web.AppRunner(make_app(config), access_log=None, handle_signals=False)
    with _stop_on_signals() as stop:  # before the announcement: a stop may follow it at once
        await runner.setup()
        try:
            await _listen(runner, port)
            announce(f"sandbox listening on http://127.0.0.1:{runner.addresses[0][1]}/api/v1")
            await stop.wait()
        finally:
            await runner.cleanup()


async def _listen(runner: web.AppRunner, port: int) -> None:
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        problem = (
            "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        )
        raise ConfigError(
            f"sandbox: port {port} on 127.0.0.1 {problem}; stop what listens there, or pick "
            "another with --port (0: any free port)"
        ) from None


@contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, for as long as the block runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
