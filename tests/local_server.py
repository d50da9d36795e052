"""Small local servers that are not the API, on 127.0.0.1 in a thread of the test process: a
catch-all web page, a load balancer's 502, a server that never answers, a monitor that records
pings. A run driven in-process (CliRunner) reaches them like any server."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """What one request to the server was: method, path, headers and body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LocalServer:
    root: str  # http://127.0.0.1:PORT
    seen: list[Seen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.root + "/api/v1"


@contextmanager
def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    """Serve every method and path with `handler`, recording each request, until the block
    ends; over TLS with `tls`."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        server = box["server"]
        assert isinstance(server, LocalServer)

        async def record(request: web.Request) -> web.StreamResponse:
            server.seen.append(
                Seen(request.method, request.path, dict(request.headers), await request.read())
            )
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        scheme = "https" if tls is not None else "http"
        server.root = f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
        stop = asyncio.Event()
        box["stop"], box["loop"] = stop, asyncio.get_running_loop()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    box["server"] = LocalServer("")
    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the local server did not start"
    try:
        server = box["server"]
        assert isinstance(server, LocalServer)
        yield server
    finally:
        loop, stop = box["loop"], box["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


async def html_page(_request: web.Request) -> web.Response:
    """A catch-all web server, or a proxy's block page: 200 and HTML for everything."""
    return web.Response(text="<html><body>Welcome</body></html>", content_type="text/html")


async def bad_gateway(_request: web.Request) -> web.Response:
    """A load balancer whose backends are down."""
    return web.Response(
        status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
    )


async def hang(_request: web.Request) -> web.Response:
    """A server that takes the request and never answers."""
    await asyncio.sleep(3600)
    return web.Response()


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="OK")
