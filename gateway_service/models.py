"""`GET /v1/models`: OpenAI's models and every model routed to another provider, in
OpenAI's list format, fetched from each provider and cached for a minute.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from datetime import datetime
from typing import Any

import orjson

from gateway_service.providers.anthropic import ANTHROPIC_VERSION
from gateway_service.providers.config import Provider, ProviderRegistry
from gateway_service.upstream import UpstreamClient
from shared.asgi import JSON_HEADERS, Send
from shared.errors import SubgateError

logger = logging.getLogger(__name__)

CACHE_SECONDS = 60.0
_LIST_TIMEOUT_SECONDS = 10.0


class ModelCatalog:
    """Lists the models a subscriber may use; a failing provider is left out."""

    def __init__(
        self,
        registry: ProviderRegistry,
        upstream: UpstreamClient,
        openai: Provider,
        allowlist: tuple[str, ...] = (),
    ) -> None:
        self._registry = registry
        self._allowlist = allowlist
        self._upstream = upstream
        self._openai = openai
        self._cached: tuple[float, bytes] | None = None
        self._lock = asyncio.Lock()

    async def send_list(
        self, send: Send, extra_headers: list[tuple[bytes, bytes]]
    ) -> None:
        body = await self._listing()
        await send(
            {"type": "http.response.start", "status": 200,
             "headers": JSON_HEADERS + extra_headers}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    def routed_model(self, model_id: str) -> dict[str, Any] | None:
        """The model object for a model another provider serves, else None."""
        routed = self._registry.route(model_id)
        if routed is None or not self._allowed(model_id):
            return None
        return _model_object(model_id, 0, routed[0].name)

    def _allowed(self, model_id: str) -> bool:
        """Whether MODEL_ALLOWLIST (empty: every model) lets subscribers use it."""
        if not self._allowlist:
            return True
        return any(fnmatch.fnmatchcase(model_id, glob) for glob in self._allowlist)

    async def _listing(self) -> bytes:
        async with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            body = orjson.dumps({"object": "list", "data": await self._collect()})
            self._cached = (now, body)
            return body

    async def _collect(self) -> list[dict[str, Any]]:
        providers = [self._openai] + [
            p for p in self._registry.providers.values() if p.available
        ]
        lists = await asyncio.gather(*(self._provider_models(p) for p in providers))
        seen: dict[str, dict[str, Any]] = {}
        for models in lists:
            for model in models:
                seen.setdefault(model["id"], model)
        for name in self._registry.routed_models():
            route = self._registry.route(name)
            if route is not None and route[0].available:
                seen.setdefault(name, _model_object(name, 0, route[0].name))
        return [model for model in seen.values() if self._allowed(model["id"])]

    async def _provider_models(self, provider: Provider) -> list[dict[str, Any]]:
        if not provider.available:
            return []
        try:
            async with asyncio.timeout(_LIST_TIMEOUT_SECONDS):
                raw = await self._fetch(provider)
        except (SubgateError, TimeoutError, ValueError) as exc:
            logger.warning("Could not list %s's models: %s", provider.name, exc)
            return []
        return [m for m in raw if self._serves(provider, m["id"])]

    def _serves(self, provider: Provider, model_id: str) -> bool:
        """Whether requests for this model would actually reach this provider."""
        routed = self._registry.route(model_id)
        if provider is self._openai:
            return routed is None
        return routed is not None and routed[0].name == provider.name

    async def _fetch(self, provider: Provider) -> list[dict[str, Any]]:
        if provider.kind == "anthropic":
            url = provider.endpoint("/v1/models") + "?limit=1000"
            headers = {"x-api-key": provider.api_key.get(),
                       "anthropic-version": ANTHROPIC_VERSION}  # fmt: skip
        else:
            url = provider.endpoint("/v1/models")
            headers = {"Authorization": f"Bearer {provider.api_key.get()}"}
        headers.update(provider.extra_headers)
        response = await self._upstream.request(
            provider.name, "GET", url, headers, None
        )
        try:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            payload = orjson.loads(await response.read())
        finally:
            response.release()
        return [_normalise(item, provider.name) for item in payload.get("data", [])]


def _normalise(item: dict[str, Any], owner: str) -> dict[str, Any]:
    """A provider's model entry as an OpenAI model object."""
    created = item.get("created")
    if not isinstance(created, int):
        created = _unix(item.get("created_at"))
    return _model_object(str(item["id"]), created, item.get("owned_by") or owner)


def _model_object(model_id: str, created: int, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def _unix(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
