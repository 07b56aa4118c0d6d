"""Counting the gateway's Redis round trips per request, from Redis's side.

`MONITOR` lists every command a client sent, and, tagged `[<db> lua]`, every command a
script ran inside Redis; the client-sent ones are the round trips. Server-side command
totals are read from `INFO commandstats` the way bench/redis_roundtrips.py does, with
one long-lived client so its own connection handshake is not counted again and again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from shared.limits import _CHECK_SCRIPT
from shared.usage import _SETTLE_SCRIPT

_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')
# Which script an EVALSHA ran, by the SHA1 redis-py sends.
_SCRIPTS = {
    hashlib.sha1(_CHECK_SCRIPT.encode()).hexdigest(): "admission",
    hashlib.sha1(_SETTLE_SCRIPT.encode()).hexdigest(): "settlement",
}


_NOT_COUNTED = {"cmdstat_info", "cmdstat_hello", "cmdstat_client|setinfo"}


def server_commands(client: redis.Redis) -> int:
    """Commands Redis executed so far (scripts' inner commands included), less this
    client's INFO calls and any client's connection handshake."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in _NOT_COUNTED)


async def round_trips(
    host: str, port: int, work: Callable[[], Awaitable[int]]
) -> dict[str, Any]:
    """Run `work` (it returns how many requests it made) under MONITOR, and count the
    commands clients sent per request, by name."""
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(b"MONITOR\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"+OK")
    lines: list[bytes] = []

    async def collect() -> None:
        while True:
            lines.append(await reader.readline())

    collector = asyncio.create_task(collect())
    started = time.monotonic()
    requests = await work()
    seconds = time.monotonic() - started
    # A marker the monitor sees after every command of `work`; other commands (a
    # settlement batch, its script's own) may follow it before it is looked for.
    seen = len(lines)
    _, marker = await asyncio.open_connection(host, port)
    marker.write(b"ECHO bench-monitor-end\r\n")
    await marker.drain()
    deadline = time.monotonic() + 10
    while not any(b"bench-monitor-end" in line for line in lines[seen:]):
        if time.monotonic() > deadline:
            raise TimeoutError("MONITOR never showed the end marker")
        await asyncio.sleep(0.01)
    marker.close()
    collector.cancel()
    writer.close()

    sent: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    for line in lines:
        match = _LINE.match(line)
        if match is None or b"bench-monitor-end" in line:
            continue
        origin, command = match.group(1), match.group(2).decode().upper()
        if origin == b"lua":
            inner[command] += 1
            continue
        script = _SCRIPTS.get((match.group(3) or b"").decode())
        sent[
            f"{command} ({script})" if command == "EVALSHA" and script else command
        ] += 1
    sent.pop("ECHO", None)
    per = max(requests, 1)
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "round_trips_per_request": round(sum(sent.values()) / per, 3),
        "admission_round_trips_per_request": round(
            sent["EVALSHA (admission)"] / per, 3
        ),
        "sent": dict(sent),
        "script_commands_per_request": round(sum(inner.values()) / per, 2),
    }
