"""Anthropic Messages answer -> OpenAI chat.completion, and the shared pieces of it
(finish reasons, usage, ids) the stream translator uses too."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

logger = logging.getLogger(__name__)

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def translate_response(answer: dict[str, Any], *, created: int) -> dict[str, Any]:
    """An Anthropic message as an OpenAI `chat.completion`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in answer.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(_tool_call(block))

    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(answer.get("stop_reason"), bool(calls)),
    }
    return {
        "id": completion_id(answer.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": answer.get("model", ""),
        "choices": [choice],
        "usage": openai_usage(answer.get("usage") or {}),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
    function = {"name": block.get("name", ""), "arguments": arguments}
    return {"id": block.get("id", ""), "type": "function", "function": function}


def completion_id(message_id: Any) -> str:
    return "chatcmpl-" + (
        message_id if isinstance(message_id, str) else uuid.uuid4().hex
    )


def finish_reason(stop_reason: Any, has_tool_calls: bool) -> str:
    """OpenAI's finish_reason for Anthropic's stop_reason."""
    mapped = _FINISH_REASONS.get(stop_reason) if isinstance(stop_reason, str) else None
    if mapped is None:
        logger.warning("Unknown Anthropic stop_reason %r mapped to stop", stop_reason)
        return "stop"
    if mapped == "tool_calls" and not has_tool_calls:
        return "stop"
    return mapped


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage object from Anthropic's (cached tokens count as prompt)."""
    fresh = usage.get("input_tokens") or 0
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    output = usage.get("output_tokens") or 0
    thinking = (usage.get("output_tokens_details") or {}).get("thinking_tokens") or 0
    prompt_details: dict[str, int] = {"cached_tokens": read, "audio_tokens": 0}
    if written:
        prompt_details["cache_write_tokens"] = written
    return {
        "prompt_tokens": fresh + read + written,
        "completion_tokens": output,
        "total_tokens": fresh + read + written + output,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": thinking,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


# --------------------------------------------------------------------------- streams
