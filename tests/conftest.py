"""Fixtures for the whole suite: real Redis servers, fake providers, a development
StoreKit chain, and a running Subgate stack (auth + gateway processes on loopback).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from auth_service.dev_storekit import DevChain
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import (
    ServiceProcess,
    service_env,
    start_auth,
    start_gateway,
)
from tests.support.redis_server import RedisCluster, RedisServer

BUNDLE_ID = "com.example.subgate"
APPLE_ID = "1234567890"
SERVER_OPENAI_KEY = "sk-server-openai-key-for-tests-000000000000"
SERVER_ANTHROPIC_KEY = "sk-ant-server-anthropic-key-for-tests-0000000"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def dev_chain(tmp_path_factory: pytest.TempPathFactory) -> DevChain:
    return DevChain.create()


@pytest.fixture(scope="session")
def roots_dir(tmp_path_factory: pytest.TempPathFactory, dev_chain: DevChain) -> Path:
    """A trusted-roots folder holding only the development root."""
    directory = tmp_path_factory.mktemp("roots")
    dev_chain.write_root(directory)
    return directory


@pytest.fixture(scope="session")
def openai_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
def anthropic_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="session")
def base_env(
    redis_server: RedisServer,
    roots_dir: Path,
    openai_upstream: FakeOpenAI,
    anthropic_upstream: FakeAnthropic,
) -> dict[str, str]:
    """The environment of the shared stack; tests that need other settings copy it."""
    return service_env(
        REDIS_URL=redis_server.url,
        APP_BUNDLE_ID=BUNDLE_ID,
        APP_APPLE_ID=APPLE_ID,
        APPLE_ROOT_CERTS_DIR=str(roots_dir),
        OPENAI_API_KEY=SERVER_OPENAI_KEY,
        OPENAI_BASE_URL=openai_upstream.base_url + "/v1",
        ANTHROPIC_API_KEY=SERVER_ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=anthropic_upstream.base_url,
        USER_MINUTE_RATE_LIMIT="1000",
        USER_HOURLY_RATE_LIMIT="10000",
        LOGIN_RATE_LIMIT="1000",
    )


@dataclass
class Stack:
    """A running auth service and gateway, with helpers to use them."""

    auth: ServiceProcess
    gateway: ServiceProcess
    chain: DevChain
    openai: FakeOpenAI
    anthropic: FakeAnthropic
    redis_url: str
    logs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def sign(self, **fields: Any) -> str:
        fields.setdefault("bundle_id", BUNDLE_ID)
        return self.chain.sign_transaction(**fields)

    def login(self, **fields: Any) -> str:
        """Log in with a freshly signed transaction; returns the session token."""
        response = httpx.post(self.url + "/appstore", content=self.sign(**fields))
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    def client(self, token: str, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        return openai.OpenAI(api_key=token, base_url=self.url + "/v1", **options)

    def stop(self) -> None:
        self.gateway.stop()
        self.auth.stop()


def start_stack(
    tmp: Path,
    env: dict[str, str],
    chain: DevChain,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    redis_url: str,
) -> Stack:
    """Auth and a gateway with `env`, in front of the session's fakes."""
    auth = start_auth(tmp, env)
    gateway = start_gateway(tmp, env, auth.url)
    return Stack(auth, gateway, chain, openai_fake, anthropic_fake, redis_url)


@pytest.fixture(scope="session")
def running_stack(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    dev_chain: DevChain,
    openai_upstream: FakeOpenAI,
    anthropic_upstream: FakeAnthropic,
    redis_server: RedisServer,
) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("stack"),
        base_env,
        dev_chain,
        openai_upstream,
        anthropic_upstream,
        redis_server.url,
    )
    yield stack
    stack.stop()


@pytest.fixture
def stack(running_stack: Stack, redis_server: RedisServer) -> Stack:
    """The shared stack with empty Redis and fresh fakes for this test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    running_stack.openai.reset()
    running_stack.anthropic.reset()
    return running_stack
