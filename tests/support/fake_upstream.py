"""The machinery every fake provider shares: an aiohttp server on 127.0.0.1 in its own
thread, recorded requests, scripted answers (JSON, raw bytes, or SSE sent piece by piece
and paused on events the test sets), and a record of clients that went away.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

StreamItem = bytes | threading.Event | float


@dataclass
class RecordedRequest:
    """One request a fake received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class Answer:
    """A scripted answer: JSON (`body`), raw bytes (`raw`) or a stream (`stream`)."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: list[StreamItem] | None = None
    content_type: str = "text/event-stream; charset=utf-8"
    split: int | None = None  # send each stream item in pieces of this many bytes
    abort: bool = False  # drop the connection after the stream, no clean end
    delay: float = 0.0  # seconds to wait before the headers


class FakeUpstream:
    """Base of the fake providers; subclasses give the default answers."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.stream_finished = threading.Event()
        self._answers: deque[Answer] = deque()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- scripting

    def queue(self, answer: Answer) -> None:
        """Answer the next request with `answer` (in the order queued)."""
        self._answers.append(answer)

    def respond(self, request: RecordedRequest) -> Answer:
        """The answer to a request: the next scripted one, else the default."""
        if self._answers:
            return self._answers.popleft()
        return self.default_answer(request)

    def default_answer(self, request: RecordedRequest) -> Answer:
        raise NotImplementedError

    # --- lifecycle

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = future.result(timeout=10)
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            cleanup = asyncio.run_coroutine_threadsafe(
                self._runner.cleanup(), self._loop
            )
            cleanup.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self) -> None:
        self.requests.clear()
        self._answers.clear()
        self.disconnects = 0
        self.disconnected.clear()
        self.stream_finished.clear()

    async def _start(self) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port: int = self._runner.addresses[0][1]
        return port

    # --- serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        recorded = RecordedRequest(
            request.method,
            request.path,
            request.query_string,
            {k.lower(): v for k, v in request.headers.items()},
            raw,
            parsed,
        )
        self.requests.append(recorded)
        answer = self.respond(recorded)
        if answer.delay and not await self._pause(request, answer.delay):
            return web.Response(status=499)
        if answer.stream is not None:
            return await self._stream(request, answer)
        if answer.raw is not None:
            return web.Response(
                status=answer.status, body=answer.raw, headers=answer.headers
            )
        body = orjson.dumps(answer.body)
        headers = {"content-type": "application/json", **answer.headers}
        return web.Response(status=answer.status, body=body, headers=headers)

    async def _stream(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        headers = {"content-type": answer.content_type, **answer.headers}
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        try:
            for item in answer.stream or []:
                if not await self._stream_item(request, response, item, answer.split):
                    return response
            if answer.abort:
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            self.stream_finished.set()
        except (ConnectionResetError, asyncio.CancelledError):
            self._record_disconnect()
            raise
        return response

    async def _stream_item(
        self,
        request: web.Request,
        response: web.StreamResponse,
        item: StreamItem,
        split: int | None,
    ) -> bool:
        if isinstance(item, threading.Event):
            return await self._wait(request, item)
        if isinstance(item, float):
            return await self._pause(request, item)
        size = split or len(item)
        for start in range(0, len(item), size):
            await response.write(item[start : start + size])
            await asyncio.sleep(0)  # let each piece leave as its own write
        return True

    async def _wait(self, request: web.Request, gate: threading.Event) -> bool:
        """Wait for the test's event; False if the client went away meanwhile."""
        while not gate.is_set():
            if self._gone(request):
                return False
            await asyncio.to_thread(gate.wait, 0.02)
        return True

    async def _pause(self, request: web.Request, seconds: float) -> bool:
        """Wait `seconds`; False if the client went away meanwhile."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            if self._gone(request):
                return False
            await asyncio.sleep(0.01)
        return True

    def _gone(self, request: web.Request) -> bool:
        transport = request.transport
        if transport is None or transport.is_closing():
            self._record_disconnect()
            return True
        return False

    def _record_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected.set()
