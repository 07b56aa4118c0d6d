"""The bench's own parts: its streaming fake speaks the providers' wire formats (read
here by the official SDKs), and a report of several rounds shows their median."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import redis
from prometheus_client import start_http_server

from bench import loadgen, report, run
from bench.redis_count import round_trips
from bench.stack import wait_port
from shared.limits import Limits, RateLimiter
from shared.redis import create_redis
from shared.usage import Charge, UsageLedger
from tests.support.redis_server import RedisServer, free_port

FAKE = Path(__file__).resolve().parents[2] / "bench" / "fake_stream.py"


@contextlib.contextmanager
def _serving(args: list[str]) -> Iterator[str]:
    """A server started with `args` plus a free port; its base URL while it runs."""
    port = free_port()
    process = subprocess.Popen([*args, str(port)])
    try:
        wait_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with _serving([sys.executable, str(FAKE)]) as url:
        yield url


@pytest.mark.parametrize("model", ["gpt-bench-n5", "gpt-bench-n5-i1"])
def test_fake_stream_is_an_openai_stream(fake_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=fake_url + "/v1", api_key="unused", max_retries=0)

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.count(" ") == 5 and text.startswith("t")
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_fake_stream_sends_usage_only_when_asked(fake_url: str) -> None:
    client = openai.OpenAI(base_url=fake_url + "/v1", api_key="unused", max_retries=0)

    chunks = list(
        client.chat.completions.create(
            model="gpt-bench-n3",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
    )

    assert all(c.usage is None and c.choices for c in chunks)


@pytest.mark.parametrize("model", ["claude-bench-n4", "claude-bench-n4-i1"])
def test_fake_stream_is_an_anthropic_stream(fake_url: str, model: str) -> None:
    client = anthropic.Anthropic(base_url=fake_url, api_key="unused", max_retries=0)

    with client.messages.stream(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()

    assert text.count(" ") == 4
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4


@pytest.fixture
def bare_url(fake_url: str, redis_server: RedisServer) -> Iterator[str]:
    args = [sys.executable, "-m", "bench.bare_stack"]
    args += ["--redis", redis_server.url, "--fixed", fake_url, "--stream", fake_url]
    with _serving(args) as url:  # the port comes last, after the options
        yield url


def test_bare_stack_relays_every_route_with_one_redis_write_each(
    bare_url: str, redis_server: RedisServer
) -> None:
    with (
        redis.Redis(port=redis_server.port) as counter,
        openai.OpenAI(
            base_url=bare_url + "/stream/v1", api_key="unused", max_retries=0
        ) as openai_client,
        anthropic.Anthropic(
            base_url=bare_url + "/stream", api_key="unused", max_retries=0
        ) as claude,
    ):
        before = int(counter.get("bare:count") or 0)

        chunks = list(
            openai_client.chat.completions.create(
                model="gpt-bench-n3-i1",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
        )
        with claude.messages.stream(
            model="claude-bench-n4", max_tokens=16, messages=[]
        ) as stream:
            text = "".join(stream.text_stream)

        fixed = list(
            openai_client.with_options(
                base_url=bare_url + "/fixed/v1"
            ).chat.completions.create(
                model="gpt-bench-n2",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
        )
        counted = int(counter.get("bare:count") or 0) - before
    assert "".join(c.choices[0].delta.content or "" for c in chunks).count(" ") == 3
    assert text.count(" ") == 4
    assert "".join(c.choices[0].delta.content or "" for c in fixed).count(" ") == 2
    assert counted == 3


def test_stream_timings_read_every_event_of_every_answer(fake_url: str) -> None:
    target = loadgen.Target(
        "direct",
        fake_url + "/v1/chat/completions",
        {"model": "gpt-bench", "messages": [], "stream": True},
    )

    figures = loadgen.stream_timings(
        target, "unused", runs=3, paced_runs=2, interval_ms=1
    )

    assert figures["events"] == loadgen.EVENTS
    assert figures["paced_events_per_stream"] == loadgen.EVENTS
    # Paced events are read as they come, not in one piece at the end (how many per
    # read depends on the machine's load).
    assert figures["paced_reads_per_stream"] > 10
    assert 0 < figures["ttfb_p50_ms"] <= figures["total_p50_ms"]
    assert figures["paced_total_p50_ms"] >= loadgen.EVENTS * 1


def test_median_figures_take_the_middle_round_whole() -> None:
    rounds = [
        {"rps": r, "p50_ms": p, "errors": e}
        for r, p, e in [(1500.0, 30.0, 0), (2100.0, 22.5, 1), (1900.0, 28.0, 0)]
    ]

    figures = loadgen.median_figures(rounds)

    assert (figures["rps"], figures["p50_ms"], figures["errors"]) == (1900.0, 28.0, 0)
    assert figures["errors_all_rounds"] == 1
    assert figures["runs_rps"] == [1500.0, 2100.0, 1900.0]


def test_report_checks_both_first_byte_targets() -> None:
    row = {"c1": {"rps": 1.0, "p50_ms": 0.5}, "c50": {"rps": 2500.0}}
    stream = {
        "ttfb_p50_ms": 1.0,
        "paced_ttfb_p50_ms": 1.0,
        "chunk_delay_p99_ms": 0.2,
        "paced_reads_per_stream": 200,
        "paced_events_per_stream": 200,
    }
    result = {
        "requests": {"openai": {"direct": row, "gateway": row}},
        "streams": {
            "openai": {
                "direct": stream,
                "gateway": {**stream, "ttfb_p50_ms": 1.5, "paced_ttfb_p50_ms": 2.5},
            }
        },
    }

    checks = report.evaluate(result, "openai")

    assert checks["added_ttfb_ms"] == {"value": 0.5, "met": True}
    assert checks["added_paced_ttfb_ms"] == {"value": 1.5, "met": False}
    assert checks["rps_c50"]["met"]


def test_report_compares_the_gateway_with_every_reference_it_has() -> None:
    def row(rps: float, p50: float) -> dict[str, Any]:
        figures = {"rps": rps, "p50_ms": p50, "p99_ms": 2 * p50}
        return {"c1": figures, "c50": figures}

    def stream(ttfb: float) -> dict[str, float]:
        keys = ("ttfb_p50_ms", "total_p50_ms", "paced_ttfb_p50_ms")
        return {**dict.fromkeys(keys, ttfb), "chunk_delay_p99_ms": 0.1}

    result = {
        "requests": {
            "openai": {
                "direct": row(10_000, 0.1),
                "bare": row(0, 0.9),  # a reference that served nothing
                "gateway": row(2_000, 0.8),
            }
        },
        "streams": {
            "openai": {
                "direct": stream(0.2),
                "bare": stream(1.0),
                "gateway": stream(1.5),
            }
        },
    }

    lines = report.table(result).splitlines()
    shares = report.extras(result)

    assert [line.split(" | ")[1] for line in lines[-2:]] == [
        "gateway vs direct",
        "gateway vs bare stack",
    ]
    bare = lines[-1].split(" | ")
    assert bare[2:4] == ["-", "-0.100"]  # no ratio to 0 req/s; faster than the bare one
    assert bare[8] == "+0.500"
    assert "the stack +0.800 ms, Subgate's own work +0.500 ms" in shares


async def test_round_trips_tells_admission_from_batched_settlement(
    redis_server: RedisServer,
) -> None:
    client = create_redis(redis_server.url, cluster=False)
    limiter = RateLimiter(client, enabled=True)
    ledger = UsageLedger(client)
    limits = Limits(1000, 1000, 0, 60, 3600, 86400)
    await limiter.check("txn:0", limits=limits, otid=None)  # scripts loaded first
    await ledger.settle_batch({"txn:0": Charge(1, 1, 1), "txn:9": Charge(1, 1, 1)})

    async def work() -> int:
        for user in ("txn:1", "txn:2", "txn:3"):
            await limiter.check(user, limits=limits, otid=None)
        await ledger.settle_batch({"txn:1": Charge(3, 4, 1), "txn:2": Charge(1, 1, 1)})
        return 3

    counted = await round_trips("127.0.0.1", redis_server.port, work)
    await client.aclose()

    assert counted["sent"]["EVALSHA (admission)"] == 3
    assert counted["admission_round_trips_per_request"] == 1.0
    assert counted["sent"]["EVALSHA (settlement)"] == 2  # one pipelined batch
    assert counted["round_trips_per_request"] == round(5 / 3, 3), counted["sent"]


async def test_round_trips_ends_while_other_clients_keep_sending(
    redis_server: RedisServer,
) -> None:
    """Commands after the end marker (a settlement batch, say) must not hide it."""
    chatter = create_redis(redis_server.url, cluster=False)
    stop = asyncio.Event()

    async def chat() -> None:
        while not stop.is_set():
            await chatter.ping()

    async def work() -> int:
        await chatter.ping()
        return 1

    background = asyncio.create_task(chat())
    try:
        async with asyncio.timeout(20):
            counted = await round_trips("127.0.0.1", redis_server.port, work)
    finally:
        stop.set()
        await background
        await chatter.aclose()

    assert counted["sent"]["PING"] >= 1


@pytest.mark.parametrize(("settlements", "met"), [(4, True), (200, False)])
def test_report_counts_batched_settlement_apart(settlements: int, met: bool) -> None:
    row = {"c1": {"rps": 1.0, "p50_ms": 0.5}, "c50": {"rps": 2500.0}}
    sent = {"EVALSHA (admission)": 200, "EVALSHA (settlement)": settlements}
    trips = {
        "admission_round_trips_per_request": 1.0,
        "round_trips_per_request": (200 + settlements) / 200,
        "sent": sent,
        "seconds": 0.4,
    }
    result = {
        "requests": {"openai": {"direct": row, "gateway": row}},
        "redis": {"monitor": {"openai": trips}},
    }

    check = report.evaluate(result, "openai")["redis_round_trips"]

    assert check["met"] is met


def test_gc_collections_are_read_from_a_metrics_port() -> None:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        before = loadgen.gc_collections(port)
        gc.collect()
        after = loadgen.gc_collections(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    assert set(before) == {"0", "1", "2"}
    assert after["2"] == before["2"] + 1


def test_a_run_with_errors_shows_what_the_gateway_answered() -> None:
    log = "\n".join(
        [
            '{"logger": "subgate.access", "level": "info", "status": 200}',
            '{"logger": "subgate.access", "level": "info", "status": 502}',
            '{"logger": "gateway_service.upstream", "level": "warning",'
            ' "message": "Upstream openai unreachable: ServerDisconnectedError"}',
            '{"logger": "subgate.access", "level": "info", "status": 502}',
            "Traceback (most recent call last):",
        ]
    )

    answers = run.answers_logged(log)

    assert answers["statuses"] == {200: 1, 502: 2}
    assert answers["problems"] == [
        "Upstream openai unreachable: ServerDisconnectedError",
        "Traceback (most recent call last):",
    ]
