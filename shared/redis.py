"""Redis clients for Subgate and the outage tracking both services share.

Clients use short timeouts and no retries, so a dead Redis costs a request about a
second at most; `RedisHealth` turns a stream of failures into one log line per outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from shared.errors import Unavailable

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 0.5
READ_TIMEOUT_SECONDS = 0.5  # blocking clients (command line), per socket operation
HEALTH_CHECK_INTERVAL_SECONDS = 15
# The most one Redis operation of the asyncio clients may take, whatever the client
# does inside it: every caller runs its operations under `deadline()` (or its own
# `asyncio.timeout` of this length).
OPERATION_TIMEOUT_SECONDS = 1.0

AsyncRedis = redis.asyncio.Redis | redis.asyncio.RedisCluster
SyncRedis = redis.Redis | redis.RedisCluster

# What a failing Redis raises, whichever client is used.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)


def _options(*, socket_timeout: float | None) -> dict[str, Any]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "decode_responses": True,
        # Plain Redis and Valkey send no maintenance notifications; skip the handshake.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


DEFAULT_MAX_CONNECTIONS = 256


class _HiredisPacking:
    """Packs commands with hiredis's C packer, as redis-py's blocking client does; its
    asyncio client packs them in Python (for the limiter's script call, 27 µs against
    9 µs on our machines). Mixed into the connection class the URL chose."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)  # type: ignore[no-any-return]


def _packing_with_hiredis(pool: redis.asyncio.ConnectionPool) -> None:
    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})


def create_redis(
    url: str, *, cluster: bool, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> AsyncRedis:
    """An asyncio client for `redis://`, `rediss://` or `unix://` URLs.

    Nothing is connected yet, so a service can start while Redis is down.
    Responses are decoded to `str`. A burst of more concurrent commands than
    `max_connections` waits for a free connection (within the operation's time)
    instead of failing at once.

    No socket timeout: callers bound each operation with `deadline()`. With one,
    redis-py runs every command's write as a task of its own under
    `asyncio.wait_for` (on Python 3.11): a task per command, measured as a tenth to
    a fifth of the limiter's check on our machines (README "Performance").
    """
    if cluster:
        # One immediate retry: a fresh Cluster client's first concurrent commands
        # race with its slot discovery, and a failover answers MOVED once.
        return redis.asyncio.RedisCluster.from_url(
            url,
            retry=AsyncRetry(NoBackoff(), 1),
            max_connections=max(1, max_connections),  # per node
            **_options(socket_timeout=None),
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max(1, max_connections),
        timeout=OPERATION_TIMEOUT_SECONDS,
        retry=AsyncRetry(NoBackoff(), 0),
        **_options(socket_timeout=None),
    )
    _packing_with_hiredis(pool)
    return redis.asyncio.Redis.from_pool(pool)


def create_sync_redis(url: str, *, cluster: bool) -> SyncRedis:
    """A blocking client with the same options, for command-line tools; its socket
    timeout bounds each operation."""
    options = _options(socket_timeout=READ_TIMEOUT_SECONDS)
    if cluster:
        return redis.RedisCluster.from_url(url, retry=Retry(NoBackoff(), 1), **options)
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


async def ready(client: AsyncRedis) -> None:
    """Discover a Cluster's slots before the first command (a no-op afterwards).

    redis-py's Cluster client, when many first commands race with its slot discovery,
    drops connections other commands are using; discovering first avoids that.
    """
    if isinstance(client, redis.asyncio.RedisCluster):
        await client.initialize()


@asynccontextmanager
async def deadline(client: AsyncRedis) -> AsyncIterator[None]:
    """Run one Redis operation within `OPERATION_TIMEOUT_SECONDS`, a Cluster's slots
    discovered first. A Redis that stops answering raises `TimeoutError` (one of
    `REDIS_ERRORS`); redis-py drops the interrupted connection."""
    async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
        await ready(client)
        yield


# One call of a Lua script: its KEYS and its ARGV.
ScriptCall = tuple[Sequence[Any], Sequence[Any]]


async def run_pipelined(
    client: redis.asyncio.Redis, script: AsyncScript, calls: Sequence[ScriptCall]
) -> list[Any]:
    """Run many calls of one script in one pipelined round trip (a single Redis, not a
    Cluster); each call's reply, or the error it met, in order.

    EVALSHA itself: a script object in a pipeline first asks SCRIPT EXISTS, a second
    round trip every time. When Redis has lost its scripts (a restart), the script is
    loaded and only the calls that found none are sent again; the others have run.
    A failure of the connection itself raises.
    """
    replies = await _evalsha_pipeline(client, script.sha, calls)
    unscripted = [
        at for at, reply in enumerate(replies) if isinstance(reply, NoScriptError)
    ]
    if unscripted:
        await client.script_load(script.script)
        resent = [calls[at] for at in unscripted]
        again = await _evalsha_pipeline(client, script.sha, resent)
        for at, reply in zip(unscripted, again, strict=True):
            replies[at] = reply
    return replies


async def _evalsha_pipeline(
    client: redis.asyncio.Redis, sha: str, calls: Sequence[ScriptCall]
) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


class CoalescedScript:
    """A Lua script whose concurrent calls share round trips.

    A call made while none of this script's round trips is under way leaves at once,
    alone, so a quiet gateway pays nothing for this. The calls made while one is under
    way collect during the current turn of the event loop and leave together at its
    end, in one pipeline; each caller gets its own reply or error. Under load the
    gateway's admission checks then cost Redis and the gateway a fraction of a round
    trip each. Each call is still its own atomic script run. A call whose caller gave
    up before it left is not sent. On a Cluster, whose users live on different nodes,
    every call goes alone.
    """

    def __init__(self, client: AsyncRedis, source: str) -> None:
        self._client = client
        self._script = client.register_script(source)
        self._coalesce = not isinstance(client, redis.asyncio.RedisCluster)
        self._pending: list[tuple[ScriptCall, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._under_way = 0  # round trips of this script not yet answered

    async def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if not self._coalesce:
            return await self._script(keys=keys, args=args)
        if not self._under_way:
            self._under_way += 1
            try:
                return await self._script(keys=keys, args=args)
            finally:
                self._under_way -= 1
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._send_pending)
        reply: asyncio.Future[Any] = loop.create_future()
        self._pending.append(((keys, args), reply))
        return await reply

    def _send_pending(self) -> None:
        batch = [(call, reply) for call, reply in self._pending if not reply.done()]
        self._pending = []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[ScriptCall, asyncio.Future[Any]]]) -> None:
        calls = [call for call, _ in batch]
        self._under_way += 1
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
                if len(calls) == 1:
                    keys, args = calls[0]
                    replies = [await self._script(keys=keys, args=args)]
                else:
                    assert isinstance(self._client, redis.asyncio.Redis)
                    replies = await run_pipelined(self._client, self._script, calls)
        except asyncio.CancelledError:
            for _, reply in batch:
                reply.cancel()
            raise
        except Exception as exc:  # the callers handle it as they would their own
            replies = [exc] * len(batch)
        finally:
            self._under_way -= 1
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class RedisHealth:
    """Whether Redis answered lately; logs once when an outage starts and ends."""

    def __init__(self, client: AsyncRedis | None = None) -> None:
        self._client = client
        self._healthy = True
        self._down_since = 0.0
        self._failures = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    def record_failure(self, exc: BaseException) -> None:
        """Note a failed call; only the first of an outage is logged."""
        self._failures += 1
        if not self._healthy:
            return
        self._healthy = False
        self._down_since = time.monotonic()
        logger.warning(
            "Redis is unreachable (%s: %s); failing requests until it answers again",
            type(exc).__name__,
            exc,
        )

    def record_success(self) -> None:
        """Note a successful call; the first after an outage is logged."""
        if self._healthy:
            return
        self._healthy = True
        logger.info(
            "Redis answers again after %.1f s and %d failed calls",
            time.monotonic() - self._down_since,
            self._failures,
        )
        self._failures = 0

    async def probe(self) -> bool:
        """PING Redis (for /readyz), record the outcome and return it."""
        if self._client is None:
            raise RuntimeError("RedisHealth.probe needs a client")
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
                await self._client.ping()
        except REDIS_ERRORS as exc:
            self.record_failure(exc)
            return False
        self.record_success()
        return True


@contextmanager
def unavailable_on_failure(health: RedisHealth | None = None) -> Iterator[None]:
    """Turn a Redis failure inside the block into `Unavailable`, noting it in health."""
    try:
        yield
    except REDIS_ERRORS as exc:
        if health is not None:
            health.record_failure(exc)
        raise Unavailable() from exc
    if health is not None:
        health.record_success()
