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

import itertools
import json
import threading
from pathlib import Path
from typing import Any

from tests.support.fake_upstream import Answer, FakeUpstream, RecordedRequest

Event = tuple[str, dict[str, Any]]
StreamItem = Event | threading.Event | bytes

_SSE_HEADERS = {"cache-control": "no-cache"}


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


class FakeAnthropic(FakeUpstream):
    """Anthropic's Messages API (and model list), with its key check and request ids."""

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key  # when set, other keys get Anthropic's 401
        self._ids = itertools.count(1)

    # --- scripting

    def script(
        self,
        body: Any = None,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a JSON answer (a message, or an error body with its status)."""
        self.queue(Answer(status=status, body=body, headers=headers or {}))

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
        stream = [encode_event(i) if isinstance(i, tuple) else i for i in items]
        headers = {**_SSE_HEADERS, **(headers or {})}
        self.queue(Answer(stream=stream, split=split, abort=abort, headers=headers))

    # --- serving

    def respond(self, request: RecordedRequest) -> Answer:
        request_id = f"req_fake{next(self._ids):04d}"
        if self.api_key is not None and _key(request) != self.api_key:
            body = error_body("authentication_error", "invalid x-api-key", request_id)
            answer = Answer(status=401, body=body)
        elif request.method == "GET" and request.path == "/v1/models":
            answer = Answer(body=MODEL_LIST)
        else:
            answer = super().respond(request)
        answer.headers = {"request-id": request_id, **answer.headers}
        return answer

    def default_answer(self, request: RecordedRequest) -> Answer:
        parsed = request.json if isinstance(request.json, dict) else {}
        model = parsed.get("model", "claude-sonnet-4-6")
        if parsed.get("stream"):
            events = text_stream_events(["Hello", "!"], model=model)
            stream: list[Any] = [encode_event(event) for event in events]
            return Answer(stream=stream, headers=dict(_SSE_HEADERS))
        return Answer(body=message([{"type": "text", "text": "Hello!"}], model=model))


def _key(request: RecordedRequest) -> str | None:
    """The caller's key: `x-api-key`, or `Authorization: Bearer` (newer SDKs)."""
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[len("bearer ") :]
    return request.headers.get("x-api-key")
