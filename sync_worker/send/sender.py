"""Send a plan: one aiohttp session, the first request alone, then a pool of workers.

Each worker takes a whole contact chain and sends its requests one after another, so no row's
context overwrites another's. The pool of workers follows the API's latency (pool.PoolSize):
new workers start when answers slow down, and workers beyond the need leave after their chain.
The run stops taking new requests when `stop` is set (a signal, --max-duration, a refused key,
the first answers all refusing the rows alike, or an outage longer than max_outage_s); requests
in flight then get a bounded time to finish (none after an outage: they are what hangs), and
those still waiting for their slot end at once.

First rejections (SPEC section 14): when the first `first_rejections` requests that got an
answer were all refused with one 400 or 404 code, the rest would be refused the same way (a key
of another organisation, a wrong id column): the run stops after those, not after every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # aiohttp is imported when a run sends, not by plan or validate
    import aiohttp

from sync_worker.clock import now_iso
from sync_worker.errors import FatalApiError
from sync_worker.logs import get_logger, redact
from sync_worker.plan.request_table import ChainQueue, Request
from sync_worker.send.client import (
    MAX_OUTAGE_S,
    Client,
    Counters,
    Outcome,
    RetryPolicy,
    answer_shown,
)
from sync_worker.send.limiter import Pacer
from sync_worker.send.outage import Outage
from sync_worker.send.pool import DEFAULT_MAX, PERCENTILE, PoolSize, Resize, needed
from sync_worker.version import __version__
from sync_worker.vocabulary import Status

STOP_GRACE_S = 10.0  # how long requests in flight may take to finish after a stop
RESIZE_EVERY_S = 0.25  # how often the pool looks at the latency
START_AT_ONCE = 16  # workers started in one go: each new task runs before any send's write
# task, so starting 250 at once delayed sends already granted their slot by ~40 ms, more than
# the window's margin (a 429 from a server with the very limit we keep)
START_EVERY_S = 0.02  # the pause between such goes while the pool grows
ResultSink = Callable[[Request, Outcome], None]
T = TypeVar("T")


@dataclass(frozen=True)
class SendConfig:
    base_url: str
    api_key: str
    limit: int
    period_s: float
    timeout_s: float
    policy: RetryPolicy
    concurrency: int | None = None  # fixed requests in flight; None: follow the latency
    max_concurrency: int = DEFAULT_MAX  # the most the pool grows to
    max_outage_s: float = MAX_OUTAGE_S  # how long the API may not answer before the run stops
    max_duration_s: float | None = None  # no request starts later than this after the start
    proxy: str | None = None  # None: straight to the API (see network.route)
    proxy_shown: str = ""  # the proxy and where it came from, for messages (Route.shown)
    tls: ssl.SSLContext | None = None  # None: the system's CA store
    first_rejections: int = 20  # that many first answers all refusing alike stop the run (0: off)
    sent_before: tuple[float, ...] = ()  # monotonic times of this run's earlier requests (GETs)


@dataclass
class SendReport:
    counters: Counters
    fatal: FatalApiError | None = None
    # interview ids whose request went out -> (when its send began, monotonic; tries that went out)
    started: dict[int, tuple[float, int]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    learned_per_minute: float | None = None
    workers_peak: int = 0  # the most workers that ran at once
    latency_p95_ms: int | None = None  # of the answers near the end of the run
    past_deadline: bool = False  # the send ended after --max-duration's deadline
    per_minute: float | None = None  # the rate answered requests left at (Counters.per_minute)


class Sender:
    def __init__(self, config: SendConfig, sink: ResultSink, stop: asyncio.Event) -> None:
        self._config = config
        self._sink = sink
        self._stop = stop
        self._log = get_logger()
        self._fatal: FatalApiError | None = None
        self._workers: set[asyncio.Task[Any]] = set()  # the probe, then the pool's workers
        self._running = 0  # workers sending or about to: the pool's size now
        self._peak = 0  # the most workers that ran at once
        self._ended = asyncio.Event()  # a worker ended: the pool may be done
        self._capped_logged = False
        self._grace = STOP_GRACE_S  # how long requests in flight may finish after a stop
        self._outage: Outage | None = None
        # first rejections: (http status, code) every answer so far refused with; the count
        self._refused_with: tuple[int, str] | None = None
        self._refused = 0
        self._judging = config.first_rejections > 0  # off at the first answer that differs

    async def run(self, queue: ChainQueue) -> SendReport:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        config = self._config
        pacer = Pacer(config.limit, config.period_s, self._stop)
        pacer.already_sent(config.sent_before)
        if config.max_duration_s is not None:
            pacer.deadline = begin + config.max_duration_s
        outage = self._outage = Outage(config.max_outage_s, self._stop, self._gave_up)
        size = PoolSize(config.concurrency, config.max_concurrency, initial=needed(0.0, 0.0))
        async with self._session(pacer, size.maximum) as session:
            client = Client(
                session,
                config.base_url,
                pacer,
                config.policy,
                self._stop,
                outage,
                size.latencies,
                config.proxy_shown,
            )
            client.on_backoff = self._ended.set  # the pool replaces a worker waiting it out
            watchers = [
                asyncio.create_task(self._cancel_after_stop()),
                asyncio.create_task(outage.watch()),
            ]
            try:
                if await self._first(client, queue):
                    outage.watching = True  # the pool's no-answers may mean the API is gone
                    await self._pool(client, queue, pacer, size)
                    self._log_pool_end(size, pacer.now(), queue)
            finally:
                for watcher in watchers:
                    watcher.cancel()
        return self._report(client, pacer, size, loop.time() - begin)

    def _report(self, client: Client, pacer: Pacer, size: PoolSize, elapsed: float) -> SendReport:
        now = pacer.now()
        p95 = size.recent(PERCENTILE, now)
        return SendReport(
            client.counters,
            self._fatal,
            client.started,
            elapsed,
            learned_per_minute=None if pacer.learned is None else pacer.learned.per_minute,
            workers_peak=self._peak,
            latency_p95_ms=None if p95 is None else round(p95 * 1000),
            past_deadline=now >= pacer.deadline,
            per_minute=client.counters.per_minute(),
        )

    def _session(self, pacer: Pacer, connections: int) -> aiohttp.ClientSession:
        import aiohttp  # here, not at the top: `plan` and `validate` never pay for it

        from sync_worker.send.connector import PacedConnector

        config = self._config
        tls = config.tls if config.tls is not None else True
        connector = PacedConnector(pacer, limit=connections, limit_per_host=connections, ssl=tls)
        return aiohttp.ClientSession(
            connector=connector,
            # decided once for the run (network.route), not per request; aiohttp sends the
            # credentials a proxy URL holds to the proxy itself (on the CONNECT for https)
            proxy=config.proxy,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            headers={
                "Authorization": f"Bearer {config.api_key}",
                "User-Agent": f"sync-worker/{__version__}",
                "Content-Type": "application/json",
            },
        )

    async def _first(self, client: Client, queue: ChainQueue) -> bool:
        """The probe, as a task the stop's grace can cut off like any worker."""
        probe = self._start(self._probe(client, queue))
        try:
            return await probe
        except asyncio.CancelledError:
            if not probe.cancelled():  # the run itself is being cancelled, not the probe
                raise
            return False

    async def _probe(self, client: Client, queue: ChainQueue) -> bool:
        """Send alone until one answer proves the key and base URL; False: stop the run."""
        while queue and not self._stop.is_set():
            chain = queue.popleft()
            request = chain.popleft()
            queue.appendleft(chain)
            outcome = await self._send(client, request)
            if self._stop.is_set():  # a signal, --max-duration, a refused key, an outage
                return False
            status = outcome.http_status
            if outcome.status == Status.OK:
                return True
            if status is not None and (status >= 500 or status == 408):
                continue  # a load balancer in trouble: the outage's count goes on, row by row
            if outcome.api_shaped and status is not None:
                return True  # the API's own error for this row: the API is there
            self._abort(_unreachable(self._config.base_url, outcome), outcome.error_code)
            return False
        return False

    async def _pool(self, client: Client, queue: ChainQueue, pacer: Pacer, size: PoolSize) -> None:
        """Start workers as the pool's size says, until the queue is done or the run stops."""
        while True:
            more = self._resize(client, queue, pacer, size)
            if not self._workers:
                return
            self._ended.clear()
            with contextlib.suppress(TimeoutError):  # a look every tick, or at once when done
                await asyncio.wait_for(
                    self._ended.wait(), START_EVERY_S if more else RESIZE_EVERY_S
                )

    def _resize(self, client: Client, queue: ChainQueue, pacer: Pacer, size: PoolSize) -> bool:
        """Follow the latency; start workers the pool lacks (never more than chains left), a
        few at a time. True if more are to start."""
        rate = pacer.rate_per_s()
        change = size.update(rate, pacer.now())
        if change is not None:
            self._log_resize(change)
        if size.capped and not self._capped_logged:
            self._log_capped(size, rate)
        if self._stop.is_set():
            return False
        # a worker waiting out a backoff holds no connection and sends nothing: the pool's size
        # counts those sending (Little's law holds for them); those waiting are bounded too
        sending = self._running - client.backing_off
        room = size.target + size.maximum - self._running
        lacking = min(size.target - sending, room, len(queue))
        for _ in range(min(lacking, START_AT_ONCE)):
            self._running += 1  # counted from its start, so the next look does not start it again
            self._start(self._worker(client, queue, size))
        self._peak = max(self._peak, self._running)
        return lacking > START_AT_ONCE

    def _start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work)
        self._workers.add(task)
        task.add_done_callback(self._worker_ended)
        return task

    def _worker_ended(self, task: asyncio.Task[Any]) -> None:
        """A worker left; one that died of a surprise is logged (its rows are still written:
        the run fills in every row without a line)."""
        self._workers.discard(task)
        self._ended.set()
        if not task.cancelled() and task.exception() is not None:
            error = redact(f"{type(task.exception()).__name__}: {task.exception()}")
            self._log.error("worker_error", error=error)

    async def _cancel_after_stop(self) -> None:
        """After a stop, requests in flight get STOP_GRACE_S to finish, then are cut off."""
        await self._stop.wait()
        if not self._workers:
            return
        _done, pending = await asyncio.wait(set(self._workers), timeout=self._grace)
        for task in pending:
            task.cancel()

    async def _worker(self, client: Client, queue: ChainQueue, size: PoolSize) -> None:
        """Send whole chains until none is left, the run stops, or the pool has shrunk."""
        try:
            while (
                queue
                and not self._stop.is_set()
                and self._running - client.backing_off <= size.target
            ):
                chain = queue.popleft()
                for request in chain:
                    if self._stop.is_set():
                        return
                    outcome = await self._send(client, request)
                    if outcome.fatal:
                        return
        finally:
            self._running -= 1

    def _log_resize(self, change: Resize) -> None:
        latency_ms = round(change.latency_s * 1000)
        per_minute = change.rate_per_s * 60
        self._log.info(
            "pool_resized",
            workers=change.workers,
            previous=change.previous,
            latency_p95_ms=latency_ms,
            requests_per_minute=round(per_minute, 1),
            message=f"up to {change.workers} requests in flight: enough for {per_minute:g} a "
            f"minute at {latency_ms} ms an answer",
        )

    def _log_capped(self, size: PoolSize, rate_per_s: float) -> None:
        """Once a run: at the API's latency, the most requests in flight cannot reach the rate."""
        self._capped_logged = True
        latency_ms = round(size.latency * 1000)
        per_minute = rate_per_s * 60
        if size.fixed is not None:
            what, fix = f"concurrency {size.fixed}", "raise the concurrency, or leave it out"
        else:
            what, fix = f"max_concurrency {size.maximum}", "raise [api] max_concurrency"
        self._log.warning(
            "pool_at_max",
            workers=size.maximum,
            latency_p95_ms=latency_ms,
            needed=needed(rate_per_s, size.latency),
            message=f"the API answers in {latency_ms} ms: {what} requests in flight reach about "
            f"{size.maximum / size.latency * 60:.0f} a minute of the {per_minute:g} allowed "
            f"({fix})",
        )

    def _log_pool_end(self, size: PoolSize, now: float, queue: ChainQueue) -> None:
        p50 = size.recent(0.5, now)
        p95 = size.recent(PERCENTILE, now)
        self._log.info(
            "pool_summary",
            workers_peak=self._peak,
            fixed=size.fixed is not None,
            latency_p50_ms=None if p50 is None else round(p50 * 1000),
            latency_p95_ms=None if p95 is None else round(p95 * 1000),
            longest_chain=queue.longest,
        )

    async def _send(self, client: Client, request: Request) -> Outcome:
        try:
            outcome = await client.send(request.interview_id, request.body_json)
        except Exception as exc:  # a surprise in one request must not kill the worker: record it
            outcome = self._unexpected(client, request, exc)
        self._sink(request, outcome)
        if self._judging and outcome.http_status is not None:
            self._judge_rejection(outcome)
        if outcome.fatal:
            message = (
                f"the API refused the key (HTTP {outcome.http_status} {outcome.error_code}): "
                "check the key in the variable or file you gave; the run stopped sending"
            )
            self._abort(message, outcome.error_code, outcome.http_status)
        return outcome

    def _unexpected(self, client: Client, request: Request, exc: Exception) -> Outcome:
        """`failed` whether or not it went out: where it broke is unknown, and a surprise must
        not let the run end 0."""
        message = redact(f"{type(exc).__name__}: {exc}")
        self._log.error("request_error", interview_id=request.interview_id, error=message)
        went_out = client.started.get(request.interview_id, (0.0, 0))[1]
        return Outcome(
            Status.FAILED,
            error_code="internal_error",
            error_message=message,
            attempts=went_out,
            finished_at=now_iso(),
        )

    def _judge_rejection(self, outcome: Outcome) -> None:
        """Count the first answers while each refuses its row with the same 400/404 code."""
        assert outcome.http_status is not None
        refused_with = (outcome.http_status, outcome.error_code)
        alike = self._refused_with is None or refused_with == self._refused_with
        if outcome.status != Status.FAILED or outcome.http_status not in (400, 404) or not alike:
            self._judging = False  # an answer of another kind: the rows are not all wrong
            return
        self._refused_with = refused_with
        self._refused += 1
        if self._refused >= self._config.first_rejections:
            self._judging = False
            status, code = refused_with
            message = (
                f"the first {self._refused} requests the API answered were all refused with "
                f"HTTP {status} {code} ({outcome.error_message}): the API key may belong to "
                "another organisation, or the id column may not hold Hindsight interview ids "
                "(check [columns] interview_id); the run stopped sending, rows not sent are "
                "not_attempted"
            )
            self._abort(message, "first_rejections", status)

    def _gave_up(self, down_s: float) -> None:
        last = self._outage.last_error if self._outage is not None else ""
        message = (
            f"the API at {self._config.base_url} did not answer for {down_s:.0f} s, or not as "
            f"the API (max_outage_s {self._config.max_outage_s:g}"
            + (f"; the last try: {last}" if last else "")
            + "): the run stopped sending; a re-run resumes where it stopped"
        )
        self._grace = 0.0  # what is still in flight is what hangs: no use waiting for it
        self._abort(message, "api_unreachable")

    def _abort(self, message: str, code: str, http_status: int | None = None) -> None:
        if self._fatal is None:
            self._fatal = FatalApiError(message, code=code, http_status=http_status)
            self._log.error("run_aborted", reason=message, error_code=code)
        self._stop.set()


def _unreachable(base_url: str, outcome: Outcome) -> str:
    """Why the first request proves no API at `base_url`, naming what came back."""
    if outcome.error_code in ("proxy_error", "certificate_error"):
        return f"cannot reach the API at {base_url}: {outcome.error_message}"
    if outcome.error_code == "bad_response" and outcome.http_status is None:
        return (
            f"{base_url} does not answer like the Hindsight API (the answer is not HTTP); "
            "check --base-url"
        )
    if outcome.http_status is None:
        return (
            f"cannot reach the API at {base_url} ({outcome.error_code}: {outcome.error_message}); "
            "check --base-url and the network, and whether this machine needs a proxy "
            "(HTTPS_PROXY, or [api] proxy in the config)"
        )
    return (
        f"{base_url} does not answer like the Hindsight API "
        f"({answer_shown(outcome.http_status, outcome.content_type)}, without the API's answer); "
        "check --base-url, and whether a proxy or another web server answers in its place"
    )
