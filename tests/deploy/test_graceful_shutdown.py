"""SIGTERM drains a gateway: it stops being ready and stops accepting at once, lets the
streams in flight finish (up to SHUTDOWN_TIMEOUT_SECONDS), then exits.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, chunk, stream_chunks
from tests.support.fake_upstream import Answer
from tests.support.processes import ServiceProcess, start_gateway

KEY = "sk-drain-test-key-000000000000000"
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}
# A drained stop is a clean exit.
CLEAN_EXITS = (0,)


@pytest.fixture
def openai(openai_upstream: FakeOpenAI) -> FakeOpenAI:
    openai_upstream.reset()
    return openai_upstream


def gateway(tmp: Path, base_env: dict[str, str], timeout: str) -> ServiceProcess:
    env = {
        **base_env,
        "ALLOW_KEY_PASSTHROUGH": "1",
        "SHUTDOWN_TIMEOUT_SECONDS": timeout,
    }
    return start_gateway(tmp, env, "http://127.0.0.1:9")


@pytest.fixture
def held_stream(openai: FakeOpenAI) -> Iterator[threading.Event]:
    """A stream the fake holds after its first chunk until the event is set."""
    gate = threading.Event()
    first = chunk({"role": "assistant", "content": "First"})
    openai.queue(Answer(stream=[first, gate, *stream_chunks([" last"])[1:]]))
    yield gate
    gate.set()


def refuses_or_not_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 503
    except httpx.ConnectError:
        return True


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_gateway_sigterm_lets_the_stream_in_flight_finish_then_exits(
    tmp_path: Path,
    base_env: dict[str, str],
    openai: FakeOpenAI,
    held_stream: threading.Event,
) -> None:
    gate = held_stream
    service = gateway(tmp_path, base_env, "10")
    assert service.process is not None
    headers = {"Authorization": f"Bearer {KEY}"}

    with httpx.stream(
        "POST", service.url + "/v1/chat/completions", json=BODY, headers=headers
    ) as response:
        pieces = response.iter_bytes()
        received = next(pieces)
        service.process.send_signal(signal.SIGTERM)

        assert wait_until(lambda: refuses_or_not_ready(service.url))
        assert service.process.poll() is None
        gate.set()
        received += b"".join(pieces)

    assert received.endswith(b"data: [DONE]\n\n")
    assert b" last" in received
    assert service.process.wait(10) in CLEAN_EXITS
    assert "draining" in service.logs()


def test_gateway_sigterm_cuts_streams_after_the_shutdown_timeout(
    tmp_path: Path,
    base_env: dict[str, str],
    openai: FakeOpenAI,
    held_stream: threading.Event,
) -> None:
    service = gateway(tmp_path, base_env, "1")
    assert service.process is not None
    headers = {"Authorization": f"Bearer {KEY}"}

    with httpx.stream(
        "POST",
        service.url + "/v1/chat/completions",
        json=BODY,
        headers=headers,
        timeout=20,
    ) as response:
        pieces = response.iter_bytes()
        next(pieces)
        service.process.send_signal(signal.SIGTERM)
        try:
            code = service.process.wait(15)
        except subprocess.TimeoutExpired:
            service.kill()
            pytest.fail("the gateway did not give up on its stream")
        with pytest.raises(httpx.HTTPError):
            b"".join(pieces)

    assert code in CLEAN_EXITS
