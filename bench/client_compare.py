"""httpx and aiohttp side by side as the upstream client of a bare pass-through proxy.

The proxy is the smallest ASGI app that forwards a POST to the nginx fake and relays the
answer, on the gateway's server stack (uvicorn, uvloop, httptools, one worker), so the
only difference between the two runs is the HTTP client. `make bench` runs it; alone:

    .venv/bin/python -m bench.client_compare [--seconds 5]
    .venv/bin/python -m bench.client_compare serve --client httpx --port P \
        --upstream URL
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.bare_stack import read_body
from bench.loadgen import Target
from bench.stack import Stack
from tests.support.redis_server import free_port

CLIENTS = ("aiohttp", "httpx")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
Forward = Callable[[bytes], Awaitable[tuple[int, bytes]]]


def _aiohttp_forward(url: str) -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import aiohttp

    state: dict[str, aiohttp.ClientSession] = {}

    async def forward(body: bytes) -> tuple[int, bytes]:
        if "session" not in state:
            connector = aiohttp.TCPConnector(limit=1000)
            state["session"] = aiohttp.ClientSession(connector=connector)
        headers = {"content-type": "application/json"}
        async with state["session"].post(url, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def close() -> None:
        if "session" in state:
            await state["session"].close()

    return forward, close


def _httpx_forward(url: str) -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import httpx

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    client = httpx.AsyncClient(limits=limits, timeout=30)

    async def forward(body: bytes) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        response = await client.post(url, content=body, headers=headers)
        return response.status_code, response.content

    return forward, client.aclose


def proxy_app(client: str, url: str) -> Any:
    """The pass-through ASGI app using `client`."""
    maker = _aiohttp_forward if client == "aiohttp" else _httpx_forward
    forward, close = maker(url)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        status, body = await forward(await read_body(receive))
        headers = [(b"content-type", b"application/json")]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": body})

    return app


def serve(client: str, port: int, upstream: str) -> None:
    import uvicorn

    uvicorn.run(
        proxy_app(client, upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


def compare(seconds: float) -> dict[str, Any]:
    """Requests/s and latency of each client at 1 and 50 connections."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="subgate-clients-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start_fixed_upstream()
            upstream = f"http://127.0.0.1:{stack.upstream_port}/v1/chat/completions"
            for client in CLIENTS:
                port = free_port()
                args = [sys.executable, "-m", "bench.client_compare", "serve"]
                args += ["--client", client, "--port", str(port)]
                stack.spawn(client, [*args, "--upstream", upstream], port)
                target = Target(client, f"http://127.0.0.1:{port}/", BODY)
                loadgen.wrk(target, 50, 1, [])  # warm-up
                results[client] = {
                    f"c{c}": loadgen.wrk(target, c, seconds, []) for c in (1, 50)
                }
                for c in (1, 50):
                    f = results[client][f"c{c}"]
                    print(
                        f"  {client:<8} c{c:<3} {f['rps']:>8.0f} req/s  "
                        f"p50 {f['p50_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms  "
                        f"errors {f['errors']}",
                        flush=True,
                    )
        finally:
            stack.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", nargs="?", default="compare")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default="")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.client, args.port, args.upstream)
    else:
        compare(args.seconds)


if __name__ == "__main__":
    main()
