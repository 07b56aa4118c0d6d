"""Assembles the auth service: login at `/appstore` (StoreKit 2 JWS, or with
APPSTORE_ACCEPT_LEGACY a receipt or transaction id), App Store Server Notifications at
`/appstore/notifications`, health, start-up and shutdown."""

from __future__ import annotations

import logging

import orjson

from auth_service.apple_api import AppleAPI
from auth_service.appstore import Purchase, PurchaseVerifier, decode_body
from auth_service.notifications import MAX_NOTIFICATION_BODY, NotificationReceiver
from auth_service.receipts import LegacyLogin, looks_like_jws
from auth_service.status import StatusCheck
from shared import metrics
from shared.asgi import (
    PROBE_PATHS,
    ASGIApp,
    Receive,
    RequestContext,
    Scope,
    Send,
    client_address,
    read_body,
    request_info,
    send_answer,
    send_probe,
)
from shared.errors import Banned, LoginRateLimited, NotFound, SubscriptionRequired
from shared.limits import LoginLimiter, is_banned
from shared.redis import RedisHealth, create_redis
from shared.revocations import RevocationStore
from shared.settings import Settings
from shared.tokens import TokenSigner

logger = logging.getLogger(__name__)

# A StoreKit JWS is a few kilobytes; a legacy receipt can reach a few hundred.
MAX_LOGIN_BODY = 1 << 20


class AuthService:
    """The auth service's ASGI application (without the outer request context)."""

    def __init__(
        self, settings: Settings, verifier: PurchaseVerifier | None = None
    ) -> None:
        self.settings = settings
        self.draining = False
        self.redis = create_redis(
            settings.redis_url,
            cluster=settings.redis_cluster,
            max_connections=settings.redis_max_connections,
        )
        self.health = RedisHealth(self.redis)
        self.verifier = verifier or PurchaseVerifier.from_settings(settings)
        self.signer = TokenSigner(settings)
        self.revocations = RevocationStore(self.redis, health=self.health)
        self.apple = AppleAPI.from_settings(settings, self.redis, self.health)
        self.legacy = LegacyLogin(settings, self.verifier, self.apple)
        self.status_check = StatusCheck.from_settings(settings, self.apple)
        self.notifications = NotificationReceiver(self.verifier, self.revocations)
        for line in self.legacy.describe():
            logger.info("%s", line)
        self.login_limiter = LoginLimiter(
            self.redis,
            settings.login_rate_limit,
            health=self.health,
            fail_open=settings.rate_limit_fail_open,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/appstore" and method == "POST":
            await self.login(scope, receive, send)
        elif path == "/appstore/notifications" and method == "POST":
            await self.notification(scope, receive, send)
        elif path in PROBE_PATHS:
            await send_probe(
                path,
                send,
                self.health,
                draining=self.draining,
                fail_open=self.settings.rate_limit_fail_open,
            )
        else:
            raise NotFound()

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Turn proof of a purchase into a session token."""
        info = request_info(scope)
        info.route = "/appstore"
        address = client_address(scope, self.settings.trusted_proxies)
        retry_after = await self.login_limiter.hit(address)
        if retry_after is not None:
            metrics.LOGINS.labels("rate_limited").inc()
            raise LoginRateLimited(retry_after)

        text = decode_body(
            await read_body(
                receive, MAX_LOGIN_BODY, self.settings.client_body_timeout_seconds
            )
        )
        try:
            purchase = await self._purchase(text)
        except SubscriptionRequired:
            metrics.LOGINS.labels("refused").inc()
            raise
        info.user = purchase.user_id
        await self._check_standing(purchase.user_id, purchase.original_transaction_id)

        token, expires_at = self.signer.mint(
            purchase.user_id,
            original_transaction_id=purchase.original_transaction_id,
            environment=purchase.environment,
            product_id=purchase.product_id,
            not_after=purchase.expires_at,
        )
        metrics.LOGINS.labels("ok").inc()
        body = orjson.dumps({"token": token, "expires_at": expires_at})
        await send_answer(send, 200, body)

    async def _purchase(self, text: str) -> Purchase:
        """The purchase a login body proves: a JWS (with the current-status check
        when it is on), or a legacy receipt or transaction id."""
        if not looks_like_jws(text):
            return await self.legacy.verify(text)
        purchase = await self.verifier.verify_transaction(text)
        if self.status_check is not None:
            await self.status_check.confirm(purchase)
        return purchase

    async def notification(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An App Store Server Notification V2 (not limited by LOGIN_RATE_LIMIT)."""
        request_info(scope).route = "/appstore/notifications"
        raw = await read_body(
            receive, MAX_NOTIFICATION_BODY, self.settings.client_body_timeout_seconds
        )
        outcome = await self.notifications.receive(raw)
        await send_answer(send, 200, orjson.dumps({"status": outcome}))

    async def _check_standing(self, user: str, otid: str) -> None:
        """Banned users and revoked purchases get no token."""
        if await is_banned(self.redis, user, health=self.health):
            metrics.LOGINS.labels("banned").inc()
            raise Banned()
        if await self.revocations.is_revoked(user, otid):
            metrics.LOGINS.labels("revoked").inc()
            raise SubscriptionRequired("This purchase has been refunded or revoked.")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.verifier.close()
                if self.apple is not None:
                    await self.apple.close()
                await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> tuple[ASGIApp, AuthService]:
    """The auth service wrapped in its request context, and the service itself."""
    service = AuthService(settings)
    return RequestContext(service, "auth"), service
