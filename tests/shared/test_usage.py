"""Token accounting and budgets (shared/usage.py) on real Redis, single and Cluster."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.crc import key_slot

from shared.errors import QuotaExceeded
from shared.limits import Limits, RateLimiter, decision_error, user_keys
from shared.redis import AsyncRedis, create_sync_redis
from shared.usage import (
    _SETTLE_SCRIPT,
    LEDGER_LUA,
    Budget,
    Charge,
    Reservation,
    SettlementBatcher,
    UsageLedger,
    read_usage,
    reset_usage,
    usage_keys,
)

USER = "acct:usage-user"
LIMITS = Limits(
    minute=100,
    hour=1000,
    permanent_block=50,
    minute_block_seconds=300,
    hourly_block_seconds=3600,
    strike_window_seconds=86400,
)


async def _redis_now(client: AsyncRedis) -> datetime:
    seconds, _ = await client.time()
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def _next_midnight(now: datetime) -> int:
    return int(
        (now + timedelta(days=1)).replace(hour=0, minute=0, second=0).timestamp()
    )


def _next_month(now: datetime) -> int:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2024, 2, 28, 23, 59, 59, tzinfo=UTC),
        datetime(2024, 2, 29, 12, tzinfo=UTC),
        datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2100, 3, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 6, tzinfo=UTC),
    ],
)
async def test_usage_lua_periods_match_python_calendar(
    single_client: AsyncRedis, moment: datetime
) -> None:
    script = single_client.register_script(
        LEDGER_LUA + "return {periods(tonumber(ARGV[1]))}"
    )
    day, month, day_reset, month_reset = await script(args=[int(moment.timestamp())])
    assert day == moment.strftime("%Y-%m-%d")
    assert month == moment.strftime("%Y-%m")
    assert int(day_reset) == _next_midnight(moment)
    assert int(month_reset) == _next_month(moment)


async def test_usage_settle_charges_exact_tokens(redis_client: AsyncRedis) -> None:
    ledger = UsageLedger(redis_client)
    assert await ledger.settle(USER, None, 120, 30)
    assert await ledger.settle(USER, None, 7, 3)

    report = await ledger.report(USER)
    now = await _redis_now(redis_client)
    for period in (report.day, report.month):
        assert (period.input_tokens, period.output_tokens) == (127, 33)
        assert period.requests == 2
    assert report.day.name == now.strftime("%Y-%m-%d")
    assert report.month.name == now.strftime("%Y-%m")
    assert report.day.resets_at == _next_midnight(now)
    assert report.month.resets_at == _next_month(now)
    assert report.reserved == 0


async def test_usage_old_period_counts_as_empty(redis_client: AsyncRedis) -> None:
    keys = usage_keys(USER)
    await redis_client.hset(
        keys["day"], mapping={"period": "2001-01-01", "input": 999, "output": 1}
    )
    ledger = UsageLedger(redis_client)
    budget = Budget(daily=100)
    decision = await ledger.reserve(USER, Reservation.new(10, budget))
    assert decision.allowed
    await ledger.settle(USER, decision.hold, 4, 6)
    report = await ledger.report(USER)
    assert (report.day.input_tokens, report.day.output_tokens) == (4, 6)
    assert await redis_client.ttl(keys["day"]) > 0


async def test_usage_spent_budget_refuses_until_reset(redis_client: AsyncRedis) -> None:
    ledger = UsageLedger(redis_client)
    await ledger.settle(USER, None, 60, 40)
    now = await _redis_now(redis_client)

    daily = await ledger.reserve(USER, Reservation.new(10, Budget(daily=100)))
    assert not daily.allowed
    assert daily.remaining_day == 0
    assert abs(daily.retry_after - (_next_midnight(now) - int(now.timestamp()))) <= 1

    monthly = await ledger.reserve(
        USER, Reservation.new(10, Budget(daily=1000, monthly=100))
    )
    assert not monthly.allowed
    assert abs(monthly.retry_after - (_next_month(now) - int(now.timestamp()))) <= 1

    roomy = await ledger.reserve(USER, Reservation.new(10, Budget(daily=101)))
    assert roomy.allowed and roomy.remaining_day == 0


async def test_usage_reservations_bound_concurrent_admissions(
    redis_client: AsyncRedis,
) -> None:
    ledger = UsageLedger(redis_client)
    budget = Budget(daily=1000)
    decisions = await asyncio.gather(
        *(ledger.reserve(USER, Reservation.new(300, budget)) for _ in range(10))
    )
    admitted = [d for d in decisions if d.allowed]
    # 0, 300, 600 and 900 held are under 1,000; the fifth would start at 1,200.
    assert len(admitted) == 4
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after == 1 for d in refused)
    assert (await ledger.report(USER)).reserved == 1200

    for decision in admitted:
        await ledger.settle(USER, decision.hold, 100, 200)
    report = await ledger.report(USER)
    assert report.reserved == 0
    assert report.day.total_tokens == 1200  # overspend of one reservation at most


async def test_usage_release_frees_the_hold_and_charges_nothing(
    redis_client: AsyncRedis,
) -> None:
    ledger = UsageLedger(redis_client)
    budget = Budget(daily=100)
    first = await ledger.reserve(USER, Reservation.new(500, budget))
    assert first.allowed
    assert not (await ledger.reserve(USER, Reservation.new(1, budget))).allowed
    await ledger.release(USER, first.hold)
    assert (await ledger.reserve(USER, Reservation.new(1, budget))).allowed
    report = await ledger.report(USER)
    assert report.day.total_tokens == 0 and report.day.requests == 0


async def test_usage_expired_holds_are_dropped(redis_client: AsyncRedis) -> None:
    holds = usage_keys(USER)["holds"]
    await redis_client.hset(holds, "stale", "5000:1000")
    ledger = UsageLedger(redis_client)
    decision = await ledger.reserve(USER, Reservation.new(10, Budget(daily=100)))
    assert decision.allowed
    assert not await redis_client.hexists(holds, "stale")
    assert 0 < await redis_client.pttl(holds) <= 900_000


async def test_usage_limiter_reserves_in_its_one_script(
    redis_client: AsyncRedis,
) -> None:
    limiter = RateLimiter(redis_client, enabled=True)
    budget = Budget(daily=100)
    first = await limiter.check(
        USER, limits=LIMITS, otid="1", reservation=Reservation.new(60, budget)
    )
    assert first.allowed and first.hold and first.remaining_day == 40
    assert first.remaining_minute == 99
    held = await redis_client.hget(usage_keys(USER)["holds"], first.hold)
    assert held is not None and str(held).startswith("60:")

    await UsageLedger(redis_client).settle(USER, first.hold, 70, 40)
    refused = await limiter.check(
        USER, limits=LIMITS, otid="1", reservation=Reservation.new(60, budget)
    )
    assert not refused.allowed and refused.reason == "quota"
    error = decision_error(refused)
    assert isinstance(error, QuotaExceeded)
    assert error.headers["Retry-After"] == str(refused.retry_after)
    assert error.headers["x-should-retry"] == "false"
    # A budget refusal is neither counted nor a strike.
    assert await redis_client.zcard(user_keys(USER)["minute"]) == 1
    assert not await redis_client.exists(user_keys(USER)["strikes"])


async def test_usage_limiter_disabled_still_checks_the_budget(
    redis_client: AsyncRedis,
) -> None:
    limiter = RateLimiter(redis_client, enabled=False)
    await UsageLedger(redis_client).settle(USER, None, 100, 0)
    refused = await limiter.check(
        USER, limits=LIMITS, otid=None, reservation=Reservation.new(1, Budget(50))
    )
    assert refused.reason == "quota"
    allowed = await limiter.check(
        USER, limits=LIMITS, otid=None, reservation=Reservation.new(1, Budget(500))
    )
    assert allowed.allowed and allowed.hold


async def test_usage_limiter_without_reservation_touches_no_usage_key(
    redis_client: AsyncRedis,
) -> None:
    limiter = RateLimiter(redis_client, enabled=True)
    decision = await limiter.check(USER, limits=LIMITS, otid="1")
    assert decision.allowed and decision.hold is None
    assert not await redis_client.exists(*usage_keys(USER).values())


def test_usage_keys_share_the_limiter_slot() -> None:
    keys = [*usage_keys(USER).values(), *user_keys(USER).values()]
    slots = {key_slot(key.encode()) for key in keys}
    assert len(slots) == 1


async def test_usage_sync_read_and_reset(
    redis_client: AsyncRedis, topology: tuple[str, bool]
) -> None:
    await UsageLedger(redis_client).settle(USER, None, 5, 6)
    url, cluster = topology
    client = create_sync_redis(url, cluster=cluster)
    try:
        report = read_usage(client, USER)
        assert report.day.total_tokens == 11 and report.month.total_tokens == 11
        assert reset_usage(client, USER, day=True, month=False) == 1
        report = read_usage(client, USER)
        assert report.day.total_tokens == 0 and report.month.total_tokens == 11
        assert reset_usage(client, USER, day=True, month=True) == 1
        assert read_usage(client, USER).month.total_tokens == 0
    finally:
        client.close()


async def _report_after_flush(batcher: SettlementBatcher, ledger: UsageLedger) -> int:
    await batcher.flush()
    return (await ledger.report(USER)).day.requests


async def test_usage_batcher_sums_many_requests_into_one_call(
    redis_client: AsyncRedis,
) -> None:
    ledger = UsageLedger(redis_client)
    batcher = SettlementBatcher(ledger, interval=60)
    calls = 0
    settle_many = ledger.settle_many

    async def counted(user: str, charge: Charge) -> bool:
        nonlocal calls
        calls += 1
        return await settle_many(user, charge)

    ledger.settle_many = counted  # type: ignore[method-assign]
    for _ in range(50):
        batcher.add(USER, 3, 2)

    assert await _report_after_flush(batcher, ledger) == 50
    report = await ledger.report(USER)
    assert (report.day.input_tokens, report.day.output_tokens) == (150, 100)
    assert calls == 1
    await batcher.close()


async def test_usage_batcher_writes_by_itself_and_on_close(
    redis_client: AsyncRedis,
) -> None:
    ledger = UsageLedger(redis_client)
    batcher = SettlementBatcher(ledger, interval=0.05)

    batcher.add(USER, 1, 1)
    deadline = asyncio.get_running_loop().time() + 5
    while (await ledger.report(USER)).day.requests < 1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    late = SettlementBatcher(ledger, interval=60)
    late.add(USER, 1, 1)
    await late.close()

    assert (await ledger.report(USER)).day.requests == 2
    await batcher.close()


async def test_usage_settle_many_drops_every_hold(redis_client: AsyncRedis) -> None:
    ledger = UsageLedger(redis_client)
    budget = Budget(daily=10_000)
    holds = []
    for _ in range(3):
        decision = await ledger.reserve(USER, Reservation.new(100, budget))
        holds.append(decision.hold or "")

    await ledger.settle_many(USER, Charge(10, 5, 3, holds))

    report = await ledger.report(USER)
    assert report.reserved == 0
    assert report.day.requests == 3 and report.day.total_tokens == 15


async def test_usage_batch_of_many_users_is_charged_exactly(
    redis_client: AsyncRedis,
) -> None:
    ledger = UsageLedger(redis_client)
    batcher = SettlementBatcher(ledger, interval=60)
    users = [f"acct:user-{i}" for i in range(20)]
    for i, user in enumerate(users):
        batcher.add(user, i, 1)
        batcher.add(user, i, 1)

    await batcher.close()

    for i, user in enumerate(users):
        day = (await ledger.report(user)).day
        assert (day.input_tokens, day.output_tokens, day.requests) == (2 * i, 2, 2)


async def test_usage_batch_survives_redis_losing_its_scripts(
    redis_client: AsyncRedis,
) -> None:
    ledger = UsageLedger(redis_client)
    await ledger.settle_batch({USER: Charge(1, 1, 1), "acct:other": Charge(1, 1, 1)})
    await redis_client.script_flush()  # what a Redis restart does to the script cache

    await ledger.settle_batch({USER: Charge(2, 3, 1), "acct:other": Charge(4, 5, 1)})

    day = (await ledger.report(USER)).day
    other = (await ledger.report("acct:other")).day
    assert (day.input_tokens, day.output_tokens, day.requests) == (3, 4, 2)
    assert (other.input_tokens, other.output_tokens, other.requests) == (5, 6, 2)


async def test_usage_batch_charges_once_when_scripts_come_back_midway(
    redis_client: AsyncRedis,
) -> None:
    """Another connection loads the script while a big batch is being run: calls
    before it find no script, calls after it run; only the first are sent again."""
    ledger = UsageLedger(redis_client)
    for attempt in range(3):
        await redis_client.script_flush()
        users = [f"acct:batch{attempt}-{i}" for i in range(3000)]
        loading = asyncio.Event()

        async def load_concurrently(loading: asyncio.Event = loading) -> None:
            while not loading.is_set():
                await redis_client.script_load(_SETTLE_SCRIPT)
                await asyncio.sleep(0)

        loader = asyncio.create_task(load_concurrently())
        await ledger.settle_batch({user: Charge(1, 0, 1) for user in users})
        loading.set()
        await loader

        for user in users[::10]:
            assert (await ledger.report(user)).day.requests == 1, user
