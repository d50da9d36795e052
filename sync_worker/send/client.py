"""One PATCH, from the first attempt to its outcome: pacing, classification, retries.

Every answer is classified in one place (`classify`): a 2xx that confirms the interview
(`{"interview_request_id": <id>}`) ok, any other 2xx `bad_response` (a catch-all web server or a
proxy's block page answers 200 too, and a row taken as ok is never sent again): failed when it
is JSON about another interview, retried when it is not JSON (a page in the API's place; the
first request, alone, fails at once: no API has answered yet); 400/404 and
other 4xx failed for the row; 401/403 fatal for the run; 429 a shared pause; 5xx and answers
that are not HTTP retried with exponential backoff and jitter (or the server's Retry-After). No
answer at all (connection refused or dropped, timeout) is retried the same way, unless several
in a row show the API is gone; 5xx and answers that are not the API's, many in a row (or every
one from the start), show the same of a load balancer or proxy in the API's place: then the run
waits the outage out (`Outage`) and the row is not charged for it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import TYPE_CHECKING

from yarl import URL

if TYPE_CHECKING:  # aiohttp is imported when a run sends, not by plan or validate
    import aiohttp

from sync_worker.clock import now_iso
from sync_worker.logs import get_logger, redact
from sync_worker.send.limiter import SLOT, Pacer, Stopped, sleep_unless_stopped
from sync_worker.send.outage import Outage
from sync_worker.send.pool import Latencies
from sync_worker.vocabulary import Status

MAX_RATE_LIMITED = 8  # 429s one request may meet before it fails
MAX_PAUSE_S = 300.0  # the longest 429 pause (or 5xx Retry-After) we honour
MAX_OUTAGE_S = 300.0  # how long the API may not answer at all before the run gives up
RETRIES_LOGGED = 5  # retries logged one line each; the rest of a run's are counted


class Kind(Enum):
    OK = "ok"
    FAILED = "failed"  # this row cannot succeed: not retried
    FATAL = "fatal"  # nothing can succeed: stop the run
    RETRY = "retry"  # may pass later: backoff and retry
    RATE_LIMITED = "rate_limited"  # wait for the reset, then retry
    NO_ANSWER = "no_answer"  # no answer at all: retry, or wait out the API's outage


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    code: str = ""
    message: str = ""
    api_shaped: bool = True  # the body was the API's error shape (proves we reach the API)
    sent: bool = True  # the request may have reached the server (False: no connection opened)
    healthy: bool = True  # False: a 5xx, or an answer not the API's (counts towards an outage)
    content_type: str = ""  # of an answer not the API's, for the message naming it


ACCEPTED = Verdict(Kind.OK)  # every 2xx: one object, not one a request
NOTHING_SENT = Verdict(Kind.RETRY)  # a row's verdict before its first attempt


def classify(
    status: int, body: bytes, interview_id: int | None = None, content_type: str = ""
) -> Verdict:
    """What an HTTP answer means for the row and the run. A 2xx is ok only when it confirms
    `interview_id` (None: any 2xx, for callers that judged the body already)."""
    if 200 <= status < 300:
        if interview_id is None or confirms(body, interview_id):
            return ACCEPTED
        return _not_the_api(status, body, content_type, interview_id)
    code, message, shaped = _api_error(status, body)
    if status in (401, 403):
        return Verdict(Kind.FATAL, code, message, shaped, content_type=content_type)
    if status == 429:
        return Verdict(Kind.RATE_LIMITED, "rate_limit_exceeded", message, shaped)
    if status >= 500 or status == 408:
        return Verdict(
            Kind.RETRY, "server_error", message, shaped, healthy=False, content_type=content_type
        )
    return Verdict(Kind.FAILED, code, message, shaped, healthy=shaped, content_type=content_type)


def confirms(body: bytes, interview_id: int) -> bool:
    """The API's 200: `{"interview_request_id": <the id>}` (other keys allowed)."""
    if body == b'{"interview_request_id": %d}' % interview_id:  # as the API writes it: no parse
        return True
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    found = answer.get("interview_request_id") if isinstance(answer, dict) else None
    return (type(found) is int and found == interview_id) or found == str(interview_id)


def _not_the_api(status: int, body: bytes, content_type: str, interview_id: int) -> Verdict:
    """A 2xx that does not confirm the interview. JSON naming another interview (or none) is
    an answer about this row: failed. Anything else (a captive portal's or a proxy's page)
    is not the API answering at all: retried, and counted towards an outage, so a page that
    stands in for the API a while mid-run fails no row the API never saw."""
    text = " ".join(body[:120].decode("utf-8", "replace").split())
    message = (
        f"HTTP {status} {content_type or 'without a content type'} is not the API's answer "
        f'{{"interview_request_id": {interview_id}}}' + (f": {text}" if text else "")
    )
    kind = Kind.FAILED if _json_object(body) else Kind.RETRY
    return Verdict(kind, "bad_response", message, False, healthy=False, content_type=content_type)


def _json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def answer_shown(status: int | None, content_type: str) -> str:
    """`HTTP 502, text/html`: what came back, for a message."""
    if status is None:
        return "the answer is not HTTP"
    return f"HTTP {status}, " + (content_type or "no content type")


def _api_error(status: int, body: bytes) -> tuple[str, str, bool]:
    """The server's {"error": {"code", "message"}}, or a fallback naming the status."""
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error.get("message", "")), True
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return f"http_{status}", f"HTTP {status}" + (f": {text}" if text else ""), False


Headers = Mapping[str, str]  # an answer's headers (aiohttp's CIMultiDictProxy is one)


def reset_delay(headers: Headers, now: float | None = None) -> float:
    """Seconds to wait after a 429: X-RateLimit-Reset (Unix time or seconds), else Retry-After."""
    now = time.time() if now is None else now
    value = headers.get("X-RateLimit-Reset")
    delay: float | None = None
    if value is not None:
        delay = _number(value)
        if delay is not None and delay > 1e9:
            delay -= now
    if delay is None:
        delay = retry_after(headers, now)
    return min(max(delay if delay is not None else 1.0, 0.0), MAX_PAUSE_S)


def retry_after(headers: Headers, now: float | None = None) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), or None if absent or unreadable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    delay = _number(value)
    if delay is None:
        delay = _http_date(value, time.time() if now is None else now)
    return delay


def wait_hint(status: int, headers: Headers) -> float | None:
    """The server's word on when to try again: a 429's reset, else any Retry-After (a 503's)."""
    return reset_delay(headers) if status == 429 else retry_after(headers)


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
    hint_cap_s: float = MAX_PAUSE_S  # the longest server hint (Retry-After) honoured

    def delay(self, failures: int, hint: float | None = None) -> float:
        """The server's hint when it gave one (capped), else exponential backoff with jitter:
        half fixed, half random."""
        if hint is not None:
            return min(max(hint, 0.0), self.hint_cap_s)
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(slots=True)
class Outcome:
    status: Status  # ok | failed (the server may have it) | not_attempted (it never reached it)
    http_status: int | None = None
    error_code: str = ""
    error_message: str = ""
    attempts: int = 0  # requests that went out (a connection that never opened is none)
    duration_ms: int = 0
    finished_at: str = ""
    fatal: bool = False  # the run must stop (auth refused)
    api_shaped: bool = True
    content_type: str = ""  # of an answer not the API's


@dataclass
class Counters:
    # requests that got an HTTP answer, whatever its status (429s included), and (added at the
    # end) those a stop cut off in flight
    requests: int = 0
    retries: int = 0  # requests sent again after anything but a 429
    rate_limited: int = 0
    connection_errors: int = 0  # tries without an HTTP answer: refused, dropped, timed out, garbage
    first_sent: float = math.inf  # loop time the first request that got an answer left
    last_sent: float = -math.inf  # ... and the last one

    def answered(self, sent_at: float) -> None:
        """A request that left at `sent_at` got an HTTP answer."""
        self.requests += 1
        self.first_sent = min(self.first_sent, sent_at)
        self.last_sent = max(self.last_sent, sent_at)

    def per_minute(self) -> float | None:
        """The rate the answered requests left at: n requests span n - 1 intervals, so a short
        run paced at the limit reads the limit (None: fewer than two, no rate to speak of)."""
        span = self.last_sent - self.first_sent
        if self.requests < 2 or not span > 0:
            return None
        return (self.requests - 1) / span * 60


class Client:
    """Sends one request to its outcome; shared by every worker of a run."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        pacer: Pacer,
        policy: RetryPolicy,
        stop: asyncio.Event,
        outage: Outage | None = None,
        latencies: Latencies | None = None,
        proxy_shown: str = "",
    ) -> None:
        self._session = session
        self._latencies = latencies  # each answer's latency, for the pool to follow
        base = URL(base_url.rstrip("/"))  # parsed and encoded once: each request's URL is built
        self._url_parts = (base.scheme, base.raw_authority, base.raw_path.rstrip("/"))
        self._pacer = pacer
        self._policy = policy
        self._stop = stop
        self._proxy_shown = proxy_shown  # `the proxy http://p:3128 (HTTPS_PROXY)`, for messages
        self.outage = outage or Outage(MAX_OUTAGE_S, stop)
        self.counters = Counters()
        self.backing_off = 0  # requests waiting out a backoff: their workers send nothing
        self._backoffs = 0  # backoffs begun this run (the first few are logged)
        self.on_backoff: Callable[[], None] | None = None  # told when one begins (the pool)
        # interview ids whose request went on the wire -> (when its send began, monotonic; its
        # tries that went out): one cut off in flight by a stop is recorded from these
        self.started: dict[int, tuple[float, int]] = {}
        self._log = get_logger()
        import aiohttp  # here, not at the top: `plan` and `validate` never pay for it

        # what each failure of an exchange means (looked up only when one is raised)
        self._untrusted = aiohttp.ClientConnectorCertificateError
        self._proxy_failed = (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)
        self._not_opened = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
        self._dropped = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
        self._not_http = aiohttp.ClientResponseError

    async def send(self, interview_id: int, body: bytes) -> Outcome:
        began = time.monotonic()
        outcome = await self._attempts(interview_id, body, began)
        outcome.duration_ms = round((time.monotonic() - began) * 1000)
        outcome.finished_at = now_iso()
        outcome.error_message = redact(outcome.error_message)
        return outcome

    def url(self, interview_id: int) -> URL:
        """Built from parts already encoded and a number: nothing to parse or encode again."""
        scheme, authority, path = self._url_parts
        return URL.build(
            scheme=scheme,
            authority=authority,
            path=f"{path}/interviews/{interview_id}",
            encoded=True,
        )

    async def _attempts(self, interview_id: int, body: bytes, began: float) -> Outcome:
        """Tries until an outcome. One loop over locals, longer than most: the hot path (one
        accepted try) allocates nothing but its Outcome."""
        url, outage, counters = self.url(interview_id), self.outage, self.counters
        failures = rate_limited = attempts = unanswered = 0  # attempts: tries that went out
        status: int | None = None
        verdict = NOTHING_SENT
        while True:
            probing = False
            try:
                if outage.down_since is not None:
                    failures -= unanswered  # the outage, not the row, left those unanswered
                    unanswered = 0
                    probing = await outage.turn()
                sent_at = await self._pacer.acquire()
            except Stopped:
                return self._cut_short(status, verdict, attempts)
            if not probing and outage.down_since is not None:
                continue  # the API went away while this waited for its slot: wait with the rest
            self.started[interview_id] = (began, attempts + 1)
            SLOT.set(sent_at)  # the connector moves it if the send leaves late
            outage.sending()
            status, verdict, hint = await self._attempt(url, body, interview_id)
            if status is not None:
                self._answered_after(sent_at)
            sent_at = SLOT.get()  # when it left: the time the server's window holds
            if verdict is ACCEPTED:
                counters.answered(sent_at)
                outage.answered()
                self._pacer.accepted(sent_at)
                return Outcome(Status.OK, status, attempts=attempts + 1)
            if verdict.kind is Kind.NO_ANSWER:
                attempts += self._unanswered(interview_id, verdict, attempts)
                if outage.no_answer(probing, verdict.sent, verdict.code):
                    counters.retries += 1
                    continue  # waited out with the whole run, not charged to the row
                if not verdict.sent and not outage.watching:  # the first request, alone
                    return self._cut_short(status, verdict, attempts)
                unanswered += 1
            else:
                attempts += 1
                if verdict.kind is Kind.RATE_LIMITED:
                    rate_limited += 1
                    outage.answered()
                    self._on_429(interview_id, hint or 0.0, sent_at)
                    if self._stop.is_set():
                        return _interrupted_in_pause(attempts)
                    if rate_limited >= MAX_RATE_LIMITED:
                        return self._failed(status, verdict, attempts)
                    continue
                self._answered(status, sent_at)
                if verdict.healthy:
                    outage.answered()
                elif verdict.code == "bad_response" and not outage.watching:
                    return self._failed(status, verdict, attempts)  # the first, alone: no API
                else:
                    shown = answer_shown(status, verdict.content_type)
                    if outage.bad_answer(probing, shown) and verdict.kind is Kind.RETRY:
                        counters.retries += 1
                        continue  # a load balancer in trouble: waited out with the whole run
                    unanswered += 1
                if verdict.kind is not Kind.RETRY:
                    return self._failed(status, verdict, attempts)
            failures += 1
            if failures > self._policy.max_retries or self._stop.is_set():
                return self._failed(status, verdict, attempts)
            await self._back_off(
                interview_id, verdict, attempts, self._policy.delay(failures, hint)
            )

    def _answered_after(self, slot: float) -> None:
        """An HTTP answer: how long the worker waited for it since its slot."""
        if self._latencies is not None:
            now = self._pacer.now()
            self._latencies.observe(now, now - slot)

    def _unanswered(self, interview_id: int, verdict: Verdict, attempts: int) -> int:
        """Count a try without an answer; 1 if it went out (it counts as an attempt), else 0."""
        self.counters.connection_errors += 1
        if verdict.sent:
            return 1
        if attempts == 0:  # no connection opened: the server has never seen this row
            del self.started[interview_id]
        else:
            self.started[interview_id] = (self.started[interview_id][0], attempts)
        return 0

    def _answered(self, status: int | None, sent_at: float) -> None:
        """Any answer but a 429: the server took the request into its window."""
        if status is None:  # an answer that is not HTTP
            self.counters.connection_errors += 1
            return
        self.counters.answered(sent_at)
        self._pacer.accepted(sent_at)

    async def _back_off(
        self, interview_id: int, verdict: Verdict, attempts: int, delay: float
    ) -> None:
        """Wait before a retry; the first RETRIES_LOGGED retries of a run are logged one by
        one, the others counted (SPEC section 10: a flaky API does not flood the terminal)."""
        self.counters.retries += 1
        self._backoffs += 1
        if self._backoffs <= RETRIES_LOGGED:
            self._log.warning(
                "retry",
                interview_id=interview_id,
                error_code=verdict.code,
                attempt=attempts,
                delay_s=round(delay, 2),
            )
        if self._backoffs == RETRIES_LOGGED:
            self._log.warning(
                "retries_counted",
                logged=RETRIES_LOGGED,
                message="more retries are counted, not logged one by one: the summary gives "
                "how many (retries), the ledger each row's attempts",
            )
        self.backing_off += 1
        if self.on_backoff is not None:
            self.on_backoff()
        try:
            await sleep_unless_stopped(self._stop, delay)
        finally:
            self.backing_off -= 1

    async def _attempt(
        self, url: URL, body: bytes, interview_id: int
    ) -> tuple[int | None, Verdict, float | None]:
        """One HTTP exchange: (status, verdict, the server's hint of when to try again)."""
        try:
            async with self._session.patch(url, data=body) as response:
                payload = await response.read()
                status = response.status
                if 200 <= status < 300 and confirms(payload, interview_id):
                    return status, ACCEPTED, None
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
                verdict = classify(status, payload, interview_id, content_type)
                return status, verdict, wait_hint(status, response.headers)
        except self._untrusted as exc:
            return None, self._untrusted_certificate(exc), None
        except self._proxy_failed as exc:
            return None, self._proxy_failure(exc), None
        except self._not_opened as exc:
            return None, _no_answer(exc, sent=False), None  # before the connection opened
        except TimeoutError:
            message = "no answer within the timeout"
            return None, Verdict(Kind.NO_ANSWER, "timeout", message, api_shaped=False), None
        except self._dropped as exc:
            return None, _no_answer(exc, sent=True), None
        except self._not_http as exc:  # what came back is not HTTP
            message = f"the answer is not HTTP: {exc.message}".splitlines()[0]
            return None, Verdict(Kind.RETRY, "bad_response", message, api_shaped=False), None

    def _proxy_failure(self, exc: Exception) -> Verdict:
        """The proxy, not the API, is what failed: say so, and which proxy it is."""
        status = getattr(exc, "status", None)
        what = (
            f"answered HTTP {status} when asked to connect to the API"
            if status
            else f"cannot be reached ({_reason(exc)})"
        )
        message = f"{self._proxy_shown or 'the proxy'} {what}: check that the proxy runs and "
        message += "lets this machine through, or the proxy setting"
        return Verdict(Kind.NO_ANSWER, "proxy_error", message, api_shaped=False, sent=False)

    @staticmethod
    def _untrusted_certificate(exc: Exception) -> Verdict:
        reason = getattr(getattr(exc, "certificate_error", None), "verify_message", None)
        message = (
            f"CERTIFICATE_VERIFY_FAILED: the server's TLS certificate is not trusted "
            f"({reason or _reason(exc)}); if a proxy or a company CA signs it, give that CA's "
            "PEM file as [api] ca_bundle in the config or in SSL_CERT_FILE"
        )
        return Verdict(Kind.NO_ANSWER, "certificate_error", message, api_shaped=False, sent=False)

    def _on_429(self, interview_id: int, wait: float, sent_at: float) -> None:
        """Pause everyone; the pacer learns from it and logs `server_limit_learned`."""
        self.counters.answered(sent_at)  # refused, but sent and answered like any other
        self.counters.rate_limited += 1
        self._pacer.rate_limited(wait, sent_at)
        self._log.info("rate_limit_pause", interview_id=interview_id, pause_s=round(wait, 3))

    @staticmethod
    def _cut_short(status: int | None, verdict: Verdict, attempts: int) -> Outcome:
        """The row ends before its outcome (a stop, an abort): `not_attempted` while nothing of
        it went out, for the server never saw it; else `failed` with what it last got."""
        if attempts == 0:
            return Outcome(Status.NOT_ATTEMPTED, None, verdict.code, verdict.message)
        if verdict.kind is Kind.RATE_LIMITED:
            return _interrupted_in_pause(attempts)
        return Client._failed(status, verdict, attempts)

    @staticmethod
    def _failed(status: int | None, verdict: Verdict, attempts: int) -> Outcome:
        return Outcome(
            Status.FAILED,
            status,
            verdict.code,
            verdict.message,
            attempts,
            fatal=verdict.kind is Kind.FATAL,
            api_shaped=verdict.api_shaped,
            content_type=verdict.content_type,
        )


def _interrupted_in_pause(attempts: int) -> Outcome:
    """Stopped while waiting out a 429: `not_attempted`, for the server refused every try of
    it (429) and the worker never tried again; not rate_limit_exceeded either (that is for
    MAX_RATE_LIMITED 429s)."""
    message = "stopped while waiting out a rate-limit pause; the server refused the last try (429)"
    return Outcome(Status.NOT_ATTEMPTED, 429, "interrupted", message, attempts)


def _no_answer(exc: Exception, sent: bool) -> Verdict:
    message = redact(str(exc) or type(exc).__name__)
    return Verdict(Kind.NO_ANSWER, "connection_error", message, api_shaped=False, sent=sent)


def _reason(exc: Exception) -> str:
    """The OS's or the library's words for a failure, on one line."""
    cause = getattr(exc, "os_error", None) or exc
    text = getattr(cause, "strerror", None) or str(cause) or type(exc).__name__
    return redact(" ".join(str(text).split()))
