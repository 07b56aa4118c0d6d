"""How many tokens one answer used, read from the provider's own usage as it is relayed.

- Whole JSON answers: the `usage` object near the end of the body (only the last 64 KB
  are kept; nothing is buffered before the client gets it).
- SSE streams: a light line scanner. Only a `data:` line carrying a non-null `usage`
  object is parsed (OpenAI's last chunk with `stream_options.include_usage`, the
  Responses API's `response.completed`, Anthropic's `message_start` and
  `message_delta`); other lines are only counted when they carry content, as an
  estimate for streams that end before their usage (one token per content chunk,
  which is how OpenAI and Anthropic stream text).
- When the gateway asked OpenAI for usage the client did not want, the usage-only
  chunk (`"choices":[]`) is dropped from the relayed stream.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson

logger = logging.getLogger(__name__)

UsageShape = Literal["openai", "anthropic"]
Transform = Callable[[bytes], bytes]
Finish = Callable[[], bytes]

_TAIL_BYTES = 64 * 1024
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_CONTENT = re.compile(
    rb'"(?:content|arguments|reasoning_content|text|delta)"\s*:\s*"[^"]'
)
_ANTHROPIC_CONTENT = b'"content_block_delta"'
_DECODER = json.JSONDecoder()


class Meter:
    """The usage of one request as far as the answer was seen."""

    def __init__(
        self, shape: UsageShape, *, input_estimate: int, output_fallback: int
    ) -> None:
        self.shape = shape
        self.input_estimate = input_estimate
        self.output_fallback = output_fallback
        self.started = False  # a successful answer began: charge, do not release
        self.streaming = False
        self.final = False  # the provider's final usage was seen
        self.deltas = 0  # content chunks seen in a stream
        self.usage: dict[str, int] = {}

    def record(self, usage: Mapping[str, Any], *, final: bool) -> None:
        """Merge a provider usage object; later values win (they are cumulative)."""
        for key, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool):
                self.usage[key] = value
        self.final = self.final or final

    def tokens(self) -> tuple[int, int]:
        """(input, output) to charge: the provider's figures, else the estimates."""
        reported_in, reported_out = self._input(), self._output()
        if self.final and reported_in is not None and reported_out is not None:
            return reported_in, reported_out
        charged_in = self.input_estimate if reported_in is None else reported_in
        if self.streaming:
            return charged_in, max(reported_out or 0, self.deltas)
        return (
            charged_in,
            self.output_fallback if reported_out is None else reported_out,
        )

    def _input(self) -> int | None:
        usage = self.usage
        if "prompt_tokens" in usage:
            return usage["prompt_tokens"]
        if "input_tokens" not in usage:
            return None
        cached = 0
        if self.shape == "anthropic":
            cached = usage.get("cache_read_input_tokens", 0) + usage.get(
                "cache_creation_input_tokens", 0
            )
        return usage["input_tokens"] + cached

    def _output(self) -> int | None:
        for key in ("completion_tokens", "output_tokens"):
            if key in self.usage:
                return self.usage[key]
        return 0 if "prompt_tokens" in self.usage else None  # embeddings


class StreamScanner:
    """Passes an SSE stream through, reading usage and counting content lines."""

    def __init__(self, meter: Meter, *, drop_usage_chunk: bool) -> None:
        self._meter = meter
        self._drop = drop_usage_chunk
        self._buffer = b""
        self._skip_blank = False
        meter.streaming = True

    def feed(self, chunk: bytes) -> bytes:
        data = self._buffer + chunk
        end = data.rfind(b"\n") + 1
        self._buffer = data[end:]
        if not self._drop:
            self._scan(data[:end])
            return chunk
        return self._scan(data[:end])

    def finish(self) -> bytes:
        """The unterminated rest of the stream (only held back when dropping)."""
        rest, self._buffer = self._buffer, b""
        if not rest:
            return b""
        kept = self._scan(rest + b"\n")
        return kept[:-1] if self._drop else b""

    def _scan(self, lines: bytes) -> bytes:
        kept: list[bytes] = []
        for line in lines.splitlines(keepends=True):
            if self._skip_blank and not line.strip():
                self._skip_blank = False
                continue
            self._skip_blank = False
            if line.startswith(b"data:") and not self._on_data(line[5:]):
                self._skip_blank = True
                continue
            kept.append(line)
        return b"".join(kept)

    def _on_data(self, data: bytes) -> bool:
        """Read one data line; False when it must be dropped."""
        if any(marker in data for marker in _USAGE_MARKERS):
            return self._on_usage(data)
        if self._meter.shape == "anthropic":
            if _ANTHROPIC_CONTENT in data:
                self._meter.deltas += 1
        elif _CONTENT.search(data):
            self._meter.deltas += 1
        return True

    def _on_usage(self, data: bytes) -> bool:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("Unreadable usage line in a provider stream")
            return True
        if not isinstance(payload, dict):
            return True
        kind = payload.get("type")
        usage = _usage_of(payload)
        if usage is not None:
            self._meter.record(usage, final=kind != "message_start")
        if kind == "content_block_delta":
            self._meter.deltas += 1
        if self._drop and payload.get("choices") == [] and "usage" in payload:
            return False
        if self._meter.shape == "openai" and _CONTENT.search(data):
            self._meter.deltas += 1
        return True


def _usage_of(payload: dict[str, Any]) -> Mapping[str, Any] | None:
    for holder in (payload, payload.get("response"), payload.get("message")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            usage: Mapping[str, Any] = holder["usage"]
            return usage
    return None


class JsonTail:
    """Passes a JSON answer through, keeping its tail to read `usage` at the end."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self._tail += chunk
        if len(self._tail) > 2 * _TAIL_BYTES:
            del self._tail[:-_TAIL_BYTES]
        return chunk

    def finish(self) -> bytes:
        usage = usage_in_tail(bytes(self._tail))
        if usage is not None:
            self._meter.record(usage, final=True)
        return b""


def usage_in_tail(body: bytes) -> dict[str, Any] | None:
    """The last top-level-looking `"usage": {...}` object in a JSON text, if any.

    Inside JSON strings quotes are escaped, so `"usage":` only matches a real key.
    """
    text = body.decode("utf-8", errors="replace")
    match = None
    for found in re.finditer(r'"usage"\s*:\s*\{', text):
        match = found
    if match is None:
        return None
    try:
        usage, _ = _DECODER.raw_decode(text, match.end() - 1)
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


def passthrough_hooks(
    meter: Meter | None, *, streaming: bool, drop_usage_chunk: bool
) -> tuple[Transform | None, Finish | None]:
    """The relay's transform and finish hooks for a metered passthrough answer."""
    if meter is None and streaming and drop_usage_chunk:
        meter = Meter("openai", input_estimate=0, output_fallback=0)
    if meter is None:
        return None, None
    meter.started = True
    if streaming:
        scanner = StreamScanner(meter, drop_usage_chunk=drop_usage_chunk)
        return scanner.feed, scanner.finish
    tail = JsonTail(meter)
    return tail.feed, tail.finish
