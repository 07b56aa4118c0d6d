"""The App Store Server API, as the auth service uses it: subscription statuses and
transaction info, Production first and Sandbox when Apple answers "not found",
answers cached in Redis, and Apple's 429s answered with backoff and the cache.

Apple's `AsyncAppStoreServerAPIClient` does the requests; it fixes its base URL from
the environment when built (its `_base_url` attribute), so `_Client` replaces that
one attribute with APPSTORE_API_URL_PRODUCTION or APPSTORE_API_URL_SANDBOX, and the
library's 30-second request timeout with a shorter one. Nothing else changes.

Cached lookups live at `subgate:appstore:<kind>:<environments>:<transaction id>` as
JSON `{"at": <unix seconds>, "v": <answer>}`: fresh for APPSTORE_STATUS_CACHE_SECONDS,
kept for STALE_SECONDS more, used only while Apple is rate limiting or unreachable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from appstoreserverlibrary.api_client import (
    APIError,
    APIException,
    AsyncAppStoreServerAPIClient,
)
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.StatusResponse import StatusResponse

from shared.errors import Unavailable
from shared.redis import AsyncRedis, RedisHealth, deadline, unavailable_on_failure
from shared.settings import Settings

logger = logging.getLogger(__name__)

API_ENVIRONMENTS = ("Production", "Sandbox")
REQUEST_TIMEOUT_SECONDS = 10.0
STALE_SECONDS = 3600
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# Apple's "no such transaction here": try the next environment.
NOT_FOUND = {
    APIError.TRANSACTION_ID_NOT_FOUND,
    APIError.ORIGINAL_TRANSACTION_ID_NOT_FOUND,
    APIError.ACCOUNT_NOT_FOUND,
    APIError.ACCOUNT_NOT_FOUND_RETRYABLE,
    APIError.APP_NOT_FOUND,
    APIError.APP_NOT_FOUND_RETRYABLE,
}
NOT_CONFIGURED = (
    "Receipts and transaction ids need App Store Server API credentials: set "
    "IAP_PRIVATE_KEY, IAP_ISSUER_ID and IAP_KEY_ID."
)
APPLE_DOWN = "Apple's App Store Server API could not be reached; try again."
APPLE_BUSY = "Apple's App Store Server API is rate limiting this server; try again."
APPLE_REFUSED = "Apple's App Store Server API refused this server's credentials."


class AppleUnavailable(Unavailable):
    """The App Store Server API gave no usable answer and nothing is cached."""


class AppleBusy(AppleUnavailable):
    """Apple answered 429 (or we are backing off after one)."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(APPLE_BUSY, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


@dataclass(frozen=True)
class SubscriptionEntry:
    """One subscription of a status answer: Apple's status and its signed data."""

    status: int
    original_transaction_id: str
    signed_transaction: str
    signed_renewal: str | None


@dataclass(frozen=True)
class StatusLookup:
    """What Apple said about a transaction id: where, and its subscriptions."""

    environment: str | None  # None: not found in any environment asked
    subscriptions: tuple[SubscriptionEntry, ...] = ()

    def status_of(self, original_transaction_id: str) -> int | None:
        for entry in self.subscriptions:
            if entry.original_transaction_id == original_transaction_id:
                return entry.status
        return None


@dataclass(frozen=True)
class TransactionLookup:
    """A transaction's signed data and where it was found (None: nowhere)."""

    environment: str | None
    signed_transaction: str | None = None


class _Client(AsyncAppStoreServerAPIClient):
    """Apple's async client at a configured base URL, with a shorter timeout."""

    def __init__(
        self,
        settings: Settings,
        environment: Environment,
        base_url: str,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(
            settings.iap_private_key.get().encode("utf-8"),
            settings.iap_key_id,
            settings.iap_issuer_id,
            settings.app_bundle_id,
            environment,
        )
        self._base_url = base_url
        self._timeout = timeout

    async def _execute_request(  # type: ignore[no-untyped-def]
        self,
        method: str,
        url: str,
        params: Any,
        headers: dict[str, str],
        json: Any,
        data: bytes | None,
    ):
        return await self.http_client.request(
            method,
            url,
            params=params,
            headers=headers,
            json=json,
            content=data,
            timeout=self._timeout,
        )


class _Backoff:
    """After a 429: no calls to Apple for a while, doubling up to a limit."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._delay = 0.0
        self._until = 0.0

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def hit(self) -> float:
        self._delay = min(
            BACKOFF_MAX_SECONDS, max(BACKOFF_FIRST_SECONDS, self._delay * 2)
        )
        self._until = self._clock() + self._delay
        return self._delay

    def clear(self) -> None:
        self._delay = 0.0


class AppleAPI:
    """Lookups in the App Store Server API with Redis caching and backoff."""

    def __init__(
        self,
        clients: dict[str, AsyncAppStoreServerAPIClient],
        redis: AsyncRedis,
        *,
        cache_seconds: int,
        health: RedisHealth | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients = clients
        self._redis = redis
        self._health = health
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._backoff = {name: _Backoff(clock) for name in clients}

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: AsyncRedis, health: RedisHealth | None = None
    ) -> AppleAPI | None:
        """The API with both environments' clients, or None without credentials."""
        if not settings.appstore_credentials or not settings.app_bundle_id:
            return None
        urls = {
            "Production": settings.appstore_api_url_production,
            "Sandbox": settings.appstore_api_url_sandbox,
        }
        try:
            clients: dict[str, AsyncAppStoreServerAPIClient] = {
                name: _Client(settings, Environment(name), url)
                for name, url in urls.items()
            }
        except ValueError:
            logger.error(
                "IAP_PRIVATE_KEY is not a PKCS#8 PEM private key; the App Store "
                "Server API is off."
            )
            return None
        return cls(
            clients,
            redis,
            cache_seconds=settings.appstore_status_cache_seconds,
            health=health,
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.async_close()  # type: ignore[no-untyped-call]

    async def statuses(
        self, transaction_id: str, environments: Sequence[str]
    ) -> StatusLookup:
        """The subscriptions of the customer who made `transaction_id`."""
        value = await self._cached(
            f"status:{','.join(environments)}:{transaction_id}",
            lambda: self._fetch_statuses(transaction_id, environments),
        )
        return StatusLookup(
            value.get("env"),
            tuple(SubscriptionEntry(**item) for item in value.get("subs", [])),
        )

    async def transaction(
        self, transaction_id: str, environments: Sequence[str]
    ) -> TransactionLookup:
        """The signed transaction `transaction_id` names."""
        value = await self._cached(
            f"transaction:{','.join(environments)}:{transaction_id}",
            lambda: self._fetch_transaction(transaction_id, environments),
        )
        return TransactionLookup(value.get("env"), value.get("jws"))

    # --- fetching, Production first

    async def _fetch_statuses(
        self, transaction_id: str, environments: Sequence[str]
    ) -> dict[str, Any]:
        for name in environments:
            try:
                response = await self._call(
                    name,
                    self._clients[name].get_all_subscription_statuses(transaction_id),
                )
            except _NotFound:
                continue
            return {"env": name, "subs": _entries(response)}
        return {"env": None}

    async def _fetch_transaction(
        self, transaction_id: str, environments: Sequence[str]
    ) -> dict[str, Any]:
        for name in environments:
            try:
                response = await self._call(
                    name, self._clients[name].get_transaction_info(transaction_id)
                )
            except _NotFound:
                continue
            return {"env": name, "jws": response.signedTransactionInfo}
        return {"env": None}

    async def _call(self, name: str, request: Awaitable[Any]) -> Any:
        """One request to Apple; its failures as `_NotFound` or AppleUnavailable."""
        backoff = self._backoff[name]
        waiting = backoff.remaining()
        if waiting > 0:
            _close(request)
            raise AppleBusy(waiting)
        try:
            answer = await request
        except APIException as exc:
            raise self._failure(name, exc) from exc
        except (httpx.HTTPError, OSError) as exc:
            logger.warning("App Store Server API (%s) unreachable: %r", name, exc)
            raise AppleUnavailable(APPLE_DOWN) from exc
        backoff.clear()
        return answer

    def _failure(self, name: str, exc: APIException) -> Exception:
        status = exc.http_status_code
        if exc.api_error in NOT_FOUND or (status == 404 and exc.raw_api_error is None):
            return _NotFound()
        if status == 429:
            delay = self._backoff[name].hit()
            logger.warning(
                "App Store Server API (%s) answered 429; pausing calls for %.0f s",
                name,
                delay,
            )
            return AppleBusy(delay)
        if status in (401, 403):
            logger.error(
                "App Store Server API (%s) answered %d: %s",
                name,
                status,
                "check IAP_PRIVATE_KEY, IAP_ISSUER_ID and IAP_KEY_ID",
            )
            return AppleUnavailable(APPLE_REFUSED)
        if status >= 500:
            logger.warning(
                "App Store Server API (%s) answered %d (%s)",
                name,
                status,
                exc.raw_api_error,
            )
            return AppleUnavailable(APPLE_DOWN)
        # 400s: an id Apple considers malformed; nothing to find anywhere.
        logger.info(
            "App Store Server API (%s) answered %d (%s)",
            name,
            status,
            exc.raw_api_error,
        )
        return _NotFound()

    # --- the cache

    async def _cached(
        self, key: str, fetch: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """A fresh cached answer, else Apple's, else (Apple failing) a stale one."""
        cached = await self._read(key)
        now = self._clock()
        if cached is not None and now - cached["at"] < self._cache_seconds:
            value: dict[str, Any] = cached["v"]
            return value
        try:
            value = await fetch()
        except AppleUnavailable:
            if cached is None:
                raise
            logger.info("Using a cached App Store answer while Apple is unavailable")
            stale: dict[str, Any] = cached["v"]
            return stale
        await self._write(key, {"at": now, "v": value})
        return value

    async def _read(self, key: str) -> dict[str, Any] | None:
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                raw = await self._redis.get(_cache_key(key))
        if raw is None:
            return None
        try:
            value: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value

    async def _write(self, key: str, value: dict[str, Any]) -> None:
        if self._cache_seconds == 0:
            return
        ttl = self._cache_seconds + STALE_SECONDS
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                await self._redis.set(_cache_key(key), orjson.dumps(value), ex=ttl)


class _NotFound(Exception):
    """Apple does not know this id in this environment."""


def _cache_key(key: str) -> str:
    return f"subgate:appstore:{key}"


def _entries(response: StatusResponse) -> list[dict[str, Any]]:
    """The subscriptions of a status answer, as plain data for the cache."""
    entries = []
    for group in response.data or []:
        for item in group.lastTransactions or []:
            if item.rawStatus is None or not item.signedTransactionInfo:
                continue
            entries.append(
                {
                    "status": item.rawStatus,
                    "original_transaction_id": item.originalTransactionId or "",
                    "signed_transaction": item.signedTransactionInfo,
                    "signed_renewal": item.signedRenewalInfo,
                }
            )
    return entries


def _close(request: Awaitable[Any]) -> None:
    """Close a coroutine that will not be awaited (no "never awaited" warning)."""
    close = getattr(request, "close", None)
    if close is not None:
        close()
