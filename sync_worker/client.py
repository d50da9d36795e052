"""One PATCH, from the first attempt to its outcome: pacing, classification, retries.

Every answer is classified in one place (`classify`): 2xx ok; 400/404 and other 4xx failed for
the row; 401/403 fatal for the run; 429 a shared pause; 5xx, timeouts and dropped connections
retried with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from sync_worker.clock import now_iso
from sync_worker.limiter import Pacer, Stopped, sleep_unless_stopped
from sync_worker.logs import get_logger, redact

MAX_RATE_LIMITED = 8  # 429s one request may meet before it fails
MAX_PAUSE_S = 300.0  # the longest 429 pause we honour


class Kind(Enum):
    OK = "ok"
    FAILED = "failed"  # this row cannot succeed: not retried
    FATAL = "fatal"  # nothing can succeed: stop the run
    RETRY = "retry"  # may pass later: backoff and retry
    RATE_LIMITED = "rate_limited"  # wait for the reset, then retry


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    code: str = ""
    message: str = ""
    api_shaped: bool = True  # the body was the API's error shape (proves we reach the API)


ACCEPTED = Verdict(Kind.OK)  # every 2xx: one object, not one a request


def classify(status: int, body: bytes) -> Verdict:
    """What an HTTP answer means for the row and the run."""
    if 200 <= status < 300:
        return ACCEPTED
    code, message, shaped = _api_error(status, body)
    if status in (401, 403):
        return Verdict(Kind.FATAL, code, message, shaped)
    if status == 429:
        return Verdict(Kind.RATE_LIMITED, "rate_limit_exceeded", message, shaped)
    if status >= 500 or status == 408:
        return Verdict(Kind.RETRY, "server_error", message, shaped)
    return Verdict(Kind.FAILED, code, message, shaped)


def _api_error(status: int, body: bytes) -> tuple[str, str, bool]:
    """The server's {"error": {"code", "message"}}, or a fallback naming the status."""
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error.get("message", "")), True
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return f"http_{status}", f"HTTP {status}" + (f": {text}" if text else ""), False


def reset_delay(headers: CIMultiDictProxy[str] | dict[str, str], now: float | None = None) -> float:
    """Seconds to wait after a 429: X-RateLimit-Reset (Unix time or seconds), else Retry-After."""
    now = time.time() if now is None else now
    value = headers.get("X-RateLimit-Reset")
    delay: float | None = None
    if value is not None:
        delay = _number(value)
        if delay is not None and delay > 1e9:
            delay -= now
    if delay is None and (retry_after := headers.get("Retry-After")) is not None:
        delay = _number(retry_after)
        if delay is None:
            delay = _http_date(retry_after, now)
    return min(max(delay if delay is not None else 1.0, 0.0), MAX_PAUSE_S)


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _http_date(value: str, now: float) -> float | None:
    try:
        return float(parsedate_to_datetime(value).timestamp()) - now
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Exponential backoff with jitter: half fixed, half random."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(slots=True)
class Outcome:
    status: str  # ok | failed | not_attempted
    http_status: int | None = None
    error_code: str = ""
    error_message: str = ""
    attempts: int = 0
    duration_ms: int = 0
    finished_at: str = ""
    fatal: bool = False  # the run must stop (auth refused)
    api_shaped: bool = True


@dataclass
class Counters:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0


class Client:
    """Sends one request to its outcome; shared by every worker of a run."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        pacer: Pacer,
        policy: RetryPolicy,
        stop: asyncio.Event,
    ) -> None:
        self._session = session
        base = URL(base_url.rstrip("/"))  # parsed and encoded once: each request's URL is built
        self._url_parts = (base.scheme, base.raw_authority, base.raw_path.rstrip("/"))
        self._pacer = pacer
        self._policy = policy
        self._stop = stop
        self.counters = Counters()
        self._log = get_logger()

    async def send(self, interview_id: int, body: bytes) -> Outcome:
        started = time.monotonic()
        outcome = await self._attempts(interview_id, body)
        outcome.duration_ms = round((time.monotonic() - started) * 1000)
        outcome.finished_at = now_iso()
        outcome.error_message = redact(outcome.error_message)
        return outcome

    def url(self, interview_id: int) -> URL:
        """Built from parts already encoded and a number: nothing to parse or encode again."""
        scheme, authority, path = self._url_parts
        return URL.build(scheme=scheme, authority=authority,
                         path=f"{path}/interviews/{interview_id}", encoded=True)  # fmt: skip

    async def _attempts(self, interview_id: int, body: bytes) -> Outcome:
        url = self.url(interview_id)
        failures = rate_limited = attempts = 0
        verdict, status = Verdict(Kind.RETRY, "interrupted", "stopped before a retry"), None
        while True:
            try:
                sent_at = await self._pacer.acquire()
            except Stopped:
                if attempts == 0:
                    return Outcome("not_attempted")
                return self._failed(status, verdict, attempts)
            attempts += 1
            self.counters.requests += 1
            status, verdict, wait = await self._attempt(url, body)
            if verdict.kind is Kind.OK:
                self._pacer.accepted(sent_at)
                return Outcome("ok", status, attempts=attempts)
            if verdict.kind is Kind.RATE_LIMITED:
                rate_limited += 1
                self._on_429(interview_id, wait)
                if rate_limited >= MAX_RATE_LIMITED or self._stop.is_set():
                    return self._failed(status, verdict, attempts)
                continue
            if status is not None:
                self._pacer.accepted(sent_at)
            if verdict.kind is not Kind.RETRY:
                return self._failed(status, verdict, attempts)
            failures += 1
            if failures > self._policy.max_retries or self._stop.is_set():
                return self._failed(status, verdict, attempts)
            delay = self._policy.delay(failures)
            self.counters.retries += 1
            self._log.warning(
                "retry", interview_id=interview_id, error_code=verdict.code,
                attempt=attempts, delay_s=round(delay, 2),
            )  # fmt: skip
            await sleep_unless_stopped(self._stop, delay)
            if self._stop.is_set():
                return self._failed(status, verdict, attempts)

    async def _attempt(self, url: URL, body: bytes) -> tuple[int | None, Verdict, float]:
        """One HTTP exchange: (status, verdict, 429 wait)."""
        try:
            async with self._session.patch(url, data=body) as response:
                payload = await response.read()
                wait = reset_delay(response.headers) if response.status == 429 else 0.0
                return response.status, classify(response.status, payload), wait
        except TimeoutError:
            return None, Verdict(Kind.RETRY, "timeout", "no answer within the timeout"), 0.0
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            message = redact(str(exc) or type(exc).__name__)
            return None, Verdict(Kind.RETRY, "connection_error", message), 0.0

    def _on_429(self, interview_id: int, wait: float) -> None:
        self.counters.rate_limited += 1
        learned = self._pacer.rate_limited(wait)
        self._log.info("rate_limit_pause", interview_id=interview_id, pause_s=round(wait, 3))
        if learned is not None:
            self._log.warning(
                "server_limit_learned",
                limit=learned.limit,
                window_s=round(learned.window_s, 3),
                requests_per_minute=round(learned.per_minute, 1),
                message="the server allows less than configured; pacing to its limit from now on",
            )

    @staticmethod
    def _failed(status: int | None, verdict: Verdict, attempts: int) -> Outcome:
        return Outcome(
            "failed",
            status,
            verdict.code,
            verdict.message,
            attempts,
            fatal=verdict.kind is Kind.FATAL,
            api_shaped=verdict.api_shaped,
        )
