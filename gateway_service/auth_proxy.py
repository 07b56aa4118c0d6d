"""`/appstore` and `/appstore/...` go to the auth service, so apps need one base URL."""

from __future__ import annotations

from gateway_service.upstream import (
    UpstreamClient,
    forwardable_request_headers,
    relayable_response_headers,
)
from shared.asgi import Receive, Scope, Send, header, read_body, request_info
from shared.errors import SubgateError, Unavailable
from shared.settings import Settings


class AuthProxy:
    """Relays login and notification requests to AUTH_URL with the client's address."""

    def __init__(self, settings: Settings, upstream: UpstreamClient) -> None:
        self._base = settings.auth_url
        self._upstream = upstream
        self._max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope)
        info.route = "/appstore"
        body = await read_body(receive, self._max_body)
        headers = forwardable_request_headers(scope["headers"])
        headers["X-Forwarded-For"] = _forwarded_for(scope)
        headers["X-Request-ID"] = info.request_id
        query = scope.get("query_string") or b""
        url = (
            self._base
            + scope["path"]
            + (f"?{query.decode('latin-1')}" if query else "")
        )

        try:
            response = await self._upstream.request(
                "auth", scope["method"], url, headers, body or None
            )
        except SubgateError as exc:
            raise Unavailable("The login service is not reachable.") from exc
        try:
            payload = await response.read()
            out_headers = relayable_response_headers(response.headers)
            await send(
                {"type": "http.response.start", "status": response.status,
                 "headers": out_headers}
            )  # fmt: skip
            await send({"type": "http.response.body", "body": payload})
        finally:
            response.release()


def _forwarded_for(scope: Scope) -> str:
    """The client's X-Forwarded-For chain with the address we saw appended."""
    peer = scope.get("client")
    address = peer[0] if peer else "unknown"
    earlier = header(scope, b"x-forwarded-for")
    return f"{earlier}, {address}" if earlier else address
