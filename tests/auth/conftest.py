"""Fixtures of the auth tests: the fake App Store Server API (one per module), an
IAP key, and auth services run in-process over ASGI with their own settings (real
Redis, real HTTP to the fakes), for flows whose settings differ from the shared stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis

from auth_service.app import AuthService, create_app
from auth_service.dev_storekit import DevChain
from shared.settings import load_settings
from tests.conftest import APPLE_ID, BUNDLE_ID
from tests.support.fake_appstore import FakeAppStore, IapKey
from tests.support.processes import TEST_JWT_SECRET
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def iap_key() -> IapKey:
    return IapKey()


@pytest.fixture(scope="module")
def fake_appstore_server(iap_key: IapKey) -> Iterator[FakeAppStore]:
    fake = FakeAppStore(iap_key, BUNDLE_ID, int(APPLE_ID))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def appstore(fake_appstore_server: FakeAppStore) -> FakeAppStore:
    """The module's fake App Store Server API, emptied for this test."""
    fake_appstore_server.reset()
    return fake_appstore_server


@dataclass
class LocalAuth:
    """An auth service in this process, reached over ASGI with httpx."""

    service: AuthService
    client: httpx.AsyncClient
    chain: DevChain

    async def login(self, body: str) -> httpx.Response:
        return await self.client.post("/appstore", content=body)

    async def notify(self, signed_payload: str) -> httpx.Response:
        return await self.client.post(
            "/appstore/notifications", json={"signedPayload": signed_payload}
        )

    def sign(self, **fields: Any) -> str:
        fields.setdefault("bundle_id", BUNDLE_ID)
        return self.chain.sign_transaction(**fields)


MakeAuth = Callable[..., Awaitable[LocalAuth]]


def claims_of(token: str) -> dict[str, Any]:
    """The verified claims of a session token."""
    decoded: dict[str, Any] = jwt.decode(
        token, TEST_JWT_SECRET, algorithms=["HS256"], audience="subgate-gateway"
    )
    return decoded


def flush(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


@pytest.fixture
async def make_auth(
    redis_server: RedisServer, roots_dir: Path, dev_chain: DevChain
) -> AsyncIterator[MakeAuth]:
    """Build auth services with the shared defaults plus `env`; Redis starts empty."""
    flush(redis_server)
    made: list[LocalAuth] = []

    async def make(**env: str) -> LocalAuth:
        values = {
            "REDIS_URL": redis_server.url,
            "JWT_SECRET": TEST_JWT_SECRET,
            "APP_BUNDLE_ID": BUNDLE_ID,
            "APP_APPLE_ID": APPLE_ID,
            "APPLE_ROOT_CERTS_DIR": str(roots_dir),
            "APPSTORE_ONLINE_CHECKS": "0",
            "LOGIN_RATE_LIMIT": "1000",
            **env,
        }
        app, service = create_app(load_settings(values, env_file=None))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://auth.test"
        )
        local = LocalAuth(service, client, dev_chain)
        made.append(local)
        return local

    yield make
    for local in made:
        await local.client.aclose()
        local.service.verifier.close()
        if local.service.apple is not None:
            await local.service.apple.close()
        await local.service.redis.aclose()
