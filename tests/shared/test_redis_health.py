"""Redis outages: one log line each, fail closed or open, and recovery by itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio.connection import UnixDomainSocketConnection

from auth_service.apple_api import AppleAPI
from shared.errors import Unavailable
from shared.limits import Decision, Limits, LoginLimiter, RateLimiter, is_banned
from shared.redis import OPERATION_TIMEOUT_SECONDS, RedisHealth, create_redis
from shared.revocations import RevocationStore
from shared.usage import Budget, Charge, Reservation, SettlementBatcher, UsageLedger
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
    assert unix_kwargs["socket_connect_timeout"] == 0.5
    assert unix_kwargs["socket_timeout"] is None  # each operation has its deadline
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


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    """A server that accepts connections and reads, but never answers (a frozen
    Redis, or one behind a dropped network path)."""

    async def swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_every_operation_gives_up_within_its_deadline(
    silent_url: str, cluster: bool
) -> None:
    """The asyncio clients have no socket timeout: each operation's own deadline is
    what stops a silent Redis from holding a request (a Cluster client's slot
    discovery included)."""
    client = create_redis(silent_url, cluster=cluster)
    health = RedisHealth(client)
    limiter = RateLimiter(client, enabled=True, health=health)
    unlimited = RateLimiter(client, enabled=False, health=health)
    ledger = UsageLedger(client, health=health)
    revocations = RevocationStore(client, health=health)
    apple = AppleAPI({}, client, cache_seconds=60, health=health)
    batcher = SettlementBatcher(ledger)
    reservation = Reservation.new(10, Budget(daily=1000))
    decision = Decision(allowed=True, reason="ok", member="m")
    unavailable = {
        # Three at once: the limiter's script sends the second and third together.
        **{
            f"check{n}": limiter.check(f"{USER}{n}", limits=LIMITS, otid="1")
            for n in range(3)
        },
        "check, limits off": unlimited.check(
            USER, limits=LIMITS, otid="1", reservation=reservation
        ),
        "login": LoginLimiter(client, 5, health=health).hit("203.0.113.9"),
        "is_banned": is_banned(client, USER, health=health),
        "reserve": ledger.reserve(USER, reservation),
        "report": ledger.report(USER),
        "revoke": revocations.revoke(USER, "1"),
        "restore": revocations.restore(USER, "1"),
        "is_revoked": revocations.is_revoked(USER, "1"),
        "revoked": revocations.revoked(USER),
        "apply": revocations.apply(
            USER, "1", revoke=True, notification_uuid="u", signed_date_ms=1
        ),
        "apple cache read": apple._read("k"),
        "apple cache write": apple._write("k", {"at": 0, "v": {}}),
    }
    batcher.add(USER, 1, 1)
    quiet = {
        "give_back": limiter.give_back(USER, decision),
        "settle_many": ledger.settle_many(USER, Charge(1, 1, 1)),
        "settle_batch": ledger.settle_batch({USER: Charge(1, 1, 1), "u2": Charge()}),
        "batcher close": batcher.close(),
        "probe": health.probe(),
    }
    started = time.monotonic()
    try:
        async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS + 3):  # one without: fails
            outcomes = await asyncio.gather(
                *unavailable.values(), *quiet.values(), return_exceptions=True
            )
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()

    named = dict(zip([*unavailable, *quiet], outcomes, strict=True))
    for name in unavailable:
        assert isinstance(named[name], Unavailable), (name, named[name])
    assert named["give_back"] is None
    assert named["settle_many"] is False
    assert named["settle_batch"] is None
    assert named["batcher close"] is None
    assert named["probe"] is False
    assert OPERATION_TIMEOUT_SECONDS <= elapsed < OPERATION_TIMEOUT_SECONDS + 1.5
    assert not health.healthy
