"""`make soak`: mixed streaming and non-streaming traffic from many users through
several gateway processes for about two minutes, on loopback only.

Checks at the end: no answer but 200 and 429, each gateway's RSS within 10 % of its
value after warm-up, and for each user the Redis hour counter equal to the number of
requests the (fake) provider saw for that user. Prints the numbers; exit status 1 when
a check fails.

    .venv/bin/python scripts/soak.py [--seconds 120] [--users 40] [--gateways 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from auth_service.dev_storekit import DevChain  # noqa: E402
from shared.identity import provider_user_hash  # noqa: E402
from tests.hostile.support import rss_bytes  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402
from tests.support.processes import (  # noqa: E402
    ServiceProcess,
    service_env,
    start_auth,
    start_gateway,
)
from tests.support.redis_server import RedisServer  # noqa: E402

BUNDLE_ID = "com.example.subgate"
RSS_TOLERANCE = 0.10


@dataclass
class Result:
    """What a soak run measured."""

    statuses: Counter[int] = field(default_factory=Counter)
    rss_after_warmup: dict[int, int] = field(default_factory=dict)
    rss_at_end: dict[int, int] = field(default_factory=dict)
    mismatched_users: list[str] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0

    def problems(self, *, check_rss: bool = True) -> list[str]:
        found = []
        unexpected = {s: n for s, n in self.statuses.items() if s not in (200, 429)}
        if unexpected:
            found.append(f"unexpected statuses: {unexpected}")
        if check_rss:
            for pid, start in self.rss_after_warmup.items():
                end = self.rss_at_end[pid]
                if abs(end - start) > start * RSS_TOLERANCE:
                    found.append(f"gateway {pid}: RSS {start >> 20} -> {end >> 20} MB")
        if self.mismatched_users:
            found.append(f"counters differ for {self.mismatched_users}")
        return found


def run(
    seconds: float = 120, users: int = 40, gateways: int = 3, parallel: int = 24
) -> Result:
    """Start Redis, a fake OpenAI, auth and `gateways` gateways; drive traffic."""
    with tempfile.TemporaryDirectory(prefix="subgate-soak-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = RedisServer(tmp / "redis")
        redis_server.start()
        try:
            with FakeOpenAI() as fake:
                return _run_stack(tmp, redis_server, fake, seconds, users, gateways,
                                  parallel)  # fmt: skip
        finally:
            redis_server.stop()


def _run_stack(
    tmp: Path,
    redis_server: RedisServer,
    fake: FakeOpenAI,
    seconds: float,
    users: int,
    gateways: int,
    parallel: int,
) -> Result:
    chain = DevChain.create()
    roots = tmp / "roots"
    roots.mkdir()
    chain.write_root(roots)
    env = service_env(
        REDIS_URL=redis_server.url,
        APP_BUNDLE_ID=BUNDLE_ID,
        APPLE_ROOT_CERTS_DIR=str(roots),
        OPENAI_API_KEY="sk-soak-server-key",
        OPENAI_BASE_URL=fake.base_url,
        USER_MINUTE_RATE_LIMIT="120",
        USER_HOURLY_RATE_LIMIT="100000",
        MINUTE_BLOCK_SECONDS="3",
        USER_PERMANENT_BLOCK="0",
        LOGIN_RATE_LIMIT="100000",
        LOG_LEVEL="warning",
    )
    auth = start_auth(tmp, env)
    started: list[ServiceProcess] = []
    try:
        for index in range(gateways):
            started.append(start_gateway(tmp, env, auth.url, name=f"gateway{index}"))
        tokens = _log_in(started[0].url, chain, users)
        result = asyncio.run(_drive(started, tokens, seconds, parallel))
        _compare_counters(result, redis_server.url, fake, tokens)
        return result
    finally:
        for process in started:
            process.stop()
        auth.stop()


def _log_in(url: str, chain: DevChain, users: int) -> dict[str, str]:
    """user id -> session token."""
    tokens = {}
    for index in range(users):
        account = f"00000000-0000-4000-8000-{index:012d}"
        jws = chain.sign_transaction(bundle_id=BUNDLE_ID, app_account_token=account)
        answer = httpx.post(url + "/appstore", content=jws, timeout=10)
        answer.raise_for_status()
        tokens[f"acct:{account}"] = answer.json()["token"]
    return tokens


async def _drive(
    gateways: list[ServiceProcess],
    tokens: dict[str, str],
    seconds: float,
    parallel: int,
) -> Result:
    result = Result()
    warmup = min(15.0, seconds / 5)
    started = time.monotonic()
    deadline = started + seconds
    plan = itertools.cycle(
        [(g.url, token, n % 3 == 0) for n, (g, token) in
         enumerate(itertools.product(gateways, tokens.values()))]
    )  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                url, token, stream = next(plan)
                status = await _one(client, url, token, stream)
                result.statuses[status] += 1
                result.requests += 1

        async def sample_rss() -> None:
            await asyncio.sleep(warmup)
            result.rss_after_warmup = {
                g.process.pid: rss_bytes(g.process.pid) for g in gateways if g.process
            }

        await asyncio.gather(sample_rss(), *(worker() for _ in range(parallel)))
    result.rss_at_end = {
        g.process.pid: rss_bytes(g.process.pid) for g in gateways if g.process
    }
    result.seconds = time.monotonic() - started
    return result


async def _one(client: httpx.AsyncClient, url: str, token: str, stream: bool) -> int:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "soak"}],
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers
        ) as answer:
            data = await answer.aread()
    except httpx.HTTPError:
        return 0
    if answer.status_code == 200 and stream and not data.endswith(b"[DONE]\n\n"):
        return -1  # a stream that did not end properly
    return answer.status_code


def _compare_counters(
    result: Result, redis_url: str, fake: FakeOpenAI, tokens: dict[str, str]
) -> None:
    seen = Counter(
        r.json.get("user") for r in fake.requests if isinstance(r.json, dict)
    )
    with redis.Redis.from_url(redis_url) as client:
        for user in tokens:
            counted = client.zcard(f"subgate:hour:{{{user}}}")
            if counted != seen[provider_user_hash(user)]:
                result.mismatched_users.append(user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=24)
    args = parser.parse_args(argv)
    result = run(args.seconds, args.users, args.gateways, args.parallel)
    print(f"{result.requests} requests in {result.seconds:.0f} s "
          f"({result.requests / max(result.seconds, 1):.0f}/s)")  # fmt: skip
    print(f"statuses: {dict(sorted(result.statuses.items()))}")
    for pid, start in result.rss_after_warmup.items():
        end = result.rss_at_end[pid]
        change = (end - start) / start
        print(f"gateway {pid}: RSS after warm-up {start / 2**20:.1f} MB, "
              f"at end {end / 2**20:.1f} MB ({change:+.1%})")  # fmt: skip
    problems = result.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: ok" if not problems else "soak: FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
