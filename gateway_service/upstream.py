"""The one long-lived HTTP client a gateway process uses for every upstream call.

aiohttp was chosen by measurement (see README "Performance"): as a pass-through client
it sustained about twenty times the throughput of httpx on our machines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import aiohttp

from shared import metrics
from shared.errors import UpstreamTimeout, UpstreamUnreachable
from shared.settings import Settings

logger = logging.getLogger(__name__)

# Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Client headers a provider must never see: credentials, cookies, the client's choice of
# account, and headers the upstream client sets itself.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "expect",
}
# Provider headers a client must never see: account names, account-wide limits, cookies,
# and framing the gateway sets itself.
_DROP_RESPONSE = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "set-cookie",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "x-request-id",
    "date",
    "server",
}
_DROP_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "cf-")


def forwardable_request_headers(
    headers: Iterable[tuple[bytes, bytes]], *, drop_prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """The client's headers that may travel on to a provider."""
    raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers]
    listed = _connection_listed(raw)
    return {
        name: value
        for name, value in raw
        if name not in _DROP_REQUEST
        and name not in listed
        and not name.startswith(drop_prefixes)
    }


def relayable_response_headers(
    headers: Mapping[str, str], *, keep_length: bool = False
) -> list[tuple[bytes, bytes]]:
    """The provider's headers that may travel back to the client."""
    listed = _connection_listed(list(headers.items()))
    out = []
    for name, value in headers.items():
        lower = name.lower()
        if lower == "content-length" and keep_length:
            out.append((b"content-length", value.encode("latin-1")))
            continue
        if lower in _DROP_RESPONSE or lower in listed:
            continue
        if lower.startswith(_DROP_RESPONSE_PREFIXES):
            continue
        out.append((lower.encode("latin-1"), value.encode("latin-1")))
    return out


def _connection_listed(headers: list[tuple[str, str]]) -> set[str]:
    """Headers named in a Connection header are hop-by-hop too."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }


class UpstreamClient:
    """A pooled aiohttp session with connect and read timeouts, errors translated."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.upstream_max_connections,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._settings.upstream_connect_timeout,
            sock_read=self._settings.upstream_read_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            # One session serves every user: a provider's cookies (Cloudflare's, for
            # OpenAI) must not be kept and sent back on other users' calls.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        provider: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads and releases the response."""
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        try:
            return await self._session.request(
                method,
                url,
                headers={**headers, "Accept-Encoding": "identity"},
                data=body,
                allow_redirects=False,
            )
        except TimeoutError as exc:
            metrics.UPSTREAM_ERRORS.labels(provider, "timeout").inc()
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            metrics.UPSTREAM_ERRORS.labels(provider, "unreachable").inc()
            logger.warning("Upstream %s unreachable: %s", provider, type(exc).__name__)
            raise UpstreamUnreachable() from exc
