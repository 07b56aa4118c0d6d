"""Redis outages: one log line each, fail closed or open, and recovery by itself."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio
from redis.asyncio.connection import UnixDomainSocketConnection

from shared.errors import Unavailable
from shared.limits import Limits, LoginLimiter, RateLimiter, is_banned
from shared.redis import RedisHealth, create_redis
from tests.support.redis_server import RedisServer, free_port

USER = "txn:2000000123456789"
LIMITS = Limits(15, 50, 50, 300, 3600, 86400)


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shared.redis"]


async def test_redis_health_logs_once_per_outage_and_recovers(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.redis")
    client = create_redis(own_server.url, cluster=False)
    health = RedisHealth(client)
    limiter = RateLimiter(client, enabled=True, health=health)
    assert (await limiter.check(USER, limits=LIMITS, otid="1")).allowed

    own_server.kill()
    for _ in range(20):
        with pytest.raises(Unavailable):
            await limiter.check(USER, limits=LIMITS, otid="1")
    down = health.healthy
    own_server.start()
    deadline = time.monotonic() + 10
    while not await health.probe() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    assert not down
    assert health.healthy
    assert (await limiter.check(USER, limits=LIMITS, otid="1")).allowed
    lines = _outage_lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("Redis is unreachable")
    assert lines[1].startswith("Redis answers again")
    await client.aclose()


async def test_limiter_fail_open_lets_requests_through_while_down() -> None:
    client = create_redis(f"redis://127.0.0.1:{free_port()}/0", cluster=False)
    health = RedisHealth(client)
    limiter = RateLimiter(client, enabled=True, health=health, fail_open=True)

    decisions = [await limiter.check(USER, limits=LIMITS, otid="1") for _ in range(3)]

    assert all(d.allowed and d.member is None for d in decisions)
    assert not health.healthy
    await client.aclose()


async def test_services_start_while_redis_is_down() -> None:
    client = create_redis(f"redis://127.0.0.1:{free_port()}/0", cluster=False)
    health = RedisHealth(client)
    login = LoginLimiter(client, 5, health=health)

    assert not await health.probe()
    with pytest.raises(Unavailable):
        await login.hit("192.0.2.1")
    with pytest.raises(Unavailable):
        await is_banned(client, USER, health=health)
    await client.aclose()


async def test_redis_health_probe_reports_a_live_server(single_url: str) -> None:
    client = create_redis(single_url, cluster=False)
    health = RedisHealth(client)

    assert await health.probe()
    assert health.healthy
    await client.aclose()


def test_create_redis_accepts_unix_and_tls_urls() -> None:
    unix = create_redis("unix:///tmp/subgate-test.sock", cluster=False)
    tls = create_redis("rediss://127.0.0.1:6380/0", cluster=False)

    assert isinstance(unix, redis.asyncio.Redis)
    unix_kwargs = unix.connection_pool.connection_kwargs
    assert unix_kwargs["path"] == "/tmp/subgate-test.sock"
    assert unix_kwargs["socket_timeout"] == 0.5
    assert issubclass(unix.connection_pool.connection_class, UnixDomainSocketConnection)
    assert issubclass(tls.connection_pool.connection_class, redis.asyncio.SSLConnection)


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 2, "subgate:min:{u}", "subgate:hour:{u}", "", 15, -1),
        ("SET", "clé", b"\x00\xffbytes", 0.1, 1e20, 3600),
        ("CONFIG GET", "maxmemory"),
    ],
)
async def test_commands_are_packed_as_redis_py_packs_them(
    single_url: str, args: tuple[object, ...]
) -> None:
    client = create_redis(single_url, cluster=False)
    connection = client.connection_pool.make_connection()
    plain = redis.asyncio.Connection()

    packed = b"".join(connection.pack_command(*args))

    assert packed == b"".join(plain.pack_command(*args))
    assert type(connection).pack_command is not redis.asyncio.Connection.pack_command
    with pytest.raises(redis.DataError):
        connection.pack_command("SET", "key", None)
    await client.aclose()


def test_redis_health_logs_nothing_while_healthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shared.redis")
    health = RedisHealth()

    for _ in range(5):
        health.record_success()
    for _ in range(5):
        health.record_failure(ConnectionError("refused"))

    assert len(_outage_lines(caplog)) == 1
