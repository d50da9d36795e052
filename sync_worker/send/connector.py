"""aiohttp's connection pool, told when a send leaves later than its slot.

Imported only when a run sends (aiohttp costs ~0.15 s to import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from sync_worker.send.limiter import LATE_S, SLOT, Pacer

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection


class PacedConnector(aiohttp.TCPConnector):
    """A TCPConnector that reports sends delayed by opening their connection.

    A pool that grows mid-run opens new connections; each costs a TCP (and TLS) handshake
    between the send's slot and its leaving. The pacer counted the send at its slot; the server
    counts it when it arrives. When the handshake takes longer than LATE_S, the pacer is told
    (Pacer.sent_late), so the window counts the send from when it left. A reused connection,
    the common case, costs a clock read and a context lookup."""

    def __init__(self, pacer: Pacer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pacer = pacer

    async def connect(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        slot = SLOT.get(None)
        if slot is not None:
            now = self._loop.time()
            if now - slot > LATE_S:
                self._pacer.sent_late(slot, now)
                SLOT.set(now)  # the client reads it back: the server's window holds this time
        return connection
