"""Upstream faults through a real gateway: refused connections, slow headers, slow
bodies, resets mid-stream, 5xx answers, invalid JSON and huge answers. No fault may
give a 500 with a trace or leave the client waiting forever."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from auth_service.dev_storekit import DevChain
from tests.conftest import BUNDLE_ID
from tests.hostile.support import OwnStack, assert_error_shape, own_stack
from tests.support.fake_anthropic import encode_event, text_stream_events
from tests.support.fake_openai import FakeOpenAI, completion, stream_chunks
from tests.support.fake_upstream import Answer
from tests.support.processes import ServiceProcess, start_gateway
from tests.support.redis_server import free_port

READ_TIMEOUT = 1.0
CHAT = "/v1/chat/completions"
CLAUDE = "claude-sonnet-4-6"
SSE = "text/event-stream; charset=utf-8"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """One scriptable upstream that plays both OpenAI and Anthropic (raw answers)."""
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    fake: FakeOpenAI,
) -> Iterator[OwnStack]:
    env = {
        **base_env,
        "OPENAI_BASE_URL": fake.base_url,
        "ANTHROPIC_BASE_URL": fake.base_url,
        "UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT),
        "RATE_LIMIT_ENABLED": "0",
    }
    with own_stack(tmp_path_factory.mktemp("faults"), env) as stack:
        yield stack


@pytest.fixture(scope="module")
def refused_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    faulty: OwnStack,
) -> Iterator[ServiceProcess]:
    """A gateway whose providers listen nowhere."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {**base_env, "OPENAI_BASE_URL": nowhere, "ANTHROPIC_BASE_URL": nowhere}
    tmp = tmp_path_factory.mktemp("refused")
    gateway = start_gateway(tmp, env, faulty.auth.url)
    yield gateway
    gateway.stop()


@pytest.fixture
def client(
    faulty: OwnStack, fake: FakeOpenAI, dev_chain: DevChain
) -> Iterator[httpx.Client]:
    fake.reset()
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)
    token = httpx.post(faulty.url + "/appstore", content=jws).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=faulty.url, headers=headers, timeout=15) as http:
        yield http


def chat(model: str = "gpt-4o-mini", stream: bool = False) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }


def test_upstream_refused_answers_502_and_gives_back_the_count(
    refused_gateway: ServiceProcess, dev_chain: DevChain
) -> None:
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)
    token = httpx.post(refused_gateway.url + "/appstore", content=jws).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}

    answers = [
        httpx.post(refused_gateway.url + CHAT, json=chat(model), headers=headers)
        for model in ("gpt-4o-mini", CLAUDE, "gpt-4o-mini")
    ]

    for answer in answers:
        assert answer.status_code == 502
        assert_error_shape(502, answer.content)
        assert answer.json()["error"]["code"] == "upstream_unreachable"
    models = httpx.get(refused_gateway.url + "/v1/models/gpt-4o", headers=headers)
    assert models.status_code == 502
    assert models.headers.get("x-ratelimit-remaining-minute") is None


def test_slow_headers_answer_504_after_the_read_timeout(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.queue(Answer(body=completion(), delay=READ_TIMEOUT * 5))

    answer = client.post(CHAT, json=chat())

    assert answer.status_code == 504
    assert_error_shape(504, answer.content)
    assert fake.disconnected.wait(READ_TIMEOUT * 3)


def test_slow_headers_of_a_translated_call_answer_504(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.queue(Answer(body={}, delay=READ_TIMEOUT * 5))

    answer = client.post(CHAT, json=chat(CLAUDE))

    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"


def test_stalled_stream_ends_with_an_error_event(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    pieces = stream_chunks(["Hel", "lo"])
    fake.queue(Answer(stream=[pieces[0], READ_TIMEOUT * 5, *pieces[1:]]))

    with client.stream("POST", CHAT, json=chat(stream=True)) as answer:
        body = answer.read()

    assert answer.status_code == 200
    assert body.startswith(pieces[0])
    assert body.endswith(b"\n\n") and b'"code":"upstream_unreachable"' in body
    assert b"[DONE]" not in body


def test_reset_mid_stream_ends_with_an_error_event(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    pieces = stream_chunks(["Hel", "lo", " there"])
    fake.queue(Answer(stream=pieces[:3], abort=True))

    with client.stream("POST", CHAT, json=chat(stream=True)) as answer:
        body = answer.read()

    events = [e for e in body.split(b"\n\n") if e]
    assert events[:3] == [p.rstrip(b"\n") for p in pieces[:3]]
    error = orjson.loads(events[-1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_unreachable"


def test_reset_mid_translated_stream_still_ends_the_stream(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    events = [encode_event(e) for e in text_stream_events(["Bon", "jour"])]
    fake.queue(Answer(stream=events[:4], abort=True))

    with client.stream("POST", CHAT, json=chat(CLAUDE, stream=True)) as answer:
        body = answer.read()

    assert answer.status_code == 200
    assert body.endswith(b"\n\n")
    assert b"Bon" in body


def test_reset_mid_native_stream_ends_with_an_anthropic_error_event(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    events = [encode_event(e) for e in text_stream_events(["Bon", "jour"])]
    fake.queue(Answer(stream=events[:4], abort=True))
    request = {**chat(CLAUDE, stream=True), "max_tokens": 10}

    with client.stream("POST", "/v1/messages", json=request) as answer:
        body = answer.read()

    assert body.startswith(events[0])
    assert body.endswith(b"\n\n") and b"event: error\n" in body


@pytest.mark.parametrize("status", [500, 502, 503])
def test_provider_5xx_keeps_its_status_without_a_trace(
    client: httpx.Client, fake: FakeOpenAI, status: int
) -> None:
    error = {"error": {"message": "boom", "type": "server_error", "param": None,
                       "code": None}}  # fmt: skip
    fake.queue(Answer(status=status, body=error, headers={"Retry-After": "7"}))

    answer = client.post(CHAT, json=chat())

    assert answer.status_code == status
    assert answer.json() == error
    assert answer.headers["retry-after"] == "7"


def test_provider_5xx_with_html_gets_subgates_error_shape(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    page = b"<html><body>Traceback (most recent call last): secret</body></html>"
    fake.queue(Answer(status=500, raw=page, headers={"content-type": "text/html"}))

    answer = client.post(CHAT, json=chat())

    assert answer.status_code == 500
    assert_error_shape(500, answer.content, relayed=True)
    assert b"Traceback" not in answer.content


def test_translated_5xx_is_rewritten_into_openai_shape(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.queue(Answer(status=500, raw=b"not json at all"))

    answer = client.post(CHAT, json=chat(CLAUDE))

    assert answer.status_code == 500
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert b"not json" not in answer.content


def test_invalid_json_from_openai_is_relayed_as_it_came(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    raw = b'{"id": "chatcmpl-1", "choices": [ ...'
    fake.queue(Answer(raw=raw, headers={"content-type": "application/json"}))

    answer = client.post(CHAT, json=chat())

    assert answer.status_code == 200
    assert answer.content == raw


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b'{"content": 5}', b'{"content": [5]}', b"\xff\xfe"],
)
def test_invalid_json_from_anthropic_answers_502(
    client: httpx.Client, fake: FakeOpenAI, raw: bytes
) -> None:
    fake.queue(Answer(raw=raw, headers={"content-type": "application/json"}))

    answer = client.post(CHAT, json=chat(CLAUDE))

    assert answer.status_code == 502
    assert_error_shape(502, answer.content)


def test_garbage_in_a_translated_stream_ends_it_cleanly(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    events = [encode_event(e) for e in text_stream_events(["Bon"])]
    garbage = b"event: content_block_delta\ndata: {broken\n\n"
    fake.queue(Answer(stream=[*events[:4], garbage, *events[4:]]))

    with client.stream("POST", CHAT, json=chat(CLAUDE, stream=True)) as answer:
        body = answer.read()

    assert answer.status_code == 200
    assert body.endswith(b"\n\n")


def test_huge_answer_arrives_whole(client: httpx.Client, fake: FakeOpenAI) -> None:
    text = "x" * (8 << 20)
    fake.queue(Answer(body=completion(text)))

    answer = client.post(CHAT, json=chat())

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == text


def test_huge_stream_arrives_whole(client: httpx.Client, fake: FakeOpenAI) -> None:
    pieces = stream_chunks(["y" * 4096] * 2000)
    fake.queue(Answer(stream=pieces))

    with client.stream("POST", CHAT, json=chat(stream=True)) as answer:
        body = answer.read()

    assert body == b"".join(pieces)


def test_huge_error_body_is_cut_and_answered_in_subgates_shape(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.queue(Answer(status=503, raw=b"e" * (4 << 20)))

    answer = client.post(CHAT, json=chat())

    assert answer.status_code == 503
    assert len(answer.content) < 1024
    assert_error_shape(503, answer.content, relayed=True)


def test_no_fault_left_a_trace_in_the_logs(faulty: OwnStack) -> None:
    for process in (faulty.gateway, faulty.auth):
        logs = process.logs()
        assert "Traceback" not in logs
        assert "Unhandled error" not in logs
        assert "internal_error" not in logs
