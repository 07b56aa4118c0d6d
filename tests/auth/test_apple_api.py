"""AppleAPI against the fake App Store Server API: Apple's formats, the cache, and
backoff after 429s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from auth_service.apple_api import AppleAPI, AppleBusy, AppleUnavailable
from shared.redis import create_redis
from shared.settings import load_settings
from tests.conftest import BUNDLE_ID
from tests.support.fake_appstore import (
    INTERNAL,
    NOT_FOUND,
    RATE_LIMITED,
    FakeAppStore,
    Subscription,
    apple_error,
)
from tests.support.processes import TEST_JWT_SECRET
from tests.support.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


MakeApi = Callable[[], Awaitable[tuple[AppleAPI, Clock]]]


@pytest.fixture
async def make_api(
    redis_server: RedisServer, appstore: FakeAppStore
) -> AsyncIterator[MakeApi]:
    made: list[AppleAPI] = []
    client = create_redis(redis_server.url, cluster=False)
    await client.flushall()

    async def make() -> tuple[AppleAPI, Clock]:
        values = {
            "JWT_SECRET": TEST_JWT_SECRET,
            "APP_BUNDLE_ID": BUNDLE_ID,
            "APPSTORE_STATUS_CACHE_SECONDS": "60",
            **appstore.env(),
        }
        settings = load_settings(values, env_file=None)
        built = AppleAPI.from_settings(settings, client)
        assert built is not None
        clock = Clock()
        api = AppleAPI(
            built._clients, client, cache_seconds=60, clock=clock
        )  # same clients, a clock the test moves
        made.append(api)
        return api, clock

    yield make
    for api in made:
        await api.close()
    await client.aclose()


def _active(otid: str) -> Subscription:
    return Subscription(1, otid, f"signed-{otid}")


def test_apple_api_fake_speaks_apples_error_format(appstore: FakeAppStore) -> None:
    response = httpx.get(appstore.url("Production") + "/inApps/v1/transactions/1")

    assert response.status_code == 401  # no bearer token: Apple's empty 401
    assert response.content == b""
    appstore.queue(apple_error(404, NOT_FOUND))
    response = httpx.get(appstore.url("Production") + "/inApps/v1/transactions/1")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "errorCode": 4040010,
        "errorMessage": "Transaction id not found.",
    }


async def test_apple_api_production_then_sandbox(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, _ = await make_api()
    appstore.add_subscription("Sandbox", _active("5000000001"))

    lookup = await api.statuses("5000000001", ("Production", "Sandbox"))

    assert lookup.environment == "Sandbox"
    assert lookup.status_of("5000000001") == 1
    assert lookup.subscriptions[0].signed_transaction == "signed-5000000001"


async def test_apple_api_not_found_anywhere(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, _ = await make_api()

    lookup = await api.statuses("5000000002", ("Production", "Sandbox"))

    assert lookup.environment is None and lookup.subscriptions == ()


async def test_apple_api_sends_apples_bearer_token(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, _ = await make_api()
    appstore.add_subscription("Production", _active("5000000003"))

    lookup = await api.statuses("5000000003", ("Production",))

    # The fake answers only requests whose ES256 token names our key and bundle.
    assert lookup.environment == "Production"
    assert appstore.requests[-1].headers["authorization"].startswith("Bearer ")


async def test_apple_api_fresh_cache_spares_apple(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, clock = await make_api()
    appstore.add_subscription("Production", _active("5000000004"))

    await api.statuses("5000000004", ("Production",))
    clock.now += 30
    await api.statuses("5000000004", ("Production",))
    assert len(appstore.api_requests()) == 1
    clock.now += 31
    await api.statuses("5000000004", ("Production",))
    assert len(appstore.api_requests()) == 2


async def test_apple_api_429_answered_from_stale_cache_then_backoff(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, clock = await make_api()
    appstore.add_subscription("Production", _active("5000000005"))
    await api.statuses("5000000005", ("Production",))
    clock.now += 120
    appstore.queue(apple_error(429, RATE_LIMITED))

    stale = await api.statuses("5000000005", ("Production",))
    during = await api.statuses("5000000005", ("Production",))

    assert stale.status_of("5000000005") == during.status_of("5000000005") == 1
    assert len(appstore.api_requests()) == 2  # the 429, then no call while backing off
    clock.now += 1.5
    await api.statuses("5000000005", ("Production",))
    assert len(appstore.api_requests()) == 3


async def test_apple_api_backoff_doubles_after_repeated_429s(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, clock = await make_api()
    delays = []
    for _ in range(3):
        appstore.queue(apple_error(429, RATE_LIMITED))
        with pytest.raises(AppleBusy) as caught:
            await api.statuses("5000000006", ("Production",))
        delays.append(caught.value.retry_after)
        assert caught.value.headers["Retry-After"] == str(caught.value.retry_after)
        clock.now += caught.value.retry_after

    assert delays == [1, 2, 4]


async def test_apple_api_outage_answered_from_stale_cache(
    make_api: MakeApi, appstore: FakeAppStore
) -> None:
    api, clock = await make_api()
    appstore.add_subscription("Production", _active("5000000007"))
    await api.statuses("5000000007", ("Production",))
    clock.now += 120
    appstore.queue(apple_error(500, INTERNAL))

    lookup = await api.statuses("5000000007", ("Production",))

    assert lookup.status_of("5000000007") == 1
    appstore.queue(apple_error(500, INTERNAL))
    with pytest.raises(AppleUnavailable):
        await api.statuses("5000000008", ("Production",))
