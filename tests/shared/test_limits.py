"""The rate limiter's contract, against a real single node and a three-node Cluster."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

import pytest
from redis.crc import key_slot

from shared.errors import Banned, RateLimited, SubscriptionRequired
from shared.limits import (
    Decision,
    Limits,
    LoginLimiter,
    RateLimiter,
    decision_error,
    is_banned,
    user_keys,
)
from shared.redis import AsyncRedis, create_redis
from shared.settings import Secret, Settings
from tests.support.redis_server import RedisServer

USER = "acct:6f1c0d1e-2b7a-4c43-9d55-0a6b2f3e4d5c"
DEFAULTS = Limits(
    minute=15,
    hour=50,
    permanent_block=50,
    minute_block_seconds=300,
    hourly_block_seconds=3600,
    strike_window_seconds=86400,
)
# Every request after the first in a minute is refused with a strike but no block.
ONE_PER_MINUTE = replace(DEFAULTS, minute=1, minute_block_seconds=0)


async def _check(
    limiter: RateLimiter, limits: Limits = DEFAULTS, otid: str | None = "2000"
) -> Decision:
    return await limiter.check(USER, limits=limits, otid=otid)


async def _strikes(client: AsyncRedis) -> int:
    return int(await client.hget(user_keys(USER)["ban"], "strikes") or 0)


async def _poll(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


@pytest.fixture
def limiter(redis_client: AsyncRedis) -> RateLimiter:
    return RateLimiter(redis_client, enabled=True)


async def test_limiter_exactly_minute_limit_of_concurrent_requests_pass(
    limiter: RateLimiter,
) -> None:
    decisions = await asyncio.gather(*(_check(limiter) for _ in range(100)))

    # 15 pass, the 16th blocks, the 50th strike bans (USER_PERMANENT_BLOCK=50).
    reasons = Counter(d.reason for d in decisions)
    assert reasons == {"ok": 15, "minute": 1, "blocked": 48, "banned": 36}


async def test_limiter_exact_across_three_clients(
    topology: tuple[str, bool],
) -> None:
    url, cluster = topology
    clients = [create_redis(url, cluster=cluster) for _ in range(3)]
    limiters = [RateLimiter(client, enabled=True) for client in clients]

    decisions = await asyncio.gather(*(_check(limiters[i % 3]) for i in range(100)))

    assert sum(d.allowed for d in decisions) == 15
    for client in clients:
        await client.aclose()


async def test_limiter_sixteenth_request_blocks_for_minute_block_seconds(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    for remaining in range(14, -1, -1):
        decision = await _check(limiter)
        assert decision.allowed
        assert (decision.remaining_minute, decision.member is not None) == (
            remaining,
            True,
        )

    refused = await _check(limiter)
    blocked = await _check(limiter)

    assert (refused.reason, refused.retry_after) == ("minute", 300)
    assert 0 < await redis_client.ttl(user_keys(USER)["block"]) <= 300
    assert blocked.reason == "blocked"
    assert 0 < blocked.retry_after <= 300
    error = decision_error(blocked)
    assert isinstance(error, RateLimited)
    assert error.headers["Retry-After"] == str(blocked.retry_after)


async def test_limiter_both_windows_exceeded_gets_longer_block(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(DEFAULTS, minute=2, hour=2, minute_block_seconds=5)
    limits = replace(limits, hourly_block_seconds=40)
    for _ in range(2):
        assert (await _check(limiter, limits)).allowed

    refused = await _check(limiter, limits)

    assert (refused.reason, refused.retry_after) == ("hour", 40)
    assert 5 < await redis_client.ttl(user_keys(USER)["block"]) <= 40


async def test_limiter_hour_rule_blocks_for_hourly_block_seconds(
    limiter: RateLimiter,
) -> None:
    limits = replace(DEFAULTS, hour=3)
    for _ in range(3):
        assert (await _check(limiter, limits)).allowed

    refused = await _check(limiter, limits)

    assert (refused.reason, refused.retry_after) == ("hour", 3600)


async def test_limiter_refused_requests_are_not_counted(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(ONE_PER_MINUTE, minute=3, hour=10)
    decisions = [await _check(limiter, limits) for _ in range(12)]

    assert [d.allowed for d in decisions] == [True] * 3 + [False] * 9
    assert await redis_client.zcard(user_keys(USER)["minute"]) == 3
    assert await redis_client.zcard(user_keys(USER)["hour"]) == 3


async def test_limiter_blocked_requests_earn_strikes(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(DEFAULTS, minute=1)
    await _check(limiter, limits)
    refused = await _check(limiter, limits)
    blocked = [await _check(limiter, limits) for _ in range(3)]

    assert refused.reason == "minute"
    assert [d.reason for d in blocked] == ["blocked"] * 3
    assert await _strikes(redis_client) == 4


async def test_limiter_bans_at_permanent_block_and_that_request_says_banned(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(ONE_PER_MINUTE, permanent_block=3)
    reasons = [(await _check(limiter, limits)).reason for _ in range(5)]

    assert reasons == ["ok", "minute", "minute", "banned", "banned"]
    ban = await redis_client.hgetall(user_keys(USER)["ban"])
    assert ban["strikes"] == "3"
    assert int(ban["banned_at"]) > 1_700_000_000
    assert await redis_client.ttl(user_keys(USER)["ban"]) == -1
    assert await is_banned(redis_client, USER)
    assert isinstance(decision_error(Decision(False, "banned")), Banned)


async def test_limiter_permanent_block_zero_never_bans(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(ONE_PER_MINUTE, permanent_block=0)
    reasons = [(await _check(limiter, limits)).reason for _ in range(10)]

    assert reasons == ["ok"] + ["minute"] * 9
    assert await _strikes(redis_client) == 9
    assert not await is_banned(redis_client, USER)


async def test_limiter_forgets_strikes_older_than_strike_window(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(ONE_PER_MINUTE, permanent_block=3, strike_window_seconds=1)
    await _check(limiter, limits)
    await _check(limiter, limits)
    await _check(limiter, limits)
    assert await _strikes(redis_client) == 2
    seconds, micros = await redis_client.time()
    struck_at = seconds + micros / 1e6

    async def window_passed() -> bool:
        seconds, micros = await redis_client.time()
        return seconds + micros / 1e6 > struck_at + 1.0

    await _poll(window_passed)
    decision = await _check(limiter, limits)

    assert decision.reason == "minute"
    assert await _strikes(redis_client) == 1


async def test_limiter_del_ban_lifts_ban_and_clears_strikes(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(ONE_PER_MINUTE, permanent_block=3)
    for _ in range(4):
        await _check(limiter, limits)
    assert (await _check(limiter, limits)).reason == "banned"

    await redis_client.delete(user_keys(USER)["ban"])
    after = await _check(limiter, limits)

    assert after.reason == "minute"
    assert await _strikes(redis_client) == 1
    assert not await is_banned(redis_client, USER)


async def test_limiter_del_block_lifts_block(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    await redis_client.set(user_keys(USER)["block"], "minute", ex=300)
    assert (await _check(limiter)).reason == "blocked"

    await redis_client.delete(user_keys(USER)["block"])

    assert (await _check(limiter)).allowed


async def test_limiter_give_back_frees_a_slot(limiter: RateLimiter) -> None:
    limits = replace(DEFAULTS, minute=2)
    first = await _check(limiter, limits)
    second = await _check(limiter, limits)

    await limiter.give_back(USER, second)

    assert first.allowed and second.allowed
    assert (await _check(limiter, limits)).allowed
    assert (await _check(limiter, limits)).reason == "minute"


async def test_limiter_block_expires(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    limits = replace(DEFAULTS, minute=1, minute_block_seconds=1)
    counted = await _check(limiter, limits)
    refused = await _check(limiter, limits)
    await limiter.give_back(USER, counted)
    assert (await _check(limiter, limits)).reason == "blocked"

    async def block_gone() -> bool:
        return not await redis_client.exists(user_keys(USER)["block"])

    await _poll(block_gone)

    assert (refused.reason, refused.retry_after) == ("minute", 1)
    assert (await _check(limiter, limits)).allowed


async def test_limiter_refuses_revoked_purchase(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    await redis_client.sadd(user_keys(USER)["revoked"], "2000")

    revoked = await _check(limiter, otid="2000")

    assert (revoked.allowed, revoked.reason) == (False, "revoked")
    assert isinstance(decision_error(revoked), SubscriptionRequired)
    assert (await _check(limiter, otid="3000")).allowed


async def test_limiter_disabled_still_refuses_revoked_purchase(
    redis_client: AsyncRedis,
) -> None:
    limiter = RateLimiter(redis_client, enabled=False)
    await redis_client.sadd(user_keys(USER)["revoked"], "2000")

    decisions = [await _check(limiter, otid="3000") for _ in range(30)]
    revoked = await _check(limiter, otid="2000")

    assert all(d.allowed and d.member is None for d in decisions)
    assert revoked.reason == "revoked"
    assert (await _check(limiter, otid=None)).allowed


async def test_limiter_limit_zero_disables_that_rule(limiter: RateLimiter) -> None:
    hour_only = replace(DEFAULTS, minute=0, hour=20)
    unlimited = replace(DEFAULTS, minute=0, hour=0)

    decisions = [await _check(limiter, hour_only) for _ in range(21)]
    free = await asyncio.gather(*(_check(limiter, unlimited) for _ in range(10)))

    assert sum(d.allowed for d in decisions) == 20
    assert decisions[0].remaining_minute is None
    assert decisions[-1].reason == "hour"
    assert decisions[-1].retry_after == 3600
    # The hour block now refuses even unlimited requests: blocks outrank limits.
    assert [d.reason for d in free] == ["blocked"] * 10


async def test_limiter_without_limits_counts_nothing(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    unlimited = replace(DEFAULTS, minute=0, hour=0)

    decisions = await asyncio.gather(*(_check(limiter, unlimited) for _ in range(50)))

    assert all(d.allowed and d.member is None for d in decisions)
    assert all(d.remaining_hour is None for d in decisions)
    assert not await redis_client.exists(user_keys(USER)["minute"])


async def test_limiter_counter_keys_expire(
    limiter: RateLimiter, redis_client: AsyncRedis
) -> None:
    await _check(limiter, replace(DEFAULTS, minute=1, permanent_block=0))
    await _check(limiter, replace(DEFAULTS, minute=1, permanent_block=0))
    keys = user_keys(USER)

    for kind in ("minute", "hour", "block", "strikes", "ban"):
        assert await redis_client.ttl(keys[kind]) > 0, kind


def test_limiter_keys_of_one_user_share_a_slot() -> None:
    slots = {key_slot(key.encode()) for key in user_keys(USER).values()}

    assert len(slots) == 1
    assert all("{" + USER + "}" in key for key in user_keys(USER).values())


async def test_limiter_ban_survives_redis_restart(own_server: RedisServer) -> None:
    client = create_redis(own_server.url, cluster=False)
    limiter = RateLimiter(client, enabled=True)
    limits = replace(ONE_PER_MINUTE, permanent_block=2)
    for _ in range(3):
        await _check(limiter, limits)
    await client.aclose()

    own_server.restart()
    client = create_redis(own_server.url, cluster=False)
    decision = await _check(RateLimiter(client, enabled=True), limits)

    assert decision.reason == "banned"
    await client.aclose()


async def test_login_limiter_limits_each_address(redis_client: AsyncRedis) -> None:
    login = LoginLimiter(redis_client, 3)

    results = [await login.hit("203.0.113.7") for _ in range(5)]

    assert results[:3] == [None, None, None]
    assert all(isinstance(r, int) and 1 <= r <= 60 for r in results[3:])
    assert await login.hit("2001:db8::1") is None
    assert await redis_client.zcard("subgate:login:{203.0.113.7}") == 3


async def test_login_limiter_zero_disables(redis_client: AsyncRedis) -> None:
    login = LoginLimiter(redis_client, 0)

    assert [await login.hit("203.0.113.7") for _ in range(50)] == [None] * 50


def test_limits_from_settings() -> None:
    settings = Settings(
        jwt_secret=Secret("x" * 32),
        user_minute_rate_limit=7,
        anon_minute_rate_limit=9,
        strike_window_seconds=5,
    )

    users, anon = Limits.for_users(settings), Limits.for_anon(settings)

    assert (users.minute, users.hour, users.permanent_block) == (7, 50, 50)
    assert (anon.minute, anon.hour, anon.strike_window_seconds) == (9, 200, 5)
    assert (users.minute_block_seconds, users.hourly_block_seconds) == (300, 3600)


def test_decision_error_is_none_when_allowed() -> None:
    assert decision_error(Decision(True, "ok")) is None
    error = decision_error(Decision(False, "minute", retry_after=42))
    assert isinstance(error, RateLimited)
    assert (error.status, error.retry_after) == (429, 42)
