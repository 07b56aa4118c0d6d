"""Rate limits, blocks and bans through real gateway processes sharing one Redis: exact
under concurrency, shared by replicas, kept across restarts, lifted by `DEL`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import redis

from tests.conftest import Stack
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ServiceProcess, start_auth, start_gateway
from tests.support.redis_server import RedisCluster, RedisServer

PERMANENT_BLOCK = 30


@dataclass
class Replicas:
    """Auth and three gateways on one Redis of their own."""

    redis: RedisServer
    auth: ServiceProcess
    gateways: list[ServiceProcess]
    stack: Stack

    def token(self, **fields: object) -> str:
        response = httpx.post(
            self.gateways[0].url + "/appstore", content=self.stack.sign(**fields)
        )
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def db(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True)


def limited_env(base_env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {
        **base_env,
        "REDIS_URL": redis_url,
        "USER_MINUTE_RATE_LIMIT": "15",
        "USER_HOURLY_RATE_LIMIT": "1000",
        "USER_PERMANENT_BLOCK": str(PERMANENT_BLOCK),
        "LOGIN_RATE_LIMIT": "3",
    }


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    running_stack: Stack,
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    server = RedisServer(tmp / "redis")
    server.start()
    env = limited_env(base_env, server.url)
    auth = start_auth(tmp, env)
    gateways = [start_gateway(tmp, env, auth.url, name=f"gw{i}") for i in range(3)]
    yield Replicas(server, auth, gateways, running_stack)
    for process in [*gateways, auth]:
        process.stop()
    server.stop()


@pytest.fixture
def fresh(replicas: Replicas) -> Replicas:
    if replicas.redis.process is None:
        replicas.redis.start()
    replicas.db().flushall()
    replicas.stack.openai.reset()
    return replicas


async def _burst(urls: list[str], token: str, count: int) -> list[httpx.Response]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        calls = [
            client.post(
                urls[i % len(urls)] + "/v1/chat/completions", json=body, headers=headers
            )
            for i in range(count)
        ]
        return list(await asyncio.gather(*calls))


def test_exactly_15_of_100_concurrent_requests_pass_across_three_gateways(
    fresh: Replicas,
) -> None:
    token = fresh.token()
    urls = [gateway.url for gateway in fresh.gateways]

    responses = asyncio.run(_burst(urls, token, 100))

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 15
    assert set(statuses) <= {200, 429, 403}
    assert len(fresh.stack.openai.requests) == 15
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.headers["x-should-retry"] == "false" for r in refused)
    assert all(int(r.headers["retry-after"]) > 0 for r in refused)
    assert all(r.json()["error"]["code"] == "rate_limited" for r in refused)


def test_successful_answers_carry_remaining_counts(fresh: Replicas) -> None:
    client = fresh.stack.client(fresh.token())
    client.base_url = httpx.URL(fresh.gateways[1].url + "/v1/")

    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    second = client.models.with_raw_response.list()

    assert first.headers["x-ratelimit-remaining-minute"] == "14"
    assert first.headers["x-ratelimit-remaining-hour"] == "999"
    assert second.headers["x-ratelimit-remaining-minute"] == "13"


def _exhaust(replicas: Replicas, token: str) -> None:
    asyncio.run(_burst([replicas.gateways[0].url], token, 16))


def test_sdks_do_not_retry_refusals_into_more_strikes(fresh: Replicas) -> None:
    token = fresh.token(original_transaction_id="7001")
    _exhaust(fresh, token)
    strikes_before = int(fresh.db().hget("subgate:ban:{txn:7001}", "strikes") or 0)
    openai_client = openai.OpenAI(api_key=token, base_url=fresh.gateways[0].url + "/v1")
    anthropic_client = anthropic.Anthropic(
        api_key=token, base_url=fresh.gateways[0].url
    )

    with pytest.raises(openai.RateLimitError):
        openai_client.models.list()
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
        )

    strikes_after = int(fresh.db().hget("subgate:ban:{txn:7001}", "strikes") or 0)
    assert strikes_after == strikes_before + 2


def _ban(replicas: Replicas, token: str) -> None:
    asyncio.run(_burst([replicas.gateways[0].url], token, 15 + PERMANENT_BLOCK))


def _status(url: str, token: str) -> int:
    headers = {"authorization": f"Bearer {token}"}
    return httpx.get(url + "/v1/models", headers=headers, timeout=10).status_code


def test_ban_survives_restarts_of_every_process_and_del_lifts_it(
    fresh: Replicas, tmp_path: Path
) -> None:
    token = fresh.token(original_transaction_id="7002")
    _ban(fresh, token)
    banned = httpx.get(
        fresh.gateways[2].url + "/v1/models",
        headers={"authorization": f"Bearer {token}"},
    )
    assert banned.status_code == 403
    assert banned.json()["error"]["code"] == "banned"
    assert banned.headers["x-should-retry"] == "false"

    fresh.redis.restart()
    fresh.gateways[0].stop()
    fresh.gateways[0].start(ready_path="/readyz")
    fresh.auth.stop()
    fresh.auth.start(ready_path="/readyz")

    assert _status(fresh.gateways[0].url, token) == 403
    login = httpx.post(
        fresh.gateways[1].url + "/appstore",
        content=fresh.stack.sign(original_transaction_id="7002"),
    )
    assert login.status_code == 403
    assert login.json()["error"]["code"] == "banned"

    fresh.db().delete("subgate:ban:{txn:7002}")
    # No longer banned; the minute window is still full, so the limit applies again.
    assert _status(fresh.gateways[1].url, token) == 429
    fresh.db().delete("subgate:block:{txn:7002}", "subgate:minute:{txn:7002}")
    assert _status(fresh.gateways[1].url, token) == 200


def test_login_attempts_are_limited_per_client_address(fresh: Replicas) -> None:
    def login(address: str) -> httpx.Response:
        return httpx.post(
            fresh.gateways[0].url + "/appstore",
            content=fresh.stack.sign(),
            headers={"x-forwarded-for": address},
        )

    first = [login("203.0.113.7").status_code for _ in range(3)]
    refused = login("203.0.113.7")
    other = login("198.51.100.9")

    assert first == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "login_rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    assert other.status_code == 200


def test_redis_outage_fails_closed_and_recovers(fresh: Replicas) -> None:
    token = fresh.token()
    gateway = fresh.gateways[2]

    fresh.redis.kill()
    refused = [_status(gateway.url, token) for _ in range(5)]
    not_ready = httpx.get(gateway.url + "/readyz")
    fresh.redis.start()
    gateway.wait_for("/readyz", timeout=20)

    assert refused == [503] * 5
    assert not_ready.status_code == 503
    assert _status(gateway.url, token) == 200
    assert gateway.logs().count("Redis is unreachable") == 1


@pytest.fixture(scope="module")
def fail_open_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    running_stack: Stack,
) -> Iterator[tuple[RedisServer, ServiceProcess, Stack]]:
    tmp = tmp_path_factory.mktemp("fail-open")
    server = RedisServer(tmp / "redis")
    env = {**limited_env(base_env, server.url), "RATE_LIMIT_FAIL_OPEN": "1"}
    auth = start_auth(tmp, env)  # Redis is still down: both start anyway
    gateway = start_gateway(tmp, env, auth.url)
    yield server, gateway, running_stack
    gateway.stop()
    auth.stop()
    server.stop()


def test_fail_open_lets_requests_through_while_redis_is_down(
    fail_open_gateway: tuple[RedisServer, ServiceProcess, Stack],
) -> None:
    server, gateway, stack = fail_open_gateway
    token = stack.login()  # minted by the shared stack: same JWT secret

    degraded = httpx.get(gateway.url + "/readyz")
    passed = _status(gateway.url, token)
    server.start()
    gateway.wait_for("/readyz", timeout=20)
    ready = httpx.get(gateway.url + "/readyz").json()

    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert passed == 200
    assert ready["status"] == "ready"


@pytest.mark.cluster
def test_limits_hold_on_a_redis_cluster(
    tmp_path: Path,
    base_env: dict[str, str],
    redis_cluster: RedisCluster,
    running_stack: Stack,
    openai_upstream: FakeOpenAI,
) -> None:
    redis_cluster.flushall()
    env = {**limited_env(base_env, redis_cluster.url), "REDIS_CLUSTER": "1"}
    auth = start_auth(tmp_path, env)
    gateways = [start_gateway(tmp_path, env, auth.url, name=f"c{i}") for i in range(2)]
    try:
        login = httpx.post(gateways[0].url + "/appstore", content=running_stack.sign())
        token = login.json()["token"]
        urls = [gateway.url for gateway in gateways]
        openai_upstream.reset()

        responses = asyncio.run(_burst(urls, token, 40))

        assert [r.status_code for r in responses].count(200) == 15
    finally:
        for process in [*gateways, auth]:
            process.stop()


def test_forwarded_for_that_is_no_address_does_not_dodge_the_login_limit(
    fresh: Replicas,
) -> None:
    statuses = [
        httpx.post(
            fresh.gateways[0].url + "/appstore",
            content=fresh.stack.sign(),
            headers={"x-forwarded-for": f"not-an-address-{i}"},
        ).status_code
        for i in range(4)
    ]

    assert statuses == [200, 200, 200, 429]
