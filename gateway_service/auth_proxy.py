"""`/appstore` and `/appstore/...` go to the auth service, so apps need one base URL."""

from __future__ import annotations

from gateway_service.upstream import (
    UpstreamClient,
    forwardable_request_headers,
    relayable_response_headers,
)
from shared.asgi import Receive, Scope, Send, client_address, read_body, request_info
from shared.errors import NotFound, SubgateError, Unavailable
from shared.settings import Settings

# The auth service's public routes; nothing else under /appstore is forwarded.
AUTH_PATHS = frozenset({"/appstore", "/appstore/notifications"})


class AuthProxy:
    """Relays login and notification requests to AUTH_URL with the client's address."""

    def __init__(self, settings: Settings, upstream: UpstreamClient) -> None:
        self._base = settings.auth_url
        self._upstream = upstream
        self._max_body = settings.max_body_bytes
        self._trusted = settings.trusted_proxies
        self._idle = settings.client_body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope)
        info.route = "/appstore"
        if scope["path"] not in AUTH_PATHS or b"%" in (scope.get("raw_path") or b""):
            raise NotFound()
        body = await read_body(receive, self._max_body, self._idle)
        headers = forwardable_request_headers(scope["headers"])
        # Auth sees one address: the client's, as this gateway worked it out.
        headers["X-Forwarded-For"] = client_address(scope, self._trusted)
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
