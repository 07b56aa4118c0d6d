"""Token accounting and budgets: what each user spent today and this month, in Redis.

Keys of one user share the hash tag `{<user>}` (and the rate limiter's slot):

- `subgate:usage:{u}:day`    hash: `period` (`YYYY-MM-DD`), `input`, `output`,
                             `requests`
- `subgate:usage:{u}:month`  hash: `period` (`YYYY-MM`), same counters
- `subgate:usage:{u}:holds`  hash: reservation id -> `<tokens>:<expiry unix ms>`

Periods are UTC days and months of Redis's clock (`TIME`), never a gateway's. A bucket
holding an older period counts as empty and is started afresh on the next charge, and
expires a day after its period ends. A request reserves tokens before it is forwarded
(inside the rate limiter's script, so admission stays one round trip) and settles
after its answer: the reservation is dropped and the provider's real usage charged.
Reservations expire after `HOLD_TTL_SECONDS`, so a crashed gateway leaks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from shared.errors import Unavailable
from shared.redis import (
    REDIS_ERRORS,
    AsyncRedis,
    RedisHealth,
    SyncRedis,
    deadline,
    run_pipelined,
)

logger = logging.getLogger(__name__)

HOLD_TTL_SECONDS = 900
# After a held-up refusal (the budget is not spent, but reservations of requests in
# flight would overrun it), the client may retry as soon as they settle.
BUSY_RETRY_SECONDS = 1

# Lua shared by the rate limiter's script and the ledger's own: UTC calendar from a
# day number (Howard Hinnant's civil-from-days), periods, and the budget check.
LEDGER_LUA = """
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function day_number(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100)
    + doy - 719468
end

-- Day and month names at unix second `now`, and when each ends.
local function periods(now)
  local days = math.floor(now / 86400)
  local y, m, d = civil(days)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d-%02d', y, m, d), string.format('%04d-%02d', y, m),
    (days + 1) * 86400, day_number(ny, nm, 1) * 86400
end

-- Tokens spent in a bucket's current period (an older period counts as empty).
local function spent(key, period)
  local v = redis.call('HMGET', key, 'period', 'input', 'output')
  if v[1] ~= period then return 0 end
  return (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0)
end

-- Tokens held by live reservations; expired ones are dropped.
local function held(holds, now_ms)
  local total = 0
  local all = redis.call('HGETALL', holds)
  for i = 1, #all, 2 do
    local tokens, expiry = string.match(all[i + 1], '^(%d+):(%d+)$')
    if tokens and tonumber(expiry) > now_ms then
      total = total + tonumber(tokens)
    else
      redis.call('HDEL', holds, all[i])
    end
  end
  return total
end

local function left(budget, used)
  if budget <= 0 then return -1 end
  return math.max(0, budget - used)
end

-- Refuse when a budget is spent (retry at its reset) or when reservations in flight
-- would overrun it (retry shortly); else reserve `tokens` under `hold_id`.
-- Returns {reason, retry_after, remaining_day, remaining_month, hold_id}.
local function reserve(day, month, holds, now_ms, day_budget, month_budget, tokens,
                       hold_id, ttl_ms, busy_retry)
  if day_budget <= 0 and month_budget <= 0 then return {'ok', 0, -1, -1, ''} end
  local now = math.floor(now_ms / 1000)
  local day_p, month_p, day_reset, month_reset = periods(now)
  local day_spent, month_spent = spent(day, day_p), spent(month, month_p)
  local retry = 0
  if day_budget > 0 and day_spent >= day_budget then retry = day_reset - now end
  if month_budget > 0 and month_spent >= month_budget then
    retry = month_reset - now
  end
  if retry > 0 then
    return {'quota', retry, left(day_budget, day_spent),
            left(month_budget, month_spent), ''}
  end
  local busy = held(holds, now_ms)
  if (day_budget > 0 and day_spent + busy >= day_budget)
      or (month_budget > 0 and month_spent + busy >= month_budget) then
    return {'quota', busy_retry, left(day_budget, day_spent + busy),
            left(month_budget, month_spent + busy), ''}
  end
  redis.call('HSET', holds, hold_id, string.format('%d:%d', tokens, now_ms + ttl_ms))
  redis.call('PEXPIRE', holds, ttl_ms)
  busy = busy + tokens
  return {'ok', 0, left(day_budget, day_spent + busy),
          left(month_budget, month_spent + busy), hold_id}
end
"""

# KEYS: day, month, holds. ARGV: day budget, month budget, tokens, hold id, ttl ms,
# busy retry. Returns reserve()'s reply.
RESERVE_SCRIPT = (
    LEDGER_LUA
    + """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return reserve(KEYS[1], KEYS[2], KEYS[3], now_ms, tonumber(ARGV[1]),
  tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
"""
)

# KEYS: day, month, holds. ARGV: input, output, requests (0: charge nothing), then
# the hold ids to drop. One call may settle many requests of one user.
_SETTLE_SCRIPT = (
    LEDGER_LUA
    + """
if #ARGV > 3 then redis.call('HDEL', KEYS[3], unpack(ARGV, 4)) end
if tonumber(ARGV[3]) == 0 then return 0 end
local now = tonumber(redis.call('TIME')[1])
local day_p, month_p, day_reset, month_reset = periods(now)
local function add(key, period, expires)
  if redis.call('HGET', key, 'period') ~= period then
    redis.call('DEL', key)
    redis.call('HSET', key, 'period', period)
  end
  redis.call('HINCRBY', key, 'input', ARGV[1])
  redis.call('HINCRBY', key, 'output', ARGV[2])
  redis.call('HINCRBY', key, 'requests', ARGV[3])
  redis.call('EXPIREAT', key, expires)
end
add(KEYS[1], day_p, day_reset + 86400)
add(KEYS[2], month_p, month_reset + 86400)
return 1
"""
)

# KEYS: day, month, holds. Returns {now, held, then for day and month:
# period, input, output, requests, resets_at}.
_READ_SCRIPT = (
    LEDGER_LUA
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1])
local now_ms = now * 1000 + math.floor(tonumber(clock[2]) / 1000)
local day_p, month_p, day_reset, month_reset = periods(now)
local out = {now, held(KEYS[3], now_ms)}
local function bucket(key, period, reset)
  local v = redis.call('HMGET', key, 'period', 'input', 'output', 'requests')
  if v[1] ~= period then v = {period, 0, 0, 0} end
  for _, item in ipairs({period, v[2] or 0, v[3] or 0, v[4] or 0, reset}) do
    table.insert(out, item)
  end
end
bucket(KEYS[1], day_p, day_reset)
bucket(KEYS[2], month_p, month_reset)
return out
"""
)


def usage_keys(user: str) -> dict[str, str]:
    """The usage keys of one user, by kind (day, month, holds)."""
    return {
        kind: f"subgate:usage:{{{user}}}:{kind}" for kind in ("day", "month", "holds")
    }


@dataclass(frozen=True)
class Budget:
    """Token budgets (input + output) of one kind of user; 0 means unlimited."""

    daily: int = 0
    monthly: int = 0

    @property
    def enabled(self) -> bool:
        return self.daily > 0 or self.monthly > 0


NO_BUDGET = Budget()


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one request while it runs, and the budget they count in."""

    tokens: int
    budget: Budget
    hold_id: str = ""

    @classmethod
    def new(cls, tokens: int, budget: Budget) -> Reservation:
        return cls(max(0, tokens), budget, uuid.uuid4().hex[:16])

    def script_args(self) -> list[str | int]:
        """ARGV of `reserve()`: budgets, tokens, hold id, ttl ms, busy retry."""
        return [
            self.budget.daily,
            self.budget.monthly,
            self.tokens,
            self.hold_id,
            HOLD_TTL_SECONDS * 1000,
            BUSY_RETRY_SECONDS,
        ]


NO_RESERVATION_ARGS: list[str | int] = [0, 0, 0, "", HOLD_TTL_SECONDS * 1000, 1]


@dataclass
class Charge:
    """Tokens to charge one user for some requests, and the holds they release."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    holds: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BudgetDecision:
    """The budget part of an admission: allowed, or refused until `retry_after`."""

    allowed: bool
    retry_after: int = 0
    remaining_day: int | None = None
    remaining_month: int | None = None
    hold: str | None = None


def budget_decision(reply: list[Any]) -> BudgetDecision:
    """Read `reserve()`'s reply."""
    reason, retry, day, month, hold = reply
    return BudgetDecision(
        allowed=reason == "ok",
        retry_after=int(retry),
        remaining_day=None if int(day) < 0 else int(day),
        remaining_month=None if int(month) < 0 else int(month),
        hold=hold or None,
    )


@dataclass(frozen=True)
class Period:
    """One day's or month's usage."""

    name: str
    input_tokens: int
    output_tokens: int
    requests: int
    resets_at: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class UsageReport:
    """A user's usage today and this month, and tokens held by requests in flight."""

    user: str
    now: int
    reserved: int
    day: Period
    month: Period

    def as_json(self, budget: Budget) -> dict[str, Any]:
        """The `GET /v1/usage` body (and the admin CLI's JSON)."""
        return {
            "object": "usage",
            "user": self.user,
            "reserved_tokens": self.reserved,
            "day": _period_json(self.day, budget.daily, self.reserved),
            "month": _period_json(self.month, budget.monthly, self.reserved),
        }


def _period_json(period: Period, budget: int, reserved: int) -> dict[str, Any]:
    remaining = None
    if budget > 0:
        remaining = max(0, budget - period.total_tokens - reserved)
    return {
        "period": period.name,
        "input_tokens": period.input_tokens,
        "output_tokens": period.output_tokens,
        "total_tokens": period.total_tokens,
        "requests": period.requests,
        "budget": budget or None,
        "remaining": remaining,
        "resets_at": period.resets_at,
    }


def _report(user: str, reply: list[Any]) -> UsageReport:
    now, held = int(reply[0]), int(reply[1])

    def period(at: int) -> Period:
        name, inp, out, requests, resets = reply[at : at + 5]
        return Period(str(name), int(inp), int(out), int(requests), int(resets))

    return UsageReport(user, now, held, period(2), period(7))


# A Cluster client fails a call outright when a node has no free connection, so a
# big batch is settled a slice at a time.
_CLUSTER_CALLS_AT_ONCE = 32


class UsageLedger:
    """Reserves, settles and reports token usage (asyncio, for the gateway)."""

    def __init__(self, redis: AsyncRedis, *, health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._health = health or RedisHealth()
        self._reserve = redis.register_script(RESERVE_SCRIPT)
        self._settle = redis.register_script(_SETTLE_SCRIPT)
        self._read = redis.register_script(_READ_SCRIPT)

    async def reserve(self, user: str, reservation: Reservation) -> BudgetDecision:
        """Check the budget and hold tokens on its own (when the limiter is off)."""
        try:
            async with deadline(self._redis):
                reply = await self._reserve(
                    keys=list(usage_keys(user).values()),
                    args=reservation.script_args(),
                )
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)
            raise Unavailable() from exc
        self._health.record_success()
        return budget_decision(reply)

    async def settle(
        self, user: str, hold: str | None, input_tokens: int, output_tokens: int
    ) -> bool:
        """Drop the reservation and charge what was used; False when Redis failed."""
        charge = Charge(input_tokens, output_tokens, 1, [hold] if hold else [])
        return await self.settle_many(user, charge)

    async def release(self, user: str, hold: str | None) -> bool:
        """Drop the reservation, charging nothing (the request was not served)."""
        if not hold:
            return True
        return await self.settle_many(user, Charge(holds=[hold]))

    async def report(self, user: str) -> UsageReport:
        """This user's usage now; Unavailable when Redis fails."""
        try:
            async with deadline(self._redis):
                reply = await self._read(keys=list(usage_keys(user).values()))
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)
            raise Unavailable() from exc
        self._health.record_success()
        return _report(user, reply)

    async def settle_batch(self, batch: dict[str, Charge]) -> None:
        """Settle many users' charges: in one pipelined round trip on a single Redis,
        one call per user on a Cluster (whose users live in different slots)."""
        if len(batch) < 2 or isinstance(self._redis, redis.asyncio.RedisCluster):
            users = list(batch)
            for start in range(0, len(users), _CLUSTER_CALLS_AT_ONCE):
                chunk = users[start : start + _CLUSTER_CALLS_AT_ONCE]
                await asyncio.gather(*(self.settle_many(u, batch[u]) for u in chunk))
            return
        calls = [
            (list(usage_keys(user).values()), _settle_args(charge))
            for user, charge in batch.items()
        ]
        try:
            async with deadline(self._redis):
                replies = await run_pipelined(self._redis, self._settle, calls)
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)
            logger.warning("Could not record the token usage of %d users", len(batch))
            return
        failed = [reply for reply in replies if isinstance(reply, BaseException)]
        if failed:
            self._health.record_failure(failed[0])
            logger.warning("Could not record the token usage of %d users", len(failed))
            return
        self._health.record_success()

    async def settle_many(self, user: str, charge: Charge) -> bool:
        """Charge one user's requests and drop their holds in one call."""
        args = _settle_args(charge)
        inp, out = args[0], args[1]
        try:
            async with deadline(self._redis):
                await self._settle(keys=list(usage_keys(user).values()), args=args)
        except REDIS_ERRORS as exc:
            self._health.record_failure(exc)
            logger.warning(
                "Could not record %d+%d tokens of %s", inp, out, user, exc_info=False
            )
            return False
        self._health.record_success()
        return True


def _settle_args(charge: Charge) -> list[str | int]:
    """ARGV of the settle script."""
    inp, out = max(0, charge.input_tokens), max(0, charge.output_tokens)
    return [inp, out, charge.requests, *charge.holds]


def read_usage(client: SyncRedis, user: str) -> UsageReport:
    """A user's usage now (blocking client, for the admin command line)."""
    script = client.register_script(_READ_SCRIPT)
    return _report(user, script(keys=list(usage_keys(user).values())))


def reset_usage(client: SyncRedis, user: str, *, day: bool, month: bool) -> int:
    """Forget a user's usage of today and/or this month; the number of keys deleted."""
    keys = usage_keys(user)
    chosen = [keys[kind] for kind, wanted in (("day", day), ("month", month)) if wanted]
    return int(client.delete(*chosen)) if chosen else 0


class SettlementBatcher:
    """Charges for requests without a reservation, written together.

    Accounting without budgets needs no answer from Redis, so charges wait up to
    `interval` seconds and each user's are summed into one call: under load a request
    costs its one admission round trip and a small share of a settlement.
    """

    def __init__(self, ledger: UsageLedger, *, interval: float = 0.1) -> None:
        self._ledger = ledger
        self._interval = interval
        self._pending: dict[str, Charge] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, user: str, input_tokens: int, output_tokens: int) -> None:
        charge = self._pending.setdefault(user, Charge())
        charge.input_tokens += input_tokens
        charge.output_tokens += output_tokens
        charge.requests += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def flush(self, user: str | None = None) -> None:
        """Write what is pending now: everyone's, or one user's."""
        if user is None:
            batch, self._pending = self._pending, {}
        else:
            charge = self._pending.pop(user, None)
            batch = {user: charge} if charge else {}
        if batch:
            await self._ledger.settle_batch(batch)

    async def close(self) -> None:
        """Stop the background writer and write what is left (at shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._interval)
            # Shielded: a shutdown that cancels this task must not lose a batch.
            await asyncio.shield(self.flush())
