"""A fake Anthropic Messages API on 127.0.0.1, speaking Anthropic's exact wire format.

`FakeAnthropic` runs an aiohttp application in a background thread. Tests script the
next answers (JSON, error, or an SSE stream sent event by event, optionally waiting on
a `threading.Event` the test sets), then read the recorded requests and whether the
client went away mid-stream.

    with FakeAnthropic() as fake:
        fake.script_stream(text_stream_events(["Bon", "jour"]))
        ...  # point the gateway at fake.base_url
        assert fake.requests[0].json["model"] == "claude-sonnet-4-6"
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Event = tuple[str, dict[str, Any]]
StreamItem = Event | threading.Event | bytes


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class Answer:
    """A scripted answer: JSON (`body`) or SSE (`stream`)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: list[StreamItem] | None = None
    split: int | None = None  # send each event in pieces of this many bytes
    abort: bool = False  # drop the connection after the stream items, no clean end


def message(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    model: str = "claude-sonnet-4-6",
    message_id: str = "msg_fake01",
    input_tokens: int = 10,
    output_tokens: int = 5,
) -> dict[str, Any]:
    """A complete Anthropic message body."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    }


def text_stream_events(
    parts: list[str],
    *,
    model: str = "claude-sonnet-4-6",
    message_id: str = "msg_fake01",
    stop_reason: str = "end_turn",
) -> list[Event]:
    """The SSE events of a streamed text answer, one text_delta per part."""
    start = message([], model=model, message_id=message_id, output_tokens=1)
    start["stop_reason"] = None
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for part in parts:
        delta = {"type": "text_delta", "text": part}
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta},
            )
        )
    usage = {"output_tokens": len(parts)}
    return [
        *events,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def error_event(
    error_type: str = "overloaded_error", text: str = "Overloaded"
) -> Event:
    """A mid-stream `event: error`, as Anthropic sends after HTTP 200."""
    return ("error", {"type": "error", "error": {"type": error_type, "message": text}})


def error_body(
    error_type: str, text: str, request_id: str = "req_fake"
) -> dict[str, Any]:
    """An Anthropic HTTP error body."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": text},
        "request_id": request_id,
    }


def parse_sse(text: str) -> list[Event]:
    """Anthropic SSE text (such as the wire example files) as (event, data) pairs."""
    events: list[Event] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].lstrip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def load_sse(path: str | Path) -> list[Event]:
    return parse_sse(Path(path).read_text(encoding="utf-8"))


def encode_event(event: Event) -> bytes:
    """One event in Anthropic's framing: `event: x\\ndata: {...}\\n\\n`."""
    name, data = event
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode()


MODEL_LIST = {
    "data": [
        {
            "type": "model",
            "id": model_id,
            "display_name": model_id,
            "created_at": "2026-01-15T00:00:00Z",
        }
        for model_id in ("claude-sonnet-4-6", "claude-haiku-4-5")
    ],
    "has_more": False,
    "first_id": "claude-sonnet-4-6",
    "last_id": "claude-haiku-4-5",
}


class FakeAnthropic:
    """The fake upstream, running in its own thread and event loop."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key  # when set, other keys get Anthropic's 401
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.stream_finished = threading.Event()
        self._answers: deque[Answer] = deque()
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def reset(self) -> None:
        """Forget requests, scripted answers and disconnects (between tests)."""
        self.requests.clear()
        self._answers.clear()
        self.disconnects = 0
        self.disconnected.clear()
        self.stream_finished.clear()

    # --- scripting

    def script(
        self,
        body: Any = None,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a JSON answer (a message, or an error body with its status)."""
        self._answers.append(Answer(status=status, body=body, headers=headers or {}))

    def script_error(
        self,
        status: int,
        error_type: str,
        text: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue an Anthropic HTTP error such as 529 overloaded_error."""
        self.script(error_body(error_type, text), status=status, headers=headers)

    def script_stream(
        self,
        items: list[StreamItem],
        *,
        split: int | None = None,
        abort: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue an SSE answer: (event, data) pairs, raw bytes, or threading.Events
        the fake waits on (the test sets them) before sending what follows."""
        answer = Answer(
            stream=list(items), split=split, abort=abort, headers=headers or {}
        )
        self._answers.append(answer)

    # --- lifecycle

    def __enter__(self) -> FakeAnthropic:
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

    async def _start(self) -> int:
        app = web.Application()
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
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.requests.append(
            RecordedRequest(
                request.method, request.path, dict(request.headers), raw, parsed
            )
        )
        request_id = f"req_fake{next(self._ids):04d}"

        if self.api_key is not None and _key(request) != self.api_key:
            body = error_body("authentication_error", "invalid x-api-key", request_id)
            return web.json_response(
                body, status=401, headers={"request-id": request_id}
            )
        if (
            request.method == "GET"
            and request.path == "/v1/models"
            and not self._answers
        ):
            return web.json_response(MODEL_LIST, headers={"request-id": request_id})
        answer = self._answers.popleft() if self._answers else self._default(parsed)
        headers = {"request-id": request_id, **answer.headers}
        if answer.stream is None:
            return web.json_response(answer.body, status=answer.status, headers=headers)
        return await self._stream(request, answer, headers)

    def _default(self, parsed: Any) -> Answer:
        model = (
            parsed.get("model", "claude-sonnet-4-6") if isinstance(parsed, dict) else ""
        )
        if isinstance(parsed, dict) and parsed.get("stream"):
            return Answer(stream=list(text_stream_events(["Hello", "!"], model=model)))
        return Answer(body=message([{"type": "text", "text": "Hello!"}], model=model))

    async def _stream(
        self, request: web.Request, answer: Answer, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                **headers,
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            },
        )
        await response.prepare(request)
        try:
            for item in answer.stream or []:
                if isinstance(item, threading.Event):
                    if not await self._wait(request, item):
                        return response
                    continue
                data = item if isinstance(item, bytes) else encode_event(item)
                await self._send(response, data, answer.split)
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

    async def _send(
        self, response: web.StreamResponse, data: bytes, split: int | None
    ) -> None:
        size = split or len(data)
        for start in range(0, len(data), size):
            await response.write(data[start : start + size])
            await asyncio.sleep(0)  # let each piece leave as its own write

    async def _wait(self, request: web.Request, gate: threading.Event) -> bool:
        """Wait for the test's event; False if the client went away meanwhile."""
        while not gate.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                self._record_disconnect()
                return False
            await asyncio.to_thread(gate.wait, 0.05)
        return True

    def _record_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected.set()


def _key(request: web.Request) -> str | None:
    """The caller's key: `x-api-key`, or `Authorization: Bearer` (newer SDKs)."""
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[len("bearer ") :]
    return request.headers.get("x-api-key")
