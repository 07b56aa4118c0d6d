"""A fake OpenAI API on 127.0.0.1 that answers in OpenAI's exact wire format (JSON and
data-only SSE) and records what it received.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.support.fake_upstream import Answer, FakeUpstream, RecordedRequest

MODEL_IDS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "whisper-1")


def completion(text: str = "Hello from the fake!", model: str = "gpt-4o-mini") -> Any:
    """A chat.completion object as OpenAI returns it."""
    return {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(12, 5),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def usage(prompt: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """One `data:` line of a chat.completion.chunk stream."""
    payload = {
        "id": "chatcmpl-fake0002",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_fake",
        "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        ],
        **extra,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_chunks(pieces: list[str], *, include_usage: bool = False) -> list[bytes]:
    """A whole streamed answer: role, text pieces, finish, usage, [DONE]."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    out = [chunk({"role": "assistant", "content": "", "refusal": None}, **extra)]
    out += [chunk({"content": piece}, **extra) for piece in pieces]
    out.append(chunk({}, "stop", **extra))
    if include_usage:
        final = {
            "id": "chatcmpl-fake0002",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": usage(12, len(pieces)),
        }
        out.append(b"data: " + orjson.dumps(final) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def error(status: int, message: str, type_: str, code: str | None) -> Answer:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return Answer(status=status, body=body)


class FakeOpenAI(FakeUpstream):
    """Default answers for the endpoints the gateway forwards."""

    def default_answer(self, request: RecordedRequest) -> Answer:
        path = request.path
        body = request.json if isinstance(request.json, dict) else {}
        if path == "/v1/chat/completions":
            return self._chat(body)
        if path == "/v1/embeddings":
            return Answer(body=_embeddings(body))
        if path == "/v1/models":
            data = [_model(model_id) for model_id in MODEL_IDS]
            return Answer(body={"object": "list", "data": data})
        if path.startswith("/v1/models/"):
            return Answer(body=_model(path.rsplit("/", 1)[1]))
        if path == "/v1/audio/transcriptions":
            return Answer(
                body={"text": f"fake transcript of {len(request.body)} bytes"}
            )
        if path == "/v1/moderations":
            return Answer(body={"id": "modr-fake", "model": "omni", "results": []})
        return error(404, f"Unknown path {path}", "invalid_request_error", None)

    def _chat(self, body: dict[str, Any]) -> Answer:
        model = str(body.get("model", "gpt-4o-mini"))
        if not body.get("stream"):
            return Answer(body=completion(model=model))
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        pieces = ["Hello", " from", " the", " fake!"]
        return Answer(stream=list(stream_chunks(pieces, include_usage=include_usage)))


def _embeddings(body: dict[str, Any]) -> Any:
    inputs = body.get("input", "")
    count = len(inputs) if isinstance(inputs, list) else 1
    data = [
        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
        for i in range(count)
    ]
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "text-embedding-3-small"),
        "usage": {"prompt_tokens": 3 * count, "total_tokens": 3 * count},
    }


def _model(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 1700000000,
        "owned_by": "openai",
    }
