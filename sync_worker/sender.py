"""Send a plan: one aiohttp session, the first request alone, then a pool of workers.

Each worker takes a whole contact chain and sends its requests one after another, so no row's
context overwrites another's. The run stops taking new requests when `stop` is set (a signal,
--max-duration, or a refused key); requests in flight then get a bounded time to finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from sync_worker import __version__
from sync_worker.client import Client, Counters, Outcome, RetryPolicy
from sync_worker.errors import FatalApiError
from sync_worker.limiter import Pacer
from sync_worker.logs import get_logger
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


@dataclass
class SendReport:
    counters: Counters
    fatal: FatalApiError | None = None
    started: set[int] = field(default_factory=set)  # interview ids whose send began
    elapsed_s: float = 0.0
    learned_per_minute: float | None = None


class Sender:
    def __init__(self, config: SendConfig, sink: ResultSink, stop: asyncio.Event) -> None:
        self._config = config
        self._sink = sink
        self._stop = stop
        self._log = get_logger()
        self._fatal: FatalApiError | None = None
        self._started: set[int] = set()

    async def run(self, queue: ChainQueue) -> SendReport:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        pacer = Pacer(self._config.limit, self._config.period_s, self._stop)
        async with self._session() as session:
            client = Client(session, self._config.base_url, pacer, self._config.policy, self._stop)
            if await self._probe(client, queue):
                await self._pool(client, queue)
        report = SendReport(client.counters, self._fatal, self._started, loop.time() - begin)
        if pacer.learned is not None:
            report.learned_per_minute = pacer.learned.per_minute
        return report

    def _session(self) -> aiohttp.ClientSession:
        config = self._config
        connector = aiohttp.TCPConnector(limit=config.workers, limit_per_host=config.workers)
        return aiohttp.ClientSession(
            connector=connector,
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
            if outcome.status == "ok" or (outcome.api_shaped and outcome.http_status is not None):
                return not self._stop.is_set()
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
        self._started.add(request.interview_id)
        outcome = await client.send(request.interview_id, request.body_json)
        self._sink(request, outcome)
        if outcome.fatal:
            message = (
                f"the API refused the key (HTTP {outcome.http_status} {outcome.error_code}): "
                "check the key in the variable or file you gave; the run stopped sending"
            )
            self._abort(message, outcome.error_code, outcome.http_status)
        return outcome

    def _abort(self, message: str, code: str, http_status: int | None = None) -> None:
        if self._fatal is None:
            self._fatal = FatalApiError(message, code=code, http_status=http_status)
            self._log.error("run_aborted", reason=message, error_code=code)
        self._stop.set()


def _unreachable(base_url: str, outcome: Outcome) -> str:
    if outcome.http_status is None:
        return (
            f"cannot reach the API at {base_url} ({outcome.error_code}: {outcome.error_message}); "
            "check --base-url and the network"
        )
    return (
        f"{base_url} does not answer like the Hindsight API (HTTP {outcome.http_status} "
        f"without an API error body); check --base-url"
    )
