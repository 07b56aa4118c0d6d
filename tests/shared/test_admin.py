"""The operator command line, run as operators run it: a process with REDIS_URL set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared.limits import Limits, RateLimiter, user_keys
from shared.redis import create_redis

ROOT = Path(__file__).resolve().parents[2]
BANNED = "acct:11111111-2222-4333-8444-555555555555"
BLOCKED = "txn:2000000999"


def _admin(url: str, cwd: Path, *args: str, cluster: bool = False) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": url,
        "REDIS_CLUSTER": "1" if cluster else "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared.admin", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def _seed(client: redis.Redis | redis.RedisCluster) -> None:
    client.hset(user_keys(BANNED)["ban"], mapping={"strikes": 50, "banned_at": 0})
    client.sadd(user_keys(BANNED)["revoked"], "2000", "3000")
    client.hset(user_keys(BLOCKED)["ban"], "strikes", 2)
    client.set(user_keys(BLOCKED)["block"], "minute", ex=300)


def test_admin_bans_lists_users_readably(single_url: str, tmp_path: Path) -> None:
    _seed(redis.Redis.from_url(single_url))

    out = _admin(single_url, tmp_path, "bans")
    banned_only = _admin(single_url, tmp_path, "bans", "--banned")

    lines = out.splitlines()
    assert lines[0].split() == [
        "USER",
        "STRIKES",
        "BANNED",
        "BANNED",
        "AT",
        "BLOCKED",
        "FOR",
    ]
    assert f"{BANNED}  50" in out
    assert "1970-01-01 00:00:00 UTC" in out
    assert BLOCKED in out and "minute" not in out
    assert BLOCKED not in banned_only


def test_admin_show_json_and_lifting(single_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(single_url, decode_responses=True)
    _seed(client)

    shown = json.loads(_admin(single_url, tmp_path, "--json", "show", BLOCKED))
    text = _admin(single_url, tmp_path, "show", BANNED)
    unbanned = _admin(single_url, tmp_path, "unban", BANNED)
    unblocked = _admin(single_url, tmp_path, "unblock", BLOCKED)

    assert shown["strikes"] == 2 and not shown["banned"]
    assert 0 < shown["blocked_for_seconds"] <= 300
    assert shown["block_reason"] == "minute"
    assert "2000, 3000" in text and "yes, since 1970-01-01" in text
    assert unbanned.startswith("Lifted the ban")
    assert unblocked.startswith("Lifted the block")
    assert not client.exists(user_keys(BANNED)["ban"], user_keys(BLOCKED)["block"])
    assert _admin(single_url, tmp_path, "revoked", BANNED).split() == ["2000", "3000"]


async def test_admin_unblock_lets_the_user_through_at_once(
    single_url: str, tmp_path: Path
) -> None:
    client = create_redis(single_url, cluster=False)
    limiter = RateLimiter(client, enabled=True)
    limits = Limits(3, 0, 0, 300, 0, 86400)
    try:
        for _ in range(3):
            assert (await limiter.check(BLOCKED, limits=limits, otid=None)).allowed
        refused = await limiter.check(BLOCKED, limits=limits, otid=None)
        assert refused.reason == "minute"

        out = _admin(single_url, tmp_path, "unblock", BLOCKED)

        assert out.startswith("Lifted the block")
        # The window that caused the block is empty too: not blocked again at once.
        assert (await limiter.check(BLOCKED, limits=limits, otid=None)).allowed
    finally:
        await client.aclose()


def test_admin_unblock_empties_the_windows_on_a_cluster(
    cluster_url: str, tmp_path: Path
) -> None:
    client = redis.RedisCluster.from_url(cluster_url)
    keys = user_keys(BLOCKED)
    client.set(keys["block"], "minute", ex=300)
    client.zadd(keys["minute"], {"a": 1})
    client.zadd(keys["hour"], {"a": 1})

    out = json.loads(
        _admin(cluster_url, tmp_path, "--json", "unblock", BLOCKED, cluster=True)
    )

    assert out == {"user": BLOCKED, "changed": True, "windows_emptied": True}
    assert not client.exists(keys["block"], keys["minute"], keys["hour"])
    client.close()


def test_admin_reports_unreachable_redis(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _admin("redis://127.0.0.1:1/0", tmp_path, "bans")

    assert failed.value.returncode == 1
    assert "Redis is unreachable" in failed.value.stderr


@pytest.mark.cluster
def test_admin_bans_scans_every_cluster_master(
    cluster_url: str, tmp_path: Path
) -> None:
    client = redis.RedisCluster.from_url(cluster_url)
    users = [f"txn:{n}" for n in range(20)]
    for user in users:
        client.hset(user_keys(user)["ban"], "strikes", 1)
    nodes = {client.keyslot(user_keys(u)["ban"]) // 5462 for u in users}

    listed = json.loads(_admin(cluster_url, tmp_path, "--json", "bans", cluster=True))

    assert len(nodes) == 3
    assert sorted(row["user"] for row in listed["users"]) == sorted(users)
    client.close()
