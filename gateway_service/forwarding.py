"""Where a request goes and how its answer comes back: OpenAI and OpenAI-compatible
providers pass through, `/v1/messages` goes to Anthropic natively, and Chat Completions
for Anthropic-routed models are translated both ways.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson

from gateway_service import metering, translation
from gateway_service.callers import Caller
from gateway_service.providers.config import Provider, ProviderRegistry
from gateway_service.relay import is_event_stream, relay_body
from gateway_service.upstream import (
    UpstreamClient,
    forwardable_request_headers,
    relayable_response_headers,
)
from shared import metrics
from shared.asgi import RequestInfo, Scope, Send
from shared.errors import (
    ErrorShape,
    InvalidRequest,
    ProviderUnavailable,
    SubgateError,
    error_body,
)
from shared.identity import provider_user_hash
from shared.settings import Secret, Settings

Mode = Literal["passthrough", "translated"]

ANTHROPIC = "anthropic"
OPENAI = "openai"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# OpenAI endpoints that take an end-user identifier in their JSON body.
_USER_FIELD_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/responses",
    }
)
# OpenAI endpoints whose streams report usage only when asked (stream_options).
_STREAM_USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_MAX_ERROR_BODY = 1 << 20
_KEEP_ERROR_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")


@dataclass
class Outbound:
    """One planned upstream call and how to treat its answer."""

    provider: str
    mode: Mode
    shape: ErrorShape
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    model: str | None = None
    own_key: bool = False
    stream: bool = False
    include_usage: bool = False
    # Usage the gateway asked for (token accounting); dropped when the client did not.
    forced_usage: bool = False
    meter: metering.Meter | None = None


class Forwarder:
    """Plans upstream calls and relays their answers."""

    def __init__(
        self, settings: Settings, upstream: UpstreamClient, registry: ProviderRegistry
    ) -> None:
        self._upstream = upstream
        self._registry = registry
        self.openai = Provider(
            name=OPENAI,
            kind="openai",
            base_url=settings.openai_base_url + "/v1",
            api_key_env="OPENAI_API_KEY",
            api_key=settings.openai_api_key,
        )
        self.openai_organization = settings.openai_organization
        self._force_usage = settings.token_accounting

    # -- planning -------------------------------------------------------------------

    def plan(
        self,
        scope: Scope,
        body: bytes,
        caller: Caller,
        payload: dict[str, Any] | None,
    ) -> Outbound:
        path = scope["path"]
        if path == "/v1/messages" or path.startswith("/v1/messages/"):
            return self._plan_native_anthropic(scope, body, caller, payload)
        if path == "/v1/chat/completions" and payload is not None:
            routed = self._registry.route(_model(payload))
            if routed is not None:
                provider, model_config = routed
                if provider.kind == "anthropic":
                    return translation.plan_translated(
                        provider,
                        model_config,
                        payload,
                        caller,
                        self._key(provider, caller),
                    )
                return self._plan_openai_like(scope, body, caller, payload, provider)
        return self._plan_openai_like(scope, body, caller, payload, self.openai)

    def _plan_openai_like(
        self,
        scope: Scope,
        body: bytes,
        caller: Caller,
        payload: dict[str, Any] | None,
        provider: Provider,
    ) -> Outbound:
        key = self._key(provider, caller)
        headers = forwardable_request_headers(
            scope["headers"], drop_prefixes=("anthropic-",)
        )
        headers.update(provider.extra_headers)
        if key:
            headers["Authorization"] = f"Bearer {key.get()}"
        # The organization belongs to the server's key, never to a caller's own.
        if provider is self.openai and self.openai_organization and not caller.own_key:
            headers["OpenAI-Organization"] = self.openai_organization
        path = scope["path"]
        stream, include_usage = _stream_usage(path, payload)
        forced = stream and not include_usage and self._force_usage
        if payload is not None and forced:
            options = payload.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            payload["stream_options"] = {**options, "include_usage": True}
        if payload is not None and path in _USER_FIELD_PATHS:
            _set_end_user(payload, caller)
            body = orjson.dumps(payload)
        return Outbound(
            provider=provider.name,
            mode="passthrough",
            shape="openai",
            method=scope["method"],
            url=_with_query(provider.endpoint(path), scope),
            headers=headers,
            body=body or None,
            model=_model_name(payload),
            own_key=caller.own_key is not None,
            stream=stream,
            include_usage=include_usage,
            forced_usage=forced,
        )

    def _plan_native_anthropic(
        self,
        scope: Scope,
        body: bytes,
        caller: Caller,
        payload: dict[str, Any] | None,
    ) -> Outbound:
        provider = self._registry.providers[ANTHROPIC]
        key = self._key(provider, caller)
        headers = forwardable_request_headers(
            scope["headers"], drop_prefixes=("openai-",)
        )
        headers.update(provider.extra_headers)
        headers["x-api-key"] = key.get()
        headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
        if payload is not None:
            metadata = payload.get("metadata")
            metadata = dict(metadata) if isinstance(metadata, dict) else {}
            metadata["user_id"] = provider_user_hash(caller.user_id)
            payload["metadata"] = metadata
            body = orjson.dumps(payload)
        return Outbound(
            provider=provider.name,
            mode="passthrough",
            shape="anthropic",
            method=scope["method"],
            url=_with_query(provider.endpoint(scope["path"]), scope),
            headers=headers,
            body=body or None,
            model=_model_name(payload),
            own_key=caller.own_key is not None,
        )

    def _key(self, provider: Provider, caller: Caller) -> Secret:
        """The key for this call: the caller's own (pass-through) or the server's."""
        if caller.own_key is not None:
            wanted = ANTHROPIC if provider.kind == "anthropic" else OPENAI
            if caller.own_key_provider != wanted or provider.name != wanted:
                raise InvalidRequest(
                    "This API key can only be used with its own provider's models."
                )
            return caller.own_key
        if not provider.available:
            raise ProviderUnavailable(
                f"The {provider.name} provider is not configured on this server "
                f"({provider.api_key_env} is not set)."
            )
        return provider.api_key

    # -- delivery -------------------------------------------------------------------

    async def deliver(
        self,
        outbound: Outbound,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
        info: RequestInfo,
    ) -> None:
        outbound.headers["X-Request-ID"] = info.request_id
        started = time.perf_counter()
        response = await self._upstream.request(
            outbound.provider,
            outbound.method,
            outbound.url,
            outbound.headers,
            outbound.body,
        )
        info.upstream_seconds = time.perf_counter() - started
        metrics.labelled(metrics.UPSTREAM_LATENCY, outbound.provider).observe(
            info.upstream_seconds
        )
        try:
            if response.status >= 400:
                await _raise_upstream_error(outbound, response)
            if outbound.mode == "translated":
                await translation.relay_translated(
                    outbound, response, send, extra_headers, info
                )
            else:
                await _relay_passthrough(outbound, response, send, extra_headers)
        finally:
            response.release()


async def _relay_passthrough(
    outbound: Outbound,
    response: aiohttp.ClientResponse,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    encoded = "content-encoding" in response.headers
    headers = relayable_response_headers(response.headers, keep_length=not encoded)
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": headers + extra_headers,
        }
    )
    broken = None
    streaming = is_event_stream(response)
    if streaming:
        shape = outbound.shape
        broken = lambda: sse_error_event(shape)  # noqa: E731
    transform, finish = metering.passthrough_hooks(
        outbound.meter, streaming=streaming, drop_usage_chunk=outbound.forced_usage
    )
    await relay_body(response, send, transform=transform, finish=finish, broken=broken)


def sse_error_event(shape: ErrorShape) -> bytes:
    """The SSE event that tells an SDK the stream failed midway."""
    body = error_body(
        "The provider's stream broke off.",
        "api_error",
        "upstream_unreachable",
        None,
        shape,
    )
    if shape == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


async def _raise_upstream_error(
    outbound: Outbound, response: aiohttp.ClientResponse
) -> None:
    """Turn a provider's error answer into the error the client sees."""
    body = await response.content.read(_MAX_ERROR_BODY)
    status = response.status
    if not outbound.own_key and _refused_server_key(status, body):
        metrics.UPSTREAM_ERRORS.labels(outbound.provider, "key_refused").inc()
        raise ProviderUnavailable(
            f"The {outbound.provider} provider refused this server's credentials."
        )
    if outbound.mode == "translated":
        raise translation.translated_error(
            outbound.provider, status, body, response.headers
        )
    raise RelayedError(status, body, response.headers, outbound.shape)


def _refused_server_key(status: int, body: bytes) -> bool:
    if status in (401, 403):
        return True
    return status == 429 and b"insufficient_quota" in body


class RelayedError(SubgateError):
    """A provider's own error, relayed with its status, body and retry headers."""

    type = "api_error"
    code = "upstream_error"

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: Any,
        shape: ErrorShape,
    ) -> None:
        kept = {name: headers[name] for name in _KEEP_ERROR_HEADERS if name in headers}
        super().__init__(f"The provider answered with status {status}.", headers=kept)
        self.status = status
        self._relayed = body if _is_error_json(body, shape) else None

    def body(self, shape: ErrorShape = "openai") -> bytes:
        if self._relayed is not None:
            return self._relayed
        return super().body(shape)


def _is_error_json(body: bytes, shape: ErrorShape) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return False
    return shape == "openai" or parsed.get("type") == "error"


def _set_end_user(payload: dict[str, Any], caller: Caller) -> None:
    """Providers see Subgate's hash of the user, never the client's own value."""
    user_hash = provider_user_hash(caller.user_id)
    payload["user"] = user_hash
    if "safety_identifier" in payload:
        payload["safety_identifier"] = user_hash


def _stream_usage(path: str, payload: dict[str, Any] | None) -> tuple[bool, bool]:
    """Whether an OpenAI call streams with opt-in usage; whether the client opted in."""
    if (
        payload is None
        or path not in _STREAM_USAGE_PATHS
        or payload.get("stream") is not True
    ):
        return False, False
    options = payload.get("stream_options")
    return True, isinstance(options, dict) and options.get("include_usage") is True


def _model(payload: dict[str, Any] | None) -> str:
    model = payload.get("model") if payload else None
    if not isinstance(model, str) or not model:
        raise InvalidRequest("The request needs a `model`.", param="model")
    return model


def _model_name(payload: dict[str, Any] | None) -> str | None:
    model = payload.get("model") if payload else None
    return model if isinstance(model, str) else None


def _with_query(url: str, scope: Scope) -> str:
    query = scope.get("query_string") or b""
    return f"{url}?{query.decode('latin-1')}" if query else url
