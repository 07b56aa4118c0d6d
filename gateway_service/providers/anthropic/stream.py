"""Anthropic's SSE stream -> OpenAI's chat.completion.chunk SSE, chunk by chunk."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from gateway_service.providers.anthropic.errors import openai_error_type
from gateway_service.providers.anthropic.response import (
    completion_id,
    finish_reason,
    openai_usage,
)

logger = logging.getLogger(__name__)


class StreamTranslator:
    """Anthropic's SSE stream in, OpenAI's chat.completion.chunk SSE out.

    Feed raw upstream bytes as they arrive, in any split; each call returns the bytes
    to send now (possibly b""). `data: [DONE]` is emitted as soon as `message_stop`
    arrives. Call `finish()` at upstream EOF: after an incomplete stream it returns an
    error data line, which the openai SDK raises as an APIError.
    """

    def __init__(self, include_usage: bool, created: int) -> None:
        self.include_usage = include_usage
        self.created = created
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self._model = ""
        self._started = False
        self._tool_blocks: dict[int, int] = {}  # Anthropic block index -> tool index
        self._tool_args_seen: set[int] = set()
        self._stop_reason: str | None = None
        self._finished = False
        self._usage: dict[str, Any] = {}
        self.content_deltas = 0  # content_block_delta events seen (for metering)
        self.final_usage = False  # a message_delta carried usage: the counts are final
        self._done = False
        self._failed = False

    @property
    def done(self) -> bool:
        """True once the stream ended, normally or with an error line."""
        return self._done

    @property
    def failed(self) -> bool:
        """True when the stream ended with an error line instead of [DONE]."""
        return self._failed

    @property
    def reported_usage(self) -> dict[str, Any]:
        """Only the usage Anthropic reported so far (empty before message_start)."""
        return self._usage

    @property
    def usage(self) -> dict[str, int]:
        """Token counts seen so far, in Anthropic's terms (for accounting)."""
        keys = (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
        return {key: int(self._usage.get(key) or 0) for key in keys}

    def feed(self, data: bytes) -> bytes:
        """Translate whatever complete events `data` completes."""
        if self._done:
            return b""
        buffer = self._buffer + data
        end = buffer.rfind(b"\n") + 1
        self._buffer = buffer[end:]  # an incomplete last line waits for more
        out: list[bytes] = []
        for line in buffer[:end].split(b"\n")[:-1]:
            out.append(self._line(line.rstrip(b"\r")))
            if self._done:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """Bytes to send at upstream EOF: nothing, or an error line if incomplete."""
        out = b""
        if not self._done and self._buffer:
            out += self.feed(b"\n\n")  # a last event without its blank line
        if not self._done and self._data:
            out += self._dispatch()
        if self._done:
            return out
        self._done = self._failed = True
        logger.warning("Anthropic stream ended before message_stop")
        return out + _sse(
            _stream_error(
                "The provider's stream ended before the answer was complete.",
                "server_error",
                "stream_incomplete",
            )
        )

    def _line(self, raw: bytes) -> bytes:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return b""
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return b""

    def _dispatch(self) -> bytes:
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = "", []
        if not data:
            return b""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("Undecodable Anthropic stream event %r skipped", event)
            return b""
        kind = payload.get("type", event) if isinstance(payload, dict) else event
        handler = self._HANDLERS.get(kind)
        return handler(self, payload) if handler else b""

    # Anthropic event handlers; each returns the OpenAI bytes it produces.

    def _on_message_start(self, payload: dict[str, Any]) -> bytes:
        message = payload.get("message") or {}
        self._id = completion_id(message.get("id"))
        self._model = message.get("model", "")
        self._merge_usage(message.get("usage") or {})
        return self._start()

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def _on_block_start(self, payload: dict[str, Any]) -> bytes:
        block = payload.get("content_block") or {}
        index = payload.get("index", 0)
        if block.get("type") == "text" and block.get("text"):
            return self._start() + self._chunk({"content": block["text"]})
        if block.get("type") != "tool_use":
            return b""
        k = len(self._tool_blocks)
        self._tool_blocks[index] = k
        call = {
            "index": k,
            "id": block.get("id", ""),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""},
        }
        return self._start() + self._chunk({"tool_calls": [call]})

    def _on_block_delta(self, payload: dict[str, Any]) -> bytes:
        self.content_deltas += 1
        delta = payload.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return self._start() + self._chunk({"content": delta["text"]})
        k = self._tool_blocks.get(payload.get("index", -1))
        partial = delta.get("partial_json")
        if delta.get("type") != "input_json_delta" or k is None or not partial:
            return b""
        self._tool_args_seen.add(k)
        return self._chunk(
            {"tool_calls": [{"index": k, "function": {"arguments": partial}}]}
        )

    def _on_block_stop(self, payload: dict[str, Any]) -> bytes:
        k = self._tool_blocks.get(payload.get("index", -1))
        if k is None or k in self._tool_args_seen:
            return b""
        # A tool without arguments still owes the client valid JSON.
        self._tool_args_seen.add(k)
        return self._chunk(
            {"tool_calls": [{"index": k, "function": {"arguments": "{}"}}]}
        )

    def _on_message_delta(self, payload: dict[str, Any]) -> bytes:
        if payload.get("usage"):
            self._merge_usage(payload["usage"])
            self.final_usage = True
        stop_reason = (payload.get("delta") or {}).get("stop_reason")
        if stop_reason is None:
            return b""
        self._stop_reason = stop_reason
        return self._finish_chunk()

    def _on_message_stop(self, payload: dict[str, Any]) -> bytes:
        out = self._start() + self._finish_chunk()
        if self.include_usage:
            out += _sse(self._envelope([], openai_usage(self._usage)))
        self._done = True
        return out + b"data: [DONE]\n\n"

    def _on_error(self, payload: dict[str, Any]) -> bytes:
        error = payload.get("error") or {}
        anthropic_type = str(error.get("type") or "api_error")
        message = str(error.get("message") or "The provider reported an error.")
        self._done = self._failed = True
        logger.warning("Anthropic stream error event: %s", anthropic_type)
        return _sse(
            _stream_error(message, openai_error_type(anthropic_type), anthropic_type)
        )

    _HANDLERS = {
        "message_start": _on_message_start,
        "content_block_start": _on_block_start,
        "content_block_delta": _on_block_delta,
        "content_block_stop": _on_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }

    def _finish_chunk(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        reason = finish_reason(self._stop_reason, bool(self._tool_blocks))
        return self._chunk({}, reason)

    def _merge_usage(self, usage: dict[str, Any]) -> None:
        # Later events repeat counts cumulatively; the latest non-null value wins.
        for key, value in usage.items():
            if value is not None and key != "cache_creation" and key != "service_tier":
                self._usage[key] = value

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(self._envelope([choice], None))

    def _envelope(
        self, choices: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self._model,
            "service_tier": "default",
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _stream_error(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# --------------------------------------------------------------------------- errors
