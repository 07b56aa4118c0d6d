"""Small pure-ASGI building blocks shared by both services: headers, bodies, answers,
client addresses, and the per-request context that logs, counts and renders errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.errors import ErrorShape, RequestTimeout, RequestTooLarge, SubgateError
from shared.logs import access_logger, request_id_var
from shared.redis import RedisHealth

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

logger = logging.getLogger(__name__)

JSON_HEADERS = [(b"content-type", b"application/json")]
BODY_IDLE_SECONDS = 30.0
_INTERNAL = SubgateError()


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(
    receive: Receive, limit: int, idle_seconds: float = BODY_IDLE_SECONDS
) -> bytes:
    """The whole request body, or RequestTooLarge once it passes `limit` bytes, or
    RequestTimeout when no part of it arrives for `idle_seconds` (a slow client must
    not hold a connection for ever; nginx in front guards header reads)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout() from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


async def send_answer(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = JSON_HEADERS,
) -> None:
    """Send a complete answer in one go."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_headers(error: SubgateError) -> list[tuple[bytes, bytes]]:
    extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return JSON_HEADERS + extra


async def send_error(send: Send, error: SubgateError, shape: ErrorShape) -> None:
    await send_answer(send, error.status, error.body(shape), error_headers(error))


PROBE_PATHS = frozenset({"/healthz", "/readyz"})


async def send_probe(
    path: str, send: Send, health: RedisHealth, *, draining: bool, fail_open: bool
) -> None:
    """Answer `/healthz` (alive) or `/readyz`: not ready while draining, or while
    Redis is unreachable unless the service fails open (then ready but degraded, so a
    load balancer keeps the replica)."""
    if path == "/healthz":
        status, body = 200, b'{"status":"ok"}'
    elif draining:
        status, body = 503, b'{"status":"draining"}'
    elif await health.probe():
        status, body = 200, b'{"status":"ready"}'
    elif fail_open:
        status, body = 200, b'{"status":"degraded","redis":"unreachable"}'
    else:
        status, body = 503, b'{"status":"unavailable","redis":"unreachable"}'
    await send_answer(send, status, body)


def client_address(scope: Scope, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the
    nearest untrusted address in X-Forwarded-For."""
    peer = scope.get("client")
    address = peer[0] if peer else ""
    forwarded = header(scope, b"x-forwarded-for")
    if not forwarded or not _is_trusted(address, trusted):
        return address
    for hop in reversed([item.strip() for item in forwarded.split(",")]):
        if not _is_address(hop):
            break  # not an address a proxy would write: trust nothing further
        address = hop
        if not _is_trusted(hop, trusted):
            break
    return address


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


@dataclass
class RequestInfo:
    """What the handler learnt about a request, for the access log and metrics."""

    request_id: str
    route: str = "other"
    shape: ErrorShape = "openai"
    user: str | None = None
    provider: str | None = None
    model: str | None = None
    upstream_seconds: float | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    status: int = 0


def request_info(scope: Scope) -> RequestInfo:
    info: RequestInfo = scope["subgate"]
    return info


class RequestContext:
    """Outermost middleware: request id, error rendering, one access log line and the
    request metrics per request."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _request_id(scope)
        info = RequestInfo(request_id=request_id)
        scope["subgate"] = info
        token = request_id_var.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self._serve(scope, receive, send_with_id, info)
        finally:
            self._record(scope, info, time.perf_counter() - started)
            request_id_var.reset(token)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, info: RequestInfo
    ) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnected:
            info.status = info.status or 499
        except SubgateError as error:
            if info.status:
                logger.warning("%s after the answer had started", error.code)
                return
            await send_error(send, error, info.shape)
        except Exception:
            logger.error("Unhandled error while serving a request", exc_info=True)
            if not info.status:
                await send_error(send, _INTERNAL, info.shape)

    def _record(self, scope: Scope, info: RequestInfo, seconds: float) -> None:
        service, route, provider = self.service, info.route, info.provider or ""
        metrics.labelled(metrics.REQUESTS, service, route, info.status, provider).inc()
        metrics.labelled(metrics.LATENCY, service, route).observe(seconds)
        access_logger.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            info.status,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": info.status,
                "user": info.user,
                "provider": info.provider,
                "model": info.model,
                "upstream_ms": _millis(info.upstream_seconds),
                "duration_ms": _millis(seconds),
                **({"tokens": info.tokens} if info.tokens else {}),
            },
        )


def _request_id(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return uuid.uuid4().hex


def _millis(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
