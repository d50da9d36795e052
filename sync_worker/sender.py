"""Send a plan: one aiohttp session, the first request alone, then a pool of workers.

Each worker takes a whole contact chain and sends its requests one after another, so no row's
context overwrites another's. The run stops taking new requests when `stop` is set (a signal,
--max-duration, a refused key, or an outage longer than max_outage_s); requests in flight then
get a bounded time to finish, and those still waiting for their slot end at once.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yarl import URL

if TYPE_CHECKING:  # aiohttp is imported when a run sends, not by plan or validate
    import aiohttp

from sync_worker import __version__
from sync_worker.client import MAX_OUTAGE_S, Client, Counters, Outcome, RetryPolicy
from sync_worker.clock import now_iso
from sync_worker.errors import FatalApiError
from sync_worker.limiter import Pacer
from sync_worker.logs import get_logger, redact
from sync_worker.outage import Outage
from sync_worker.request_table import ChainQueue, Request

STOP_GRACE_S = 10.0  # how long requests in flight may take to finish after a stop
ResultSink = Callable[[Request, Outcome], None]


@dataclass(frozen=True)
class SendConfig:
    base_url: str
    api_key: str
    limit: int
    period_s: float
    workers: int
    timeout_s: float
    policy: RetryPolicy
    max_outage_s: float = MAX_OUTAGE_S  # how long the API may not answer before the run stops
    max_duration_s: float | None = None  # no request starts later than this after the start
    proxy: str | None = None  # None: straight to the API (see network.proxy_for)
    tls: ssl.SSLContext | None = None  # None: the system's CA store


@dataclass
class SendReport:
    counters: Counters
    fatal: FatalApiError | None = None
    started: set[int] = field(default_factory=set)  # interview ids whose request went out
    elapsed_s: float = 0.0
    learned_per_minute: float | None = None


class Sender:
    def __init__(self, config: SendConfig, sink: ResultSink, stop: asyncio.Event) -> None:
        self._config = config
        self._sink = sink
        self._stop = stop
        self._log = get_logger()
        self._fatal: FatalApiError | None = None

    async def run(self, queue: ChainQueue) -> SendReport:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        config = self._config
        pacer = Pacer(config.limit, config.period_s, self._stop)
        if config.max_duration_s is not None:
            pacer.deadline = begin + config.max_duration_s
        outage = Outage(config.max_outage_s, self._stop, self._gave_up)
        async with self._session() as session:
            client = Client(session, config.base_url, pacer, config.policy, self._stop, outage)
            if await self._probe(client, queue):
                outage.watching = True  # the pool's no-answers may mean the API is gone
                await self._pool(client, queue)
        report = SendReport(client.counters, self._fatal, client.started, loop.time() - begin)
        if pacer.learned is not None:
            report.learned_per_minute = pacer.learned.per_minute
        return report

    def _session(self) -> aiohttp.ClientSession:
        import aiohttp  # here, not at the top: `plan` and `validate` never pay for it

        config = self._config
        tls = config.tls if config.tls is not None else True
        connector = aiohttp.TCPConnector(limit=config.workers, limit_per_host=config.workers,
                                         ssl=tls)  # fmt: skip
        return aiohttp.ClientSession(
            connector=connector,
            proxy=config.proxy,  # decided once for the run (network.proxy_for), not per request
            proxy_auth=aiohttp.BasicAuth.from_url(URL(config.proxy)) if config.proxy else None,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            headers={
                "Authorization": f"Bearer {config.api_key}",
                "User-Agent": f"sync-worker/{__version__}",
                "Content-Type": "application/json",
            },
        )

    async def _probe(self, client: Client, queue: ChainQueue) -> bool:
        """Send alone until one answer proves the key and base URL; False: stop the run."""
        while queue and not self._stop.is_set():
            chain = queue.popleft()
            request = chain.popleft()
            queue.appendleft(chain)
            outcome = await self._send(client, request)
            if self._stop.is_set():  # a signal, --max-duration or a refused key: not unreachable
                return False
            if outcome.status == "ok" or (outcome.api_shaped and outcome.http_status is not None):
                return True
            if outcome.http_status is None or outcome.http_status == 404:
                self._abort(_unreachable(self._config.base_url, outcome), outcome.error_code)
                return False
        return False

    async def _pool(self, client: Client, queue: ChainQueue) -> None:
        count = min(self._config.workers, len(queue))
        tasks = [asyncio.create_task(self._worker(client, queue)) for _ in range(count)]
        watcher = asyncio.create_task(self._cancel_after_stop(tasks))
        await asyncio.gather(*tasks, return_exceptions=True)
        watcher.cancel()

    async def _cancel_after_stop(self, tasks: list[asyncio.Task[None]]) -> None:
        """After a stop, requests in flight get STOP_GRACE_S to finish, then are cut off."""
        await self._stop.wait()
        _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()

    async def _worker(self, client: Client, queue: ChainQueue) -> None:
        while queue and not self._stop.is_set():
            chain = queue.popleft()
            for request in chain:
                if self._stop.is_set():
                    return
                outcome = await self._send(client, request)
                if outcome.fatal:
                    return

    async def _send(self, client: Client, request: Request) -> Outcome:
        try:
            outcome = await client.send(request.interview_id, request.body_json)
        except Exception as exc:  # a surprise in one request must not kill the worker: record it
            outcome = self._unexpected(client, request, exc)
        self._sink(request, outcome)
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
        went_out = int(request.interview_id in client.started)
        return Outcome("failed", error_code="internal_error", error_message=message,
                       attempts=went_out, finished_at=now_iso())  # fmt: skip

    def _gave_up(self, down_s: float) -> None:
        message = (
            f"the API at {self._config.base_url} did not answer for {down_s:.0f} s "
            f"(max_outage_s {self._config.max_outage_s:g}): the run stopped sending; "
            "a re-run resumes where it stopped"
        )
        self._abort(message, "api_unreachable")

    def _abort(self, message: str, code: str, http_status: int | None = None) -> None:
        if self._fatal is None:
            self._fatal = FatalApiError(message, code=code, http_status=http_status)
            self._log.error("run_aborted", reason=message, error_code=code)
        self._stop.set()


def _unreachable(base_url: str, outcome: Outcome) -> str:
    if outcome.error_code == "bad_response":
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
        f"{base_url} does not answer like the Hindsight API (HTTP {outcome.http_status} "
        f"without an API error body); check --base-url"
    )
