"""Concurrent calls of one script share round trips, and each caller still gets its
own reply or error (shared/redis.py `CoalescedScript`)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ResponseError

from shared.redis import REDIS_ERRORS, AsyncRedis, CoalescedScript, create_redis, ready
from tests.support.redis_server import free_port

# Counts the calls on one key and answers with the caller's tag and the count;
# refuses the tag "bad" with an error of its own.
COUNTING = """
if ARGV[1] == 'bad' then
  return redis.error_reply('refused ' .. ARGV[1])
end
return ARGV[1] .. ':' .. redis.call('INCR', KEYS[1])
"""
KEY = "subgate:test:{calls}"


async def _call_all(script: CoalescedScript, tags: list[str]) -> list[object]:
    return await asyncio.gather(
        *(script(keys=[KEY], args=[tag]) for tag in tags), return_exceptions=True
    )


async def test_every_caller_gets_its_own_reply(redis_client: AsyncRedis) -> None:
    await ready(redis_client)  # as the services do before their first command
    script = CoalescedScript(redis_client, COUNTING)
    tags = [f"caller{i}" for i in range(100)]

    replies = await _call_all(script, tags)

    counts = []
    for tag, reply in zip(tags, replies, strict=True):
        assert isinstance(reply, str)
        own_tag, _, count = reply.partition(":")
        assert own_tag == tag
        counts.append(int(count))
    assert sorted(counts) == list(range(1, 101))  # every call ran exactly once


async def test_concurrent_calls_leave_together_on_one_connection(
    single_url: str,
) -> None:
    client = create_redis(single_url, cluster=False)
    script = CoalescedScript(client, COUNTING)
    try:
        await _call_all(script, [f"caller{i}" for i in range(100)])
        # The first call left alone, one pipeline took the other 99; calls one by
        # one would have opened up to 100 connections at once.
        assert len(client.connection_pool._available_connections) == 2  # type: ignore[union-attr]
    finally:
        await client.aclose()
    observer = redis.Redis.from_url(single_url)
    assert observer.get(KEY) == b"100"
    observer.close()


async def test_an_error_reaches_only_its_own_caller(redis_client: AsyncRedis) -> None:
    await ready(redis_client)
    script = CoalescedScript(redis_client, COUNTING)

    replies = await _call_all(script, ["a", "bad", "b"])

    first, refused, last = replies
    assert isinstance(refused, ResponseError)
    assert "refused bad" in str(refused)
    assert str(first).startswith("a:") and str(last).startswith("b:")
    assert sorted(int(str(r)[2:]) for r in (first, last)) == [1, 2]


async def test_calls_run_once_after_redis_lost_its_scripts(
    single_client: AsyncRedis,
) -> None:
    script = CoalescedScript(single_client, COUNTING)
    await script(keys=[KEY], args=["first"])
    await single_client.script_flush()  # what a Redis restart does to the script cache

    replies = await _call_all(script, [f"caller{i}" for i in range(10)])

    assert sorted(int(str(r).partition(":")[2]) for r in replies) == list(range(2, 12))
    assert await single_client.get(KEY) == "11"


async def test_a_lone_call_leaves_at_once(single_client: AsyncRedis) -> None:
    script = CoalescedScript(single_client, COUNTING)
    call = asyncio.create_task(script(keys=[KEY], args=["alone"]))
    # Sent during the caller's own step, not at the end of the loop's turn: the
    # reply can only arrive on a later turn, but the command is already out.
    await asyncio.sleep(0)
    assert script._pending == []  # nothing waits for the end of the turn
    assert await call == "alone:1"


async def test_a_call_given_up_before_it_left_is_not_sent(
    single_client: AsyncRedis,
) -> None:
    script = CoalescedScript(single_client, COUNTING)
    first = asyncio.create_task(script(keys=[KEY], args=["first"]))
    abandoned = asyncio.create_task(script(keys=[KEY], args=["gone"]))
    await asyncio.sleep(
        0
    )  # the first is under way, the second waits for the turn's end
    abandoned.cancel()

    assert await first == "first:1"
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert await script(keys=[KEY], args=["next"]) == "next:2"
    assert await single_client.get(KEY) == "2"


async def test_every_caller_sees_the_failure_when_redis_is_down() -> None:
    client = create_redis(f"redis://127.0.0.1:{free_port()}", cluster=False)
    script = CoalescedScript(client, COUNTING)
    try:
        replies = await _call_all(script, [f"caller{i}" for i in range(5)])
    finally:
        await client.aclose()

    assert all(isinstance(reply, REDIS_ERRORS) for reply in replies), replies
