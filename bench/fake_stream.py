"""A tiny streaming fake provider for `make bench`: raw asyncio (uvloop), HTTP/1.1
keep-alive, chunked SSE answers in OpenAI's and Anthropic's exact wire formats.

nginx cannot pace events, so streams come from here. Each content event carries the
moment it was written (`time.monotonic_ns()`, the same clock in every process on the
machine) as its text, `t<ns> `, so a client can tell how long every chunk took to reach
it, and whether a proxy relayed it as it arrived.

The requested model's name steers the answer, because it is the one thing that reaches
the fake unchanged through the gateway, translated or not: `-n<count>` content events
(default 200), `-i<ms>` pause between them (default 0: back to back), `-h<ms>` pause
after the first one (for "many open streams"); e.g. `gpt-bench-i2`,
`claude-bench-h20000`. An answer without pauses is written in one piece, as nginx
serves a fixed file, so the fake's own writes do not compete with the proxy under
test for the machine's two cores; a paced answer is written event by event.

Run: `python bench/fake_stream.py PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time

import orjson

_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_STEER = re.compile(r"-([nih])(\d+)")
_OPENAI_ID = "chatcmpl-benchstream"
_ANTHROPIC_ID = "msg_benchstream"
_USAGE = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 1,
}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _openai_event(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _openai_chunk_line([choice])


def _openai_usage_event(completion_tokens: int) -> bytes:
    prompt_tokens = _USAGE["input_tokens"]
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return _openai_chunk_line([], usage=usage)


def _openai_chunk_line(choices: list[object], **extra: object) -> bytes:
    body = {
        "id": _OPENAI_ID,
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "gpt-4o-mini",
        "service_tier": "default",
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _anthropic_event(kind: str, body: dict[str, object]) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps(body))


class OpenAIStream:
    """Chat Completions chunks: role, contents, finish, the usage-only chunk when the
    request asked for it (`stream_options.include_usage`), [DONE]."""

    def __init__(self, usage: bool = False) -> None:
        self._usage = usage

    def opening(self) -> list[bytes]:
        return [_openai_event({"role": "assistant", "content": "", "refusal": None})]

    def content(self, text: str) -> bytes:
        return _openai_event({"content": text})

    def closing(self, count: int) -> list[bytes]:
        events = [_openai_event({}, "stop")]
        if self._usage:
            events.append(_openai_usage_event(count))
        return [*events, b"data: [DONE]\n\n"]


class AnthropicStream:
    """Messages events: message_start ... message_stop."""

    def opening(self) -> list[bytes]:
        message = {
            "id": _ANTHROPIC_ID,
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _USAGE,
        }
        block = {"type": "text", "text": ""}
        return [
            _anthropic_event(
                "message_start", {"type": "message_start", "message": message}
            ),
            _anthropic_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]

    def content(self, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return _anthropic_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": delta},
        )

    def closing(self, count: int) -> list[bytes]:
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        usage = {**_USAGE, "output_tokens": count}
        return [
            _anthropic_event(
                "content_block_stop", {"type": "content_block_stop", "index": 0}
            ),
            _anthropic_event(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": usage},
            ),
            _anthropic_event("message_stop", {"type": "message_stop"}),
        ]


def _steering(body: bytes) -> tuple[int, float, float, bool]:
    """Events, interval (s) and hold (s) named in the request's model, and whether
    the request asked for a usage chunk."""
    try:
        request = orjson.loads(body)
        model = str(request.get("model", ""))
        options = request.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
    except (orjson.JSONDecodeError, AttributeError):
        model, usage = "", False
    found = {key: int(value) for key, value in _STEER.findall(model)}
    interval, hold = found.get("i", 0) / 1000, found.get("h", 0) / 1000
    return found.get("n", 200), interval, hold, usage


class StreamProtocol(asyncio.Protocol):
    """One client connection; requests are answered one after another."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writable.set()
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next_request()

    def _next_request(self) -> None:
        if self._task is not None and not self._task.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        path = head[0].split(" ")[1].split("?")[0]
        self._task = asyncio.ensure_future(self._answer(path, headers, body))
        self._task.add_done_callback(lambda _: self._next_request())

    async def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise ConnectionResetError()
        self._transport.write(data)
        if not self._writable.is_set():
            await self._writable.wait()

    async def _answer(self, path: str, headers: dict[str, str], body: bytes) -> None:
        count, interval, hold, usage = _steering(body)
        messages = path.endswith("/messages")
        style = AnthropicStream() if messages else OpenAIStream(usage)
        with contextlib.suppress(ConnectionError):
            opening = _HEAD + b"".join(_chunk(e) for e in style.opening())
            if not interval and not hold:
                events = [style.content(f"t{time.monotonic_ns()} ")] * count
                tail = b"".join(_chunk(e) for e in style.closing(count))
                await self._write(
                    opening + b"".join(map(_chunk, events)) + tail + b"0\r\n\r\n"
                )
                return
            await self._write(opening)
            for index in range(count):
                text = f"t{time.monotonic_ns()} "
                await self._write(_chunk(style.content(text)))
                if index == 0 and hold:
                    await asyncio.sleep(hold)
                elif interval:
                    await asyncio.sleep(interval)
            tail = b"".join(_chunk(e) for e in style.closing(count))
            await self._write(tail + b"0\r\n\r\n")


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        StreamProtocol, "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
