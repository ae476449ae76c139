"""A minimal aiohttp pass-through proxy: the reference point of issue 7 (about 20 lines).

``python bench/minimal_proxy.py UPSTREAM_URL PORT``: one pooled ClientSession, the request's
method, path, headers and body passed on, the answer read whole and returned. No header
filtering, no streaming, no logging, no metrics: what "just put aiohttp in front" costs.
"""

import sys

import aiohttp
import uvloop
from aiohttp import web

DROP = {"Host", "Content-Length", "Transfer-Encoding", "Connection"}


async def make_app(upstream: str) -> web.Application:
    session = aiohttp.ClientSession(upstream, auto_decompress=False)

    async def proxy(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k not in DROP}
        data = await request.read() if request.body_exists else None
        async with session.request(
            request.method, request.raw_path, headers=headers, data=data, allow_redirects=False
        ) as up:
            body = await up.read()
            out = {k: v for k, v in up.headers.items() if k not in DROP}
            return web.Response(status=up.status, headers=out, body=body)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.on_cleanup.append(lambda _: session.close())
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), access_log=None)
