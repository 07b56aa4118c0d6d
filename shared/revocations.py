"""Purchases revoked by App Store Server Notifications, kept in Redis per user.

`subgate:revoked:{u}` (a set of originalTransactionIds) is the contract's key and what
the gateway's limiter script checks. Beside it, under the same hash tag:

- `subgate:notified:{u}`            hash: otid -> signedDate (ms) of the last applied
                                    notification, so an older one changes nothing
- `subgate:notification:{u}:<uuid>` marks a notificationUUID as seen (30-day TTL), so
                                    a duplicate changes nothing
"""

from __future__ import annotations

from shared.redis import AsyncRedis, RedisHealth, deadline, unavailable_on_failure

SEEN_TTL_SECONDS = 30 * 24 * 3600

# KEYS: revoked, notified, seen; ARGV: otid, revoke (1/0), signed date ms, seen TTL.
# Returns 1 when the notification was applied, 0 for a duplicate or an older one.
_APPLY_SCRIPT = """
local revoked, notified, seen = KEYS[1], KEYS[2], KEYS[3]
local otid, revoke, signed = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
if redis.call('SET', seen, '1', 'NX', 'EX', ARGV[4]) == false then
  return 0
end
local last = tonumber(redis.call('HGET', notified, otid) or '-1')
if signed < last then
  return 0
end
redis.call('HSET', notified, otid, ARGV[3])
if revoke then
  redis.call('SADD', revoked, otid)
else
  redis.call('SREM', revoked, otid)
end
return 1
"""


def revoked_key(user: str) -> str:
    return f"subgate:revoked:{{{user}}}"


class RevocationStore:
    """Which purchases of a user notifications have revoked.

    A Redis failure raises `Unavailable` (and is noted in `health`).
    """

    def __init__(self, redis: AsyncRedis, *, health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._health = health
        self._apply = redis.register_script(_APPLY_SCRIPT)

    async def revoke(self, user: str, otid: str) -> None:
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                await self._redis.sadd(revoked_key(user), otid)

    async def restore(self, user: str, otid: str) -> None:
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                await self._redis.srem(revoked_key(user), otid)

    async def is_revoked(self, user: str, otid: str) -> bool:
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                return bool(await self._redis.sismember(revoked_key(user), otid))

    async def revoked(self, user: str) -> set[str]:
        """Every revoked originalTransactionId of `user`."""
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                members = await self._redis.smembers(revoked_key(user))
        return {str(otid) for otid in members}

    async def apply(
        self,
        user: str,
        otid: str,
        *,
        revoke: bool,
        notification_uuid: str,
        signed_date_ms: int,
    ) -> bool:
        """Apply one notification atomically; False for a duplicate or older one.

        Of two notifications with the same signedDate the later-applied one wins.
        """
        keys = [
            revoked_key(user),
            f"subgate:notified:{{{user}}}",
            f"subgate:notification:{{{user}}}:{notification_uuid}",
        ]
        args = [otid, "1" if revoke else "0", signed_date_ms, SEEN_TTL_SECONDS]
        with unavailable_on_failure(self._health):
            async with deadline(self._redis):
                return bool(await self._apply(keys=keys, args=args))
