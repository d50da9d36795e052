"""Which contact each interview belongs to, asked of the API (`[merge] resolve_contacts`).

An export's emails only claim which interviews share a contact; the server links each interview
to one contact for good, and `GET /interviews/{id}` names it (`contact_id`). The worker asks once
per interview it has never resolved (the state keeps the answers), before planning, under the
run's own limit: the same pacer (window guard, bucket, the shared 429 pause), the same answer
classification and retry policy as the PATCHes, and the send times handed on to the sending
pacer, so no window of the run holds more requests than the limit, GETs included.

An interview that cannot be resolved (404, retries used up) stays as the state or the export
names it. The first GET goes out alone, as the first PATCH does: a refused key, or an API that
does not answer, costs one request and stops resolving (the first PATCH then ends the run as it
would have, with a ledger line for every row).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sync_worker.logs import get_logger
from sync_worker.send.client import Kind, classify, wait_hint
from sync_worker.send.limiter import Pacer, Stopped, sleep_unless_stopped
from sync_worker.version import __version__

if TYPE_CHECKING:
    import aiohttp

    from sync_worker.send.sender import SendConfig

WORKERS = 8  # GETs in flight: the pacer, not the pool, keeps the limit
MAX_RATE_LIMITED = 10  # 429s for one interview before it is left unresolved


@dataclass
class Resolution:
    contacts: dict[int, int] = field(default_factory=dict)  # interview id -> contact id
    unresolved: list[int] = field(default_factory=list)  # not found, or no answer in the end
    sent_at: list[float] = field(default_factory=list)  # send times (loop clock: monotonic)
    refused: str = ""  # the key or the base URL refused: why


async def resolve(config: SendConfig, ids: list[int], stop: asyncio.Event) -> Resolution:
    """Ask the API the contact of each of `ids`."""
    found = Resolution()
    pacer = Pacer(config.limit, config.period_s, stop)
    queue = deque(ids)
    async with _session(config) as session:
        asker = _Asker(session, config, pacer, stop, found)
        await asker.work(queue, alone=True)
        if not asker.answered:
            found.refused = found.refused or "no answer from the API"
            found.unresolved.extend(queue)
            return found
        workers = min(len(queue), config.concurrency or WORKERS)
        await asyncio.gather(*(asker.work(queue) for _ in range(workers)))
    found.unresolved.extend(queue)  # left by a stop
    return found


def _session(config: SendConfig) -> aiohttp.ClientSession:
    import aiohttp as http  # here, not at the top: `plan` and `validate` never pay for it

    tls = config.tls if config.tls is not None else True
    return http.ClientSession(
        connector=http.TCPConnector(ssl=tls, limit=WORKERS),
        proxy=config.proxy,
        timeout=http.ClientTimeout(total=config.timeout_s),
        headers={
            "Authorization": f"Bearer {config.api_key}",
            "User-Agent": f"sync-worker/{__version__}",
        },
    )


class _Asker:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: SendConfig,
        pacer: Pacer,
        stop: asyncio.Event,
        found: Resolution,
    ) -> None:
        self._session = session
        self._base = config.base_url.rstrip("/")
        self._policy = config.policy
        self._pacer = pacer
        self._stop = stop
        self._found = found
        self._log = get_logger()
        self.answered = False  # an HTTP answer came (the API is there)

    async def work(self, queue: deque[int], alone: bool = False) -> None:
        while queue and not self._stop.is_set() and not self._found.refused:
            interview_id = queue.popleft()
            try:
                contact = await self._ask(interview_id)
            except Stopped:
                return
            if contact is None:
                self._found.unresolved.append(interview_id)
            else:
                self._found.contacts[interview_id] = contact
            if alone:
                return

    async def _ask(self, interview_id: int) -> int | None:
        """The interview's contact id; None: not found, refused, or no answer in the end."""
        failures = rate_limited = 0
        while True:
            sent_at = await self._pacer.acquire()
            self._found.sent_at.append(sent_at)
            status, body, hint = await self._get(interview_id)
            self.answered = self.answered or status != 0
            if status == 200:
                self._pacer.accepted(sent_at)
                return _contact_id(body)
            if status == 429:
                rate_limited += 1
                self._pacer.rate_limited(hint or 1.0, sent_at)
                if rate_limited >= MAX_RATE_LIMITED:
                    return None
                continue
            verdict = classify(status, body) if status else None
            if verdict is not None and verdict.kind is Kind.FATAL:
                self._found.refused = f"HTTP {status} {verdict.code}: {verdict.message}"
                return None
            if verdict is not None and verdict.kind is not Kind.RETRY:
                return None  # 404: no such interview (its PATCH says so in the ledger)
            failures += 1
            if failures > self._policy.max_retries:
                return None
            await sleep_unless_stopped(self._stop, self._policy.delay(failures, hint))

    async def _get(self, interview_id: int) -> tuple[int, bytes, float | None]:
        """(status, body, the server's wait hint); status 0 when nothing came back."""
        import aiohttp

        try:
            async with self._session.get(f"{self._base}/interviews/{interview_id}") as answer:
                return answer.status, await answer.read(), wait_hint(answer.status, answer.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._log.warning("resolve_retry", interview_id=interview_id, error=type(exc).__name__)
            return 0, b"", None


def _contact_id(body: bytes) -> int | None:
    try:
        value = json.loads(body).get("contact_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
