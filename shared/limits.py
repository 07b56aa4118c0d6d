"""Per-user rate limits, blocks, bans and revocations: one Redis script per request.

Keys of one user share the hash tag `{<user>}`, so a script touches one Cluster slot:

- `subgate:revoked:{u}`  set of revoked originalTransactionIds (contract)
- `subgate:ban:{u}`      hash: `strikes` (live count), `banned_at` (unix s) (contract)
- `subgate:block:{u}`    string with TTL, value `minute` or `hour` (contract)
- `subgate:strikes:{u}`  sorted set of strikes scored by Redis time in microseconds
- `subgate:minute:{u}`, `subgate:hour:{u}`  sorted sets of counted requests

Time is Redis's (`TIME` inside the script), so gateway clocks never matter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import (
    Banned,
    QuotaExceeded,
    RateLimited,
    SubgateError,
    SubscriptionRequired,
    Unavailable,
)
from shared.redis import (
    REDIS_ERRORS,
    AsyncRedis,
    CoalescedScript,
    RedisHealth,
    deadline,
    unavailable_on_failure,
)
from shared.settings import Settings
from shared.usage import (
    LEDGER_LUA,
    NO_RESERVATION_ARGS,
    RESERVE_SCRIPT,
    BudgetDecision,
    Reservation,
    budget_decision,
    usage_keys,
)

logger = logging.getLogger(__name__)

Reason = Literal["ok", "revoked", "banned", "blocked", "minute", "hour", "quota"]

# KEYS: revoked, ban, block, strikes, minute, hour, usage day, usage month, holds
# ARGV: otid, nonce, minute limit, hour limit, permanent block, minute block s,
#       hour block s, strike window s, then the token reservation (shared/usage.py):
#       day budget, month budget, tokens, hold id, hold ttl ms, busy retry s
# Returns {reason, retry_after, remaining_minute, remaining_hour, member, hold,
# remaining_day, remaining_month}; -1 means "no such limit". A request refused for
# its token budget ('quota') is neither counted nor given a strike.
_CHECK_SCRIPT = (
    LEDGER_LUA
    + """
local revoked, ban, block, strikes, minute, hour = unpack(KEYS)
local otid, nonce = ARGV[1], ARGV[2]
local minute_limit, hour_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local ban_at, minute_block = tonumber(ARGV[5]), tonumber(ARGV[6])
local hour_block, strike_window = tonumber(ARGV[7]), tonumber(ARGV[8]) * 1000000

if otid ~= '' and redis.call('SISMEMBER', revoked, otid) == 1 then
  return {'revoked', 0, -1, -1, ''}
end
if redis.call('HEXISTS', ban, 'banned_at') == 1 then
  return {'banned', 0, -1, -1, ''}
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local member = clock[1] .. '.' .. clock[2] .. ':' .. nonce

-- Records a strike; true when it makes a ban. A ban hash without `strikes`
-- was deleted by an operator, which clears the strikes too.
local function strike()
  if redis.call('HEXISTS', ban, 'strikes') == 0 then
    redis.call('DEL', strikes)
  end
  redis.call('ZADD', strikes, now, member)
  if strike_window > 0 then
    redis.call('ZREMRANGEBYSCORE', strikes, '-inf', now - strike_window)
    redis.call('PEXPIRE', strikes, strike_window / 1000)
  end
  local count = redis.call('ZCARD', strikes)
  redis.call('HSET', ban, 'strikes', count)
  if ban_at > 0 and count >= ban_at then
    redis.call('HSET', ban, 'banned_at', clock[1])
    redis.call('PERSIST', ban)
    return true
  end
  if strike_window > 0 then
    redis.call('PEXPIRE', ban, strike_window / 1000)
  end
  return false
end

-- Seconds until the oldest entry of a window leaves it.
local function frees_in(key, window)
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] == nil then return 1 end
  return math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000000))
end

local block_ms = redis.call('PTTL', block)
if block_ms ~= -2 then
  if strike() then return {'banned', 0, -1, -1, ''} end
  local retry = hour_block > 0 and hour_block or 3600
  if block_ms > 0 then retry = math.ceil(block_ms / 1000) end
  return {'blocked', retry, 0, 0, ''}
end

local minute_count, hour_count = 0, 0
if minute_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', minute, '-inf', now - 60000000)
  minute_count = redis.call('ZCARD', minute)
end
if hour_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', hour, '-inf', now - 3600000000)
  hour_count = redis.call('ZCARD', hour)
end
local over_minute = minute_limit > 0 and minute_count >= minute_limit
local over_hour = hour_limit > 0 and hour_count >= hour_limit

if over_minute or over_hour then
  local reason, seconds, retry = 'minute', 0, 0
  if over_minute then
    seconds = minute_block
    retry = frees_in(minute, 60000000)
  end
  if over_hour and (not over_minute or hour_block >= minute_block) then
    reason, seconds = 'hour', hour_block
    retry = math.max(retry, frees_in(hour, 3600000000))
  end
  if seconds > 0 then
    redis.call('SET', block, reason, 'EX', seconds)
    retry = seconds
  end
  if strike() then return {'banned', 0, -1, -1, ''} end
  return {reason, retry, 0, 0, ''}
end

local budget = reserve(KEYS[7], KEYS[8], KEYS[9], math.floor(now / 1000),
  tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12],
  tonumber(ARGV[13]), tonumber(ARGV[14]))
if budget[1] ~= 'ok' then
  return {'quota', budget[2], -1, -1, '', '', budget[3], budget[4]}
end

local remaining_minute, remaining_hour, counted = -1, -1, ''
if minute_limit > 0 then
  redis.call('ZADD', minute, now, member)
  redis.call('PEXPIRE', minute, 60000)
  remaining_minute, counted = minute_limit - minute_count - 1, member
end
if hour_limit > 0 then
  redis.call('ZADD', hour, now, member)
  redis.call('PEXPIRE', hour, 3600000)
  remaining_hour, counted = hour_limit - hour_count - 1, member
end
return {'ok', 0, remaining_minute, remaining_hour, counted, budget[5], budget[3],
        budget[4]}
"""
)

# KEYS: minute, hour; ARGV: member
_GIVE_BACK_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: attempts; ARGV: limit, nonce. Returns 0 when allowed, else retry-after seconds.
_LOGIN_SCRIPT = """
local limit = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000000)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil((tonumber(oldest[2]) + 60000000 - now) / 1000000))
end
redis.call('ZADD', KEYS[1], now, clock[1] .. '.' .. clock[2] .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return 0
"""


def user_keys(user: str) -> dict[str, str]:
    """Every Redis key of one user, by kind."""
    kinds = ("revoked", "ban", "block", "strikes", "minute", "hour")
    return {kind: f"subgate:{kind}:{{{user}}}" for kind in kinds}


@dataclass(frozen=True)
class Limits:
    """The limits for one kind of caller; 0 disables a rule."""

    minute: int
    hour: int
    permanent_block: int
    minute_block_seconds: int
    hourly_block_seconds: int
    strike_window_seconds: int

    @classmethod
    def for_users(cls, settings: Settings) -> Limits:
        """Subscribers: the `USER_*` settings."""
        return cls(
            minute=settings.user_minute_rate_limit,
            hour=settings.user_hourly_rate_limit,
            permanent_block=settings.user_permanent_block,
            minute_block_seconds=settings.minute_block_seconds,
            hourly_block_seconds=settings.hourly_block_seconds,
            strike_window_seconds=settings.strike_window_seconds,
        )

    @classmethod
    def for_anon(cls, settings: Settings) -> Limits:
        """Key pass-through callers: the `ANON_*` settings."""
        return cls(
            minute=settings.anon_minute_rate_limit,
            hour=settings.anon_hourly_rate_limit,
            permanent_block=settings.anon_permanent_block,
            minute_block_seconds=settings.minute_block_seconds,
            hourly_block_seconds=settings.hourly_block_seconds,
            strike_window_seconds=settings.strike_window_seconds,
        )


@dataclass(frozen=True)
class Decision:
    """What the limiter decided for one request."""

    allowed: bool
    reason: Reason
    retry_after: int = 0
    remaining_minute: int | None = None
    remaining_hour: int | None = None
    member: str | None = None
    hold: str | None = None
    remaining_day: int | None = None
    remaining_month: int | None = None


ALLOWED_UNCOUNTED = Decision(allowed=True, reason="ok")


class RateLimiter:
    """Decides each request with one atomic Redis script (one round trip).

    On a Redis failure it records the outage in `health` and either raises
    `Unavailable` (fail closed) or allows the request uncounted (`fail_open`).
    """

    def __init__(
        self,
        redis: AsyncRedis,
        *,
        enabled: bool,
        health: RedisHealth | None = None,
        fail_open: bool = False,
    ) -> None:
        self._redis = redis
        self._enabled = enabled
        self._health = health or RedisHealth()
        self._fail_open = fail_open
        self._check = CoalescedScript(redis, _CHECK_SCRIPT)
        self._give_back = redis.register_script(_GIVE_BACK_SCRIPT)
        self._reserve = redis.register_script(RESERVE_SCRIPT)

    async def check(
        self,
        user: str,
        *,
        limits: Limits,
        otid: str | None,
        reservation: Reservation | None = None,
    ) -> Decision:
        """Decide one request of `user` whose token carries `otid`.

        With a `reservation`, the same script checks the token budget and holds the
        reservation's tokens (see shared/usage.py): still one round trip. With the
        limiter off, the budget takes a second script after the revocation check.
        """
        try:
            async with deadline(self._redis):
                if self._enabled:
                    decision = await self._run_check(
                        user, limits, otid or "", reservation
                    )
                else:
                    decision = await self._check_revoked(user, otid or "")
                    if decision.allowed and reservation is not None:
                        decision = await self._run_reserve(user, reservation)
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)
            if self._fail_open:
                return ALLOWED_UNCOUNTED
            raise Unavailable() from exc
        self._health.record_success()
        return decision

    async def give_back(self, user: str, decision: Decision) -> None:
        """Uncount a request that could not be delivered; never raises."""
        if not decision.member:
            return
        keys = user_keys(user)
        try:
            async with deadline(self._redis):
                await self._give_back(
                    keys=[keys["minute"], keys["hour"]], args=[decision.member]
                )
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)

    async def _run_check(
        self, user: str, limits: Limits, otid: str, reservation: Reservation | None
    ) -> Decision:
        keys = list(user_keys(user).values()) + list(usage_keys(user).values())
        args: list[str | int] = [
            otid,
            os.urandom(6).hex(),
            limits.minute,
            limits.hour,
            limits.permanent_block,
            limits.minute_block_seconds,
            limits.hourly_block_seconds,
            limits.strike_window_seconds,
        ]
        args += reservation.script_args() if reservation else NO_RESERVATION_ARGS
        reply = await self._check(keys=keys, args=args)
        return _decision(reply)

    async def _run_reserve(self, user: str, reservation: Reservation) -> Decision:
        reply = await self._reserve(
            keys=list(usage_keys(user).values()), args=reservation.script_args()
        )
        return _from_budget(budget_decision(reply))

    async def _check_revoked(self, user: str, otid: str) -> Decision:
        if not otid:
            return ALLOWED_UNCOUNTED
        key = user_keys(user)["revoked"]
        if await self._redis.sismember(key, otid):
            return Decision(allowed=False, reason="revoked")
        return ALLOWED_UNCOUNTED


def _decision(reply: list[Any]) -> Decision:
    reason, retry_after, minute, hour, member = reply[:5]
    hold, day, month = reply[5:8] if len(reply) >= 8 else ("", -1, -1)
    return Decision(
        allowed=reason == "ok",
        reason=reason,
        retry_after=int(retry_after),
        remaining_minute=None if int(minute) < 0 else int(minute),
        remaining_hour=None if int(hour) < 0 else int(hour),
        member=member or None,
        hold=hold or None,
        remaining_day=None if int(day) < 0 else int(day),
        remaining_month=None if int(month) < 0 else int(month),
    )


def _from_budget(budget: BudgetDecision) -> Decision:
    return Decision(
        allowed=budget.allowed,
        reason="ok" if budget.allowed else "quota",
        retry_after=budget.retry_after,
        hold=budget.hold,
        remaining_day=budget.remaining_day,
        remaining_month=budget.remaining_month,
    )


def decision_error(decision: Decision) -> SubgateError | None:
    """The error a refused decision answers with, or None when allowed."""
    if decision.allowed:
        return None
    if decision.reason == "revoked":
        return SubscriptionRequired("This purchase has been refunded or revoked.")
    if decision.reason == "banned":
        return Banned()
    if decision.reason == "quota":
        return QuotaExceeded(decision.retry_after)
    return RateLimited(decision.retry_after)


class LoginLimiter:
    """`LOGIN_RATE_LIMIT` attempts per sliding minute per client address."""

    def __init__(
        self,
        redis: AsyncRedis,
        limit_per_minute: int,
        *,
        health: RedisHealth | None = None,
        fail_open: bool = False,
    ) -> None:
        self._redis = redis
        self._limit = limit_per_minute
        self._health = health or RedisHealth()
        self._fail_open = fail_open
        self._script = redis.register_script(_LOGIN_SCRIPT)

    async def hit(self, address: str) -> int | None:
        """Count one attempt: None when allowed, else seconds until one is."""
        if self._limit <= 0:
            return None
        key = f"subgate:login:{{{address}}}"
        try:
            async with deadline(self._redis):
                retry_after = await self._script(
                    keys=[key], args=[self._limit, os.urandom(6).hex()]
                )
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)
            if self._fail_open:
                return None
            raise Unavailable() from exc
        self._health.record_success()
        return int(retry_after) or None


async def is_banned(
    redis: AsyncRedis, user: str, *, health: RedisHealth | None = None
) -> bool:
    """Whether an operator must lift a ban before `user` may log in."""
    with unavailable_on_failure(health):
        async with deadline(redis):
            return bool(await redis.hexists(user_keys(user)["ban"], "banned_at"))
