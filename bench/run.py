"""`make bench`: one gateway worker measured against the fake provider called directly
and through an nginx hop, in the same run, on the same machine.

    .venv/bin/python -m bench.run [--seconds 5] [--out bench/results/latest]

Measures requests/s and latency p50/p99 at 1 and 50 connections (wrk), stream time to
first byte and total time of a 200-event SSE answer, per-event relay delay of a paced
stream, the gateway's memory with 1,000 open streams, and Redis round trips per request;
for OpenAI pass-through and for a Claude model through the translator. Prints a table
with ratios, writes `<out>.json` and `<out>.png`. Needs wrk and nginx on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from bench import loadgen, report
from bench.loadgen import Target
from bench.redis_count import round_trips, server_commands
from bench.redis_roundtrips import limiter_latency
from bench.stack import CLAUDE_STREAM_MODEL, STREAM_MODEL, Stack, raise_open_file_limit

PROMPT = [{"role": "user", "content": "Say hello in French, in one short sentence."}]
OPENAI_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": PROMPT}
CLAUDE_BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "messages": PROMPT}
ANTHROPIC_BODY: dict[str, Any] = {**CLAUDE_BODY, "max_tokens": 1024}
STREAMS_FOR_MEMORY = 1000
STREAM_ROUNDS = 3
STREAM_RUNS = 60  # streams written at once, per target, over all rounds
PACED_RUNS = 30  # paced streams (about 0.45 s each), per target, over all rounds
TOKENS = 200


def request_targets(stack: Stack) -> dict[str, dict[str, Target]]:
    """Per suite: the direct call, the nginx hop, the bare stack and the gateway."""
    up = f"http://127.0.0.1:{stack.upstream_port}"
    hop = f"http://127.0.0.1:{stack.hop_port}"
    bare = f"http://127.0.0.1:{stack.bare_port}/fixed"
    gw = f"http://127.0.0.1:{stack.gateway_port}"
    chat, messages = "/v1/chat/completions", "/v1/messages"
    return {
        "openai": {
            "direct": Target("direct", up + chat, OPENAI_BODY),
            "nginx": Target("nginx", hop + chat, OPENAI_BODY),
            "bare": Target("bare", bare + chat, OPENAI_BODY),
            "gateway": Target("gateway", gw + chat, OPENAI_BODY, auth=True),
        },
        "claude": {
            "direct": Target("direct", up + messages, ANTHROPIC_BODY),
            "nginx": Target("nginx", hop + messages, ANTHROPIC_BODY),
            "bare": Target("bare", bare + messages, ANTHROPIC_BODY),
            "gateway": Target("gateway", gw + chat, CLAUDE_BODY, auth=True),
        },
    }


def stream_targets(stack: Stack) -> dict[str, dict[str, Target]]:
    up = f"http://127.0.0.1:{stack.stream_port}"
    hop = f"http://127.0.0.1:{stack.hop_stream_port}"
    bare = f"http://127.0.0.1:{stack.bare_port}/stream"
    gw = f"http://127.0.0.1:{stack.gateway_port}"
    chat, messages = "/v1/chat/completions", "/v1/messages"
    openai = {**OPENAI_BODY, "stream": True}
    anthropic = {**ANTHROPIC_BODY, "stream": True}
    return {
        "openai": {
            "direct": Target("direct", up + chat, openai),
            "nginx": Target("nginx", hop + chat, openai),
            "bare": Target("bare", bare + chat, openai),
            "gateway": Target(
                "gateway", gw + chat, {**openai, "model": STREAM_MODEL}, auth=True
            ),
        },
        "claude": {
            "direct": Target("direct", up + messages, anthropic),
            "nginx": Target("nginx", hop + messages, anthropic),
            "bare": Target("bare", bare + messages, anthropic),
            "gateway": Target(
                "gateway",
                gw + chat,
                {**openai, "model": CLAUDE_STREAM_MODEL},
                auth=True,
            ),
        },
    }


def measure_requests(
    stack: Stack, tokens: list[str], seconds: float, repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """wrk at 1 and 50 connections for every target, `repeats` rounds taking turns
    (so a slow spell of the machine hits every target alike), reported as the median
    round; server-side Redis commands during the gateway's 50-connection runs."""
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    commands: dict[str, list[float]] = {}
    for targets in request_targets(stack).values():
        for target in targets.values():
            loadgen.wrk(target, 50, 1, tokens)  # warm-up
    for _ in range(repeats):
        for suite, targets in request_targets(stack).items():
            for name, target in targets.items():
                for connections in (1, 50):
                    figures, per_request = _one_wrk_run(
                        stack, target, connections, seconds, tokens
                    )
                    runs.setdefault((suite, name, connections), []).append(figures)
                    if name == "gateway" and connections == 50:
                        commands.setdefault(suite, []).append(per_request)
                    _progress(suite, name, connections, figures)
    results: dict[str, Any] = {}
    for (suite, name, connections), rounds in runs.items():
        row = results.setdefault(suite, {}).setdefault(name, {})
        row[f"c{connections}"] = loadgen.median_figures(rounds)
    redis_commands = {suite: statistics.median(c) for suite, c in commands.items()}
    return results, redis_commands


def _one_wrk_run(
    stack: Stack, target: Target, connections: int, seconds: float, tokens: list[str]
) -> tuple[dict[str, Any], float]:
    """One wrk run; for the gateway also its CPU time and Redis commands per request."""
    _quiet_redis(stack.redis_client)
    before = server_commands(stack.redis_client)
    cpu_before = loadgen.cpu_seconds(stack.gateway_pid)
    gc_before = loadgen.gc_collections(stack.gateway_metrics_port)
    log_start = stack.gateway_log_size() if target.name == "gateway" else 0
    figures = loadgen.wrk(target, connections, seconds, tokens)
    requests = max(figures["requests"], 1)
    if target.name == "gateway":
        if figures["errors"]:
            log = stack.gateway_log_since(log_start)
            figures["gateway_answers"] = answers_logged(log)
        cpu = loadgen.cpu_seconds(stack.gateway_pid) - cpu_before
        figures["gateway_cpu_us_per_request"] = round(1e6 * cpu / requests, 1)
        gc_after = loadgen.gc_collections(stack.gateway_metrics_port)
        figures["gc_collections_per_1000_requests"] = {
            generation: round(1000 * (gc_after[generation] - before) / requests, 2)
            for generation, before in gc_before.items()
        }
    per_request = (server_commands(stack.redis_client) - before) / requests
    return figures, round(per_request, 2)


def answers_logged(log: str) -> dict[str, Any]:
    """What the gateway answered during a run wrk saw errors in: the statuses of its
    access log, and its warning and error lines (the last ten)."""
    statuses: collections.Counter[int] = collections.Counter()
    problems = []
    for line in log.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            problems.append(line)
            continue
        if entry.get("logger") == "subgate.access":
            statuses[entry.get("status", 0)] += 1
        elif entry.get("level") in ("warning", "error", "critical"):
            problems.append(entry.get("message", line))
    return {"statuses": dict(statuses), "problems": problems[-10:]}


def _progress(suite: str, name: str, connections: int, f: dict[str, Any]) -> None:
    errors = f" errors={f['error_kinds']}" if f["errors"] else ""
    if "gateway_answers" in f:
        errors += f" gateway answered {f['gateway_answers']}"
    if "gateway_cpu_us_per_request" in f:
        errors += f"  gateway CPU {f['gateway_cpu_us_per_request']} µs/request"
    print(
        f"  {suite:<7}{name:<8} c{connections:<3} {f['rps']:>9.0f} req/s  "
        f"p50 {f['p50_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms{errors}",
        flush=True,
    )


async def _sequential(target: Target, token: str, count: int) -> int:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(
                target.url, data=orjson.dumps(target.body), headers=headers
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{target.url}: status {response.status}")
    return count


def _quiet_redis(client: redis.Redis, deadline_s: float = 30) -> None:
    """Wait until no command reaches Redis for a quarter second (requests whose
    clients wrk already left may still be running in the gateway)."""
    deadline = time.monotonic() + deadline_s
    last = server_commands(client)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = server_commands(client)
        if now == last:
            return
        last = now


def measure_round_trips(stack: Stack, tokens: list[str]) -> dict[str, Any]:
    """Commands the gateway sends Redis per request, counted with MONITOR."""
    _quiet_redis(stack.redis_client)
    out = {}
    for suite, targets in request_targets(stack).items():
        gateway = targets["gateway"]
        out[suite] = asyncio.run(
            round_trips(
                "127.0.0.1",
                stack.redis_port,
                lambda g=gateway: _sequential(g, tokens[0], 200),  # type: ignore[misc]
            )
        )
    return out


def measure_streams(stack: Stack, tokens: list[str]) -> dict[str, Any]:
    """Stream timings in rounds in which the direct, nginx, bare-stack and gateway
    runs take turns, like the wrk rounds, so a slow spell of the VM hits every target
    alike; each target's figures are the medians of all its rounds' streams together."""
    # Let the gateway finish what wrk's abandoned requests left it, so the stream
    # figures measure a stream, not the tail of a load test.
    _quiet_redis(stack.redis_client)
    runs: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
    round_ttfb: dict[tuple[str, str], list[float]] = {}
    targets = stream_targets(stack)
    for _ in range(STREAM_ROUNDS):
        for suite, by_name in targets.items():
            for name, target in by_name.items():
                bursts, paced = loadgen.stream_runs(
                    target,
                    tokens[0],
                    runs=STREAM_RUNS // STREAM_ROUNDS,
                    paced_runs=PACED_RUNS // STREAM_ROUNDS,
                    interval_ms=2,
                )
                pooled = runs.setdefault((suite, name), ([], []))
                pooled[0].extend(bursts)
                pooled[1].extend(paced)
                ttfb = statistics.median(t.ttfb_ms for t in bursts)
                round_ttfb.setdefault((suite, name), []).append(round(ttfb, 3))
    results: dict[str, Any] = {}
    for (suite, name), (bursts, paced) in runs.items():
        figures = loadgen.stream_figures(bursts, paced, interval_ms=2)
        figures["rounds_ttfb_p50_ms"] = round_ttfb[(suite, name)]
        results.setdefault(suite, {})[name] = figures
        print(
            f"  {suite:<7}{name:<8} stream ttfb {figures['ttfb_p50_ms']:.3f} ms "
            f"(rounds {figures['rounds_ttfb_p50_ms']}) "
            f"total {figures['total_p50_ms']:.2f} ms  paced ttfb "
            f"{figures['paced_ttfb_p50_ms']:.3f} ms  chunk delay p50 "
            f"{figures['chunk_delay_p50_ms']:.3f} p99 "
            f"{figures['chunk_delay_p99_ms']:.3f} ms  "
            f"reads/stream {figures['paced_reads_per_stream']}",
            flush=True,
        )
    return results


def measure_memory(
    stack: Stack, tokens: list[str], suites: list[str]
) -> dict[str, Any]:
    results = {}
    for suite in suites:
        target = stream_targets(stack)[suite]["gateway"]
        figures = asyncio.run(
            loadgen.open_streams(
                target, tokens, STREAMS_FOR_MEMORY, stack.gateway_pid, hold_ms=20000
            )
        )
        results[suite] = figures
        print(
            f"  {suite:<7}{STREAMS_FOR_MEMORY} open streams: opened "
            f"{figures['opened']} (failures {figures['failures']}) in "
            f"{figures['seconds_to_open']} s; gateway RSS "
            f"{figures['rss_before_mb']} -> {figures['rss_open_mb']} MB "
            f"(peak {figures['peak_mb']} MB)",
            flush=True,
        )
        if figures["failure_examples"]:
            print(f"    failures: {figures['failure_examples']}")
    return results


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    import os

    import uvicorn

    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvicorn": uvicorn.__version__,
        "nginx": nginx.strip().rpartition("/")[2],
        "wrk": wrk_v.split()[1] if wrk_v else "",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4, help="per wrk run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of wrk runs (median reported)"
    )
    parser.add_argument("--out", default="bench/results/latest")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-clients", action="store_true")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _stop_on_signal)
    open_files = raise_open_file_limit()
    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": machine(),
        "open_file_limit": open_files,
        # Other work on the machine during the run skews every figure: look here first.
        "load_average": {"start": _load_average()},
    }
    with tempfile.TemporaryDirectory(prefix="subgate-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            tokens = stack.mint_tokens(TOKENS)
            print("Requests (wrk, one thread):", flush=True)
            requests, commands = measure_requests(
                stack, tokens, args.seconds, max(1, args.repeats)
            )
            result["requests"] = requests
            result["redis"] = {
                "server_commands_per_request": commands,
                "monitor": measure_round_trips(stack, tokens),
                "limiter": asyncio.run(limiter_latency(stack.redis_url)),
            }
            print("Streams (200 events; paced: 2 ms apart):", flush=True)
            result["streams"] = measure_streams(stack, tokens)
            if not args.skip_memory:
                result["memory"] = measure_memory(stack, tokens, ["openai", "claude"])
        except Exception:
            if stack.gateway is not None:
                print(stack.gateway.logs()[-3000:], file=sys.stderr)
            raise
        finally:
            stack.stop()
    if not args.skip_clients:
        from bench import client_compare

        print("Upstream HTTP client, bare pass-through proxy:", flush=True)
        result["clients"] = client_compare.compare(args.seconds)
    result["seconds_taken"] = round(time.monotonic() - started, 1)
    result["load_average"]["end"] = _load_average()
    report.finish(result, Path(args.out))


if __name__ == "__main__":
    main()
