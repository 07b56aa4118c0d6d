"""Clients that go away: the gateway closes the provider connection at once, and a
thousand aborted streams leave no file descriptor or active-stream count behind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest

from auth_service.dev_storekit import DevChain
from tests.conftest import BUNDLE_ID
from tests.hostile.support import (
    OwnStack,
    metric_value,
    metrics_text,
    open_fds,
    own_stack,
    poll,
)
from tests.support.fake_openai import FakeOpenAI, stream_chunks
from tests.support.fake_upstream import Answer

ABORTED_STREAMS = 1000
PARALLEL = 25


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    fake: FakeOpenAI,
) -> Iterator[OwnStack]:
    # A small Redis pool fills up during the warm-up, so its connections (kept for
    # reuse, not leaked) cannot blur the descriptor count.
    env = {
        **base_env,
        "OPENAI_BASE_URL": fake.base_url,
        "RATE_LIMIT_ENABLED": "0",
        "REDIS_MAX_CONNECTIONS": "4",
    }
    with own_stack(tmp_path_factory.mktemp("disconnects"), env) as stack:
        yield stack


@pytest.fixture(scope="module")
def token(gateway: OwnStack, dev_chain: DevChain) -> str:
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)
    answer = httpx.post(gateway.url + "/appstore", content=jws)
    value: str = answer.json()["token"]
    return value


@pytest.fixture(autouse=True)
def fresh(fake: FakeOpenAI) -> None:
    fake.reset()


def stream_request(token: str) -> bytes:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user"}]}
    )
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_client_leaving_mid_stream_closes_the_upstream_within_a_second(
    gateway: OwnStack, fake: FakeOpenAI, token: str
) -> None:
    first = stream_chunks(["Hello"])[0]
    fake.queue(Answer(stream=[first, 60.0]))

    with socket.create_connection(("127.0.0.1", gateway.gateway.port)) as sock:
        sock.sendall(stream_request(token))
        received = b""
        while first not in received:
            received += sock.recv(65536)

    assert fake.disconnected.wait(1.0)


def test_client_leaving_while_waiting_closes_the_upstream_within_a_second(
    gateway: OwnStack, fake: FakeOpenAI, token: str
) -> None:
    fake.queue(Answer(body={}, delay=60.0))

    with socket.create_connection(("127.0.0.1", gateway.gateway.port)) as sock:
        sock.sendall(stream_request(token))
        assert poll(lambda: len(fake.requests) == 1)

    assert fake.disconnected.wait(1.0)


def test_thousand_aborted_streams_leave_no_descriptors_or_streams(
    gateway: OwnStack, fake: FakeOpenAI, token: str
) -> None:
    first = stream_chunks(["Hello"])[0]
    asyncio.run(_abort_streams(gateway.gateway.port, token, fake, first, 4 * PARALLEL))
    assert poll(lambda: _active_streams(gateway) == 0)
    fds_before = open_fds(gateway.gateway)

    asyncio.run(
        _abort_streams(gateway.gateway.port, token, fake, first, ABORTED_STREAMS)
    )

    assert fake.disconnects >= ABORTED_STREAMS
    assert poll(lambda: _active_streams(gateway) == 0, timeout=10)
    assert poll(lambda: open_fds(gateway.gateway) <= fds_before, timeout=10), (
        f"{open_fds(gateway.gateway)} descriptors open, {fds_before} before"
    )
    assert "Traceback" not in gateway.gateway.logs()


def _active_streams(gateway: OwnStack) -> float:
    return metric_value(metrics_text(gateway.gateway), "subgate_active_streams")


async def _abort_streams(
    port: int, token: str, fake: FakeOpenAI, first: bytes, count: int
) -> None:
    for _ in range(count):
        fake.queue(Answer(stream=[first, 60.0]))
    gate = asyncio.Semaphore(PARALLEL)
    request = stream_request(token)

    async def one() -> None:
        async with gate:
            await _abort_one(port, request, first)

    await asyncio.gather(*(one() for _ in range(count)))


async def _abort_one(port: int, request: bytes, first: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        received = b""
        while first not in received:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, received
            received += chunk
    finally:
        writer.transport.abort()
