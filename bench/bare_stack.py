"""The bench's third reference: the gateway's libraries with none of Subgate's logic.

One uvicorn worker (uvloop, httptools) that reads the request, makes one Redis round
trip through the gateway's own redis-py client (`shared.redis.create_redis`: the same
pool and packing, under the same per-operation deadline) running a one-line counting
script, and relays the provider's answer with an aiohttp session set up as the
gateway's is: a stream's first HTTP chunk alone, then the rest as it arrives; a fixed
answer keeps its Content-Length, as through the gateway. No token, routing, limits,
translation, metering, metrics or logs, and no sharing of Redis round trips between
concurrent requests (the gateway's `CoalescedScript`). What the gateway adds over
this is Subgate's own work; what this adds over a direct call is the price of the
stack itself on the machine.

    .venv/bin/python -m bench.bare_stack PORT --redis URL --fixed URL --stream URL

`/fixed/...` goes to the fixed-answer fake (nginx), `/stream/...` to the streaming one.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp

from shared.redis import create_redis, deadline

# One counter, kept a minute: a Redis round trip with a write, as the gateway's
# admission check makes, without its checks.
COUNT_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
return n
"""


class BareStack:
    """The ASGI app."""

    def __init__(self, redis_url: str, upstreams: dict[str, str]) -> None:
        self._redis = create_redis(redis_url, cluster=False)
        self._count = self._redis.register_script(COUNT_SCRIPT)
        self._upstreams = upstreams
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        prefix, _, rest = scope["path"][1:].partition("/")
        body = await read_body(receive)
        async with deadline(self._redis):
            await self._count(keys=["bare:count"], args=[])
        assert self._session is not None
        query = scope["query_string"].decode("latin-1")
        response = await self._session.request(
            scope["method"],
            f"{self._upstreams[prefix]}/{rest}" + (f"?{query}" if query else ""),
            data=body,
            headers={"content-type": "application/json", "accept-encoding": "identity"},
            allow_redirects=False,
        )
        try:
            stream = response.content_type == "text/event-stream"
            headers = [(b"content-type", response.content_type.encode())]
            length = response.headers.get("content-length")
            if length is not None and "content-encoding" not in response.headers:
                headers.append((b"content-length", length.encode()))
            start = {"type": "http.response.start", "status": response.status}
            await send({**start, "headers": headers})
            if stream:
                first, _ = await response.content.readchunk()
                await _send_body(send, first)
            async for chunk in response.content.iter_any():
                await _send_body(send, chunk)
            await send({"type": "http.response.body", "body": b""})
        finally:
            response.release()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=60)
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=4000, ttl_dns_cache=300),
                    timeout=timeout,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    skip_auto_headers=("User-Agent",),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await self._redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def read_body(receive: Any) -> bytes:
    """The whole request body from ASGI `receive`."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_body(send: Any, chunk: bytes) -> None:
    if chunk:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


def main() -> None:
    import uvicorn

    from shared.server import tune_gc

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--fixed", required=True, help="fixed-answer fake's base URL")
    parser.add_argument("--stream", required=True, help="streaming fake's base URL")
    args = parser.parse_args()
    app = BareStack(args.redis, {"fixed": args.fixed, "stream": args.stream})
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        proxy_headers=False,
        backlog=4096,
    )
    tune_gc()  # as the gateway does: its effect is the stack's, not Subgate's logic
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
