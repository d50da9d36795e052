"""A small forward HTTP proxy for the tests, on 127.0.0.1: it forwards every absolute-form
request (`PATCH http://host/path`) to its target and counts them; `GET /_proxy/seen` (origin
form) answers what it forwarded, and the Proxy-Authorization each came with (`auth`, "" for
none). Prints `proxy listening on PORT` once ready."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import ClientSession, web

SEEN = web.AppKey("seen", list)
AUTH = web.AppKey("auth", list)
SESSION = web.AppKey("session", ClientSession)
HOP_BY_HOP = {"proxy-connection", "proxy-authorization", "connection", "keep-alive", "host"}


async def forward(request: web.Request) -> web.StreamResponse:
    if not request.raw_path.startswith("http"):  # origin form: a question to the proxy itself
        return web.json_response({"seen": request.app[SEEN], "auth": request.app[AUTH]})
    request.app[SEEN].append(f"{request.method} {request.url}")
    request.app[AUTH].append(request.headers.get("Proxy-Authorization", ""))
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with request.app[SESSION].request(
        request.method, request.url, headers=headers, data=await request.read()
    ) as answer:
        body = await answer.read()
        return web.Response(status=answer.status, body=body, content_type=answer.content_type)


async def main() -> None:
    app = web.Application()
    app[SEEN] = []
    app[AUTH] = []
    app[SESSION] = ClientSession()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"proxy listening on {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await app[SESSION].close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
