"""Assembles the gateway: routes, the per-request context, and start-up and shutdown."""

from __future__ import annotations

import logging

from gateway_service.auth_proxy import AuthProxy
from gateway_service.callers import CallerAuthenticator
from gateway_service.cost import CostControl
from gateway_service.forwarding import Forwarder
from gateway_service.handler import ApiHandler
from gateway_service.models import ModelCatalog
from gateway_service.providers.config import ProviderRegistry, load_providers
from gateway_service.upstream import UpstreamClient
from shared.asgi import (
    PROBE_PATHS,
    ASGIApp,
    Receive,
    RequestContext,
    Scope,
    Send,
    send_probe,
)
from shared.errors import NotFound
from shared.limits import RateLimiter
from shared.redis import RedisHealth, create_redis
from shared.settings import Settings, merged_environ
from shared.tokens import TokenVerifier
from shared.usage import UsageLedger

logger = logging.getLogger(__name__)


class Gateway:
    """The gateway's ASGI application (without the outer request context)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.draining = False
        self.registry: ProviderRegistry = load_providers(
            settings.providers_file or None, settings, merged_environ()
        )
        self.redis = create_redis(
            settings.redis_url,
            cluster=settings.redis_cluster,
            max_connections=settings.redis_max_connections,
        )
        self.health = RedisHealth(self.redis)
        self.upstream = UpstreamClient(settings)
        limiter = RateLimiter(
            self.redis,
            enabled=settings.rate_limit_enabled,
            health=self.health,
            fail_open=settings.rate_limit_fail_open,
        )
        authenticator = CallerAuthenticator(settings, TokenVerifier(settings))
        forwarder = Forwarder(settings, self.upstream, self.registry)
        catalog = ModelCatalog(
            self.registry, self.upstream, forwarder.openai, settings.model_allowlist
        )
        ledger = UsageLedger(self.redis, health=self.health)
        self.cost = CostControl(settings, self.registry, ledger)
        self.api = ApiHandler(
            settings, authenticator, limiter, forwarder, catalog, self.cost
        )
        self.auth_proxy = AuthProxy(settings, self.upstream)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1/"):
            await self.api(scope, receive, send)
        elif path == "/appstore" or path.startswith("/appstore/"):
            await self.auth_proxy(scope, receive, send)
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

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                _log_features(self.settings, self.registry)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.cost.close()
                await self.upstream.close()
                await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _log_features(settings: Settings, registry: ProviderRegistry) -> None:
    if not settings.openai_api_key:
        logger.warning(
            "OpenAI forwarding is off: OPENAI_API_KEY is not set "
            "(requests answer 503 provider_unavailable)"
        )
    for provider in registry.providers.values():
        if not provider.available:
            logger.warning(
                "Provider %s is off: %s is not set", provider.name, provider.api_key_env
            )
    if not settings.rate_limit_enabled:
        logger.warning("Rate limits are off (RATE_LIMIT_ENABLED=0)")


def create_app(settings: Settings) -> tuple[ASGIApp, Gateway]:
    """The gateway wrapped in its request context, and the gateway itself."""
    gateway = Gateway(settings)
    return RequestContext(gateway, "gateway"), gateway
