"""Glue between the gateway and the Anthropic translator: plan the Messages call for an
OpenAI Chat Completions request, and send the translated answer back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway_service.providers import anthropic
from gateway_service.providers.config import ModelConfig, Provider
from gateway_service.relay import is_event_stream, relay_body
from shared.asgi import JSON_HEADERS, RequestInfo, Send
from shared.errors import InvalidRequest, SubgateError, UpstreamUnreachable
from shared.identity import provider_user_hash
from shared.settings import Secret

if TYPE_CHECKING:
    from gateway_service.callers import Caller
    from gateway_service.forwarding import Outbound

logger = logging.getLogger(__name__)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def plan_translated(
    provider: Provider,
    model: ModelConfig,
    payload: dict[str, Any],
    caller: Caller,
    key: Secret,
) -> Outbound:
    """The Anthropic Messages call that answers an OpenAI Chat Completions request."""
    from gateway_service.forwarding import Outbound

    user_hash = provider_user_hash(caller.user_id)
    try:
        body = anthropic.translate_request(payload, user_hash=user_hash, model=model)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # A body of a shape the translator did not foresee is the client's error.
        logger.warning("Untranslatable request: %s", type(exc).__name__)
        raise InvalidRequest(
            "The request does not fit the Chat Completions format."
        ) from exc
    stream = bool(payload.get("stream"))
    options = payload.get("stream_options")
    include_usage = (
        stream and isinstance(options, dict) and bool(options.get("include_usage"))
    )
    headers = {**provider.extra_headers, **anthropic.upstream_headers(key.get())}
    return Outbound(
        provider=provider.name,
        mode="translated",
        shape="openai",
        method="POST",
        url=provider.endpoint("/v1/messages"),
        headers=headers,
        body=orjson.dumps(body),
        model=str(payload.get("model")),
        own_key=caller.own_key is not None,
        stream=stream,
        include_usage=include_usage,
    )


async def relay_translated(
    outbound: Outbound,
    response: aiohttp.ClientResponse,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
    info: RequestInfo,
) -> None:
    """Send Anthropic's answer to the client in OpenAI's format."""
    created = int(time.time())
    if is_event_stream(response):
        translator = anthropic.StreamTranslator(outbound.include_usage, created)
        transform: Callable[[bytes], bytes] = translator.feed
        meter = outbound.meter
        if meter is not None:
            meter.started = meter.streaming = True

            def transform(chunk: bytes) -> bytes:
                # The translator parses every event: the meter reads its counts.
                out = translator.feed(chunk)
                meter.record(translator.reported_usage, final=translator.final_usage)
                meter.deltas = translator.content_deltas
                return out

        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": _SSE_HEADERS + extra_headers})
        await relay_body(
            response,
            send,
            transform=transform,
            finish=translator.finish,
            broken=translator.finish,
        )
        info.tokens = dict(translator.usage)
        return

    translated = _translated_message(await response.read(), created)
    usage = translated.get("usage") or {}
    if outbound.meter is not None:
        outbound.meter.started = True
        outbound.meter.record(usage, final=True)
    info.tokens = {
        "prompt": int(usage.get("prompt_tokens", 0)),
        "completion": int(usage.get("completion_tokens", 0)),
    }
    body = orjson.dumps(translated)
    await send(
        {"type": "http.response.start", "status": 200,
         "headers": JSON_HEADERS + extra_headers}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def _translated_message(raw: bytes, created: int) -> dict[str, Any]:
    """Anthropic's message as a chat.completion; 502 when it is not a message."""
    try:
        answer = orjson.loads(raw)
        if not isinstance(answer, dict):
            raise TypeError(type(answer).__name__)
        return anthropic.translate_response(answer, created=created)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        logger.warning("Unreadable answer from Anthropic: %s", type(exc).__name__)
        raise UpstreamUnreachable("The provider's answer could not be read.") from exc


def translated_error(
    provider: str, status: int, body: bytes, headers: Any
) -> SubgateError:
    """Anthropic's error answer as the OpenAI-shaped error the client sees."""
    retry_after = headers.get("retry-after")
    return anthropic.translate_error(status, body, retry_after, provider=provider)
