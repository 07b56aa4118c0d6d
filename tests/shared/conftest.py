"""Real Redis-protocol servers for the shared package's tests.

The session's single node and three-node Cluster come from tests/conftest.py (the
Cluster starts only when a test asks for it); every test starts from empty databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from shared.redis import AsyncRedis, create_redis
from tests.support.redis_server import RedisCluster, RedisServer


@pytest.fixture
def single_url(redis_server: RedisServer) -> str:
    """The single node's URL, emptied for this test (restarted if a test stopped it)."""
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def topology(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(url, cluster) for a single node and for a three-node Cluster."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_url"), True
    return request.getfixturevalue("single_url"), False


@pytest.fixture
async def redis_client(topology: tuple[str, bool]) -> AsyncIterator[AsyncRedis]:
    url, cluster = topology
    client = create_redis(url, cluster=cluster)
    yield client
    await client.aclose()


@pytest.fixture
async def single_client(single_url: str) -> AsyncIterator[AsyncRedis]:
    client = create_redis(single_url, cluster=False)
    yield client
    await client.aclose()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, which it may kill or restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()
