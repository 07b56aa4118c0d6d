"""Cost control end to end: token accounting equal to the providers' usage, budgets,
the concurrency bound of reservations, model and answer-length caps, `GET /v1/usage`
and the admin command line, through real auth and gateway processes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from auth_service.dev_storekit import DevChain
from tests.conftest import Stack, start_stack
from tests.support.fake_anthropic import (
    FakeAnthropic,
    StreamItem,
    message,
    text_stream_events,
)
from tests.support.fake_openai import FakeOpenAI, chunk, completion, usage
from tests.support.fake_upstream import Answer
from tests.support.processes import REPO, service_env, start_gateway
from tests.support.redis_server import RedisServer

SMALL = "subgate.small"  # a product with a 1,000-token daily budget
CEILING = 2000


@pytest.fixture(scope="module")
def cost_stack(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    dev_chain: DevChain,
    openai_upstream: FakeOpenAI,
    anthropic_upstream: FakeAnthropic,
    redis_server: RedisServer,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cost")
    env = service_env(
        **{
            **base_env,
            "DAILY_TOKEN_BUDGET": "1000000",
            "MONTHLY_TOKEN_BUDGET": "5000000",
            "PRODUCT_TOKEN_BUDGETS": f"{SMALL}=daily:1000",
            "MODEL_ALLOWLIST": "gpt-4o-mini, text-embedding-*, claude-*",
            "MAX_TOKENS_CEILING": str(CEILING),
        }
    )
    stack = start_stack(
        tmp, env, dev_chain, openai_upstream, anthropic_upstream, redis_server.url
    )
    yield stack
    stack.stop()


@pytest.fixture
def cost(cost_stack: Stack) -> Stack:
    client = redis.Redis.from_url(cost_stack.redis_url)
    client.flushall()
    client.close()
    cost_stack.openai.reset()
    cost_stack.anthropic.reset()
    return cost_stack


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "content-type": "application/json"}


def _post(stack: Stack, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.url + path, content=orjson.dumps(body), headers=_headers(token)
    )


def _usage(stack: Stack, token: str) -> dict[str, Any]:
    response = httpx.get(stack.url + "/v1/usage", headers=_headers(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _charged(stack: Stack, token: str, requests: int = 1) -> tuple[int, int]:
    """(input, output) of today once `requests` requests were settled."""
    deadline = time.monotonic() + 10
    while True:
        day = _usage(stack, token)["day"]
        if day["requests"] >= requests or time.monotonic() > deadline:
            assert day["requests"] == requests, day
            return day["input_tokens"], day["output_tokens"]
        time.sleep(0.02)


def _events(parts: list[str]) -> list[StreamItem]:
    return list(text_stream_events(parts))


def _sse_data(text: str) -> list[Any]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [orjson.loads(line) for line in lines if line != "[DONE]"]


# --------------------------------------------------------------------- accounting


def test_cost_openai_json_charges_the_answers_usage(cost: Stack) -> None:
    token = cost.login()
    cost.openai.queue(Answer(body={**completion(), "usage": usage(321, 45)}))
    answer = cost.client(token).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == 321
    assert _charged(cost, token) == (321, 45)


def test_cost_openai_stream_asks_for_usage_and_hides_it(cost: Stack) -> None:
    token = cost.login()
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    response = _post(cost, token, "/v1/chat/completions", body)
    assert response.status_code == 200
    sent = cost.openai.requests[0].json
    assert sent["stream_options"] == {"include_usage": True}
    chunks = _sse_data(response.text)
    assert all(c["choices"] for c in chunks), "the usage-only chunk was relayed"
    assert response.text.rstrip().endswith("data: [DONE]")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        "Hello from the fake!"
    )
    assert _charged(cost, token) == (12, 4)


def test_cost_openai_stream_keeps_usage_the_client_asked_for(cost: Stack) -> None:
    token = cost.login()
    stream = cost.client(token).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert _charged(cost, token) == (12, 4)


def test_cost_embeddings_charge_input_only(cost: Stack) -> None:
    token = cost.login()
    cost.client(token).embeddings.create(
        model="text-embedding-3-small", input=["a", "b"]
    )
    assert _charged(cost, token) == (6, 0)


def test_cost_claude_translated_json_and_stream(cost: Stack) -> None:
    token = cost.login()
    answer = message([{"type": "text", "text": "Hi"}], input_tokens=77)
    answer["usage"]["cache_read_input_tokens"] = 20
    answer["usage"]["output_tokens"] = 9
    cost.anthropic.script(answer)
    client = cost.client(token)
    messages = [{"role": "user", "content": "Hi"}]
    client.chat.completions.create(model="claude-sonnet-4-6", messages=messages)
    assert _charged(cost, token) == (97, 9)

    cost.anthropic.script_stream(_events(["a", "b", "c"]))
    stream = client.chat.completions.create(
        model="claude-sonnet-4-6", messages=messages, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert _charged(cost, token, requests=2) == (97 + 10, 9 + 3)


def test_cost_anthropic_native_json_and_stream(cost: Stack) -> None:
    token = cost.login()
    answer = message([{"type": "text", "text": "Hi"}], input_tokens=40)
    answer["usage"]["cache_creation_input_tokens"] = 5
    cost.anthropic.script(answer)
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert _post(cost, token, "/v1/messages", body).status_code == 200
    assert _charged(cost, token) == (45, 5)

    cost.anthropic.script_stream(_events(["x", "y"]))
    response = _post(cost, token, "/v1/messages", {**body, "stream": True})
    assert "event: message_delta" in response.text
    assert _charged(cost, token, requests=2) == (45 + 10, 5 + 2)


# ------------------------------------------------------------ cancelled streams


def _read_then_leave(
    stack: Stack, token: str, path: str, raw: bytes, marker: str
) -> int:
    """Stream, stop after the first event carrying `marker`, and hang up."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", stack.url + path, content=raw, headers=_headers(token)
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if marker in line:
                break
    return len(raw)


def test_cost_cancelled_openai_stream_charges_what_was_produced(cost: Stack) -> None:
    token = cost.login()
    gate = threading.Event()
    produced = [chunk({"role": "assistant", "content": ""}, usage=None)]
    produced += [chunk({"content": p}, usage=None) for p in ("one", " two", " three")]
    cost.openai.queue(Answer(stream=[*produced, gate, chunk({"content": "never"})]))
    raw = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "Count to a hundred."}],
        }
    )
    size = _read_then_leave(cost, token, "/v1/chat/completions", raw, "three")
    assert cost.openai.disconnected.wait(10)
    gate.set()
    # No usage chunk came: the input is estimated from the request, the output is
    # the content chunks the provider produced (one token each).
    assert _charged(cost, token) == (math.ceil(size / 4), 3)


@pytest.mark.parametrize(
    "path", ["/v1/messages", "/v1/chat/completions"], ids=["native", "translated"]
)
def test_cost_cancelled_anthropic_stream_charges_what_was_produced(
    cost: Stack, path: str
) -> None:
    token = cost.login()
    gate = threading.Event()
    events = text_stream_events(["one", " two", " three", " four"])
    # message_start, block start, ping, two deltas; the rest waits for the gate.
    cost.anthropic.script_stream([*events[:5], gate, *events[5:]])
    raw = orjson.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "Count."}],
        }
    )
    _read_then_leave(cost, token, path, raw, "two")
    assert cost.anthropic.disconnected.wait(10)
    gate.set()
    assert _charged(cost, token) == (10, 2)


# -------------------------------------------------------------------- budgets


def test_cost_spent_budget_answers_429_quota_exceeded(cost: Stack) -> None:
    small = cost.login(product_id=SMALL)
    big = cost.login()
    cost.openai.queue(Answer(body={**completion(), "usage": usage(900, 200)}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    assert _post(cost, small, "/v1/chat/completions", body).status_code == 200
    _charged(cost, small)

    refused = _post(cost, small, "/v1/chat/completions", body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-should-retry"] == "false"
    report = _usage(cost, small)
    assert report["day"]["budget"] == 1000 and report["day"]["remaining"] == 0
    now = int(time.time())
    expected = report["day"]["resets_at"] - now
    assert abs(int(refused.headers["retry-after"]) - expected) <= 2
    assert len(cost.openai.requests) == 1, "a refused request reached the provider"

    # Another product's (or the global) budget is its own.
    assert _post(cost, big, "/v1/chat/completions", body).status_code == 200


def test_cost_concurrent_requests_overspend_by_one_reservation_at_most(
    cost: Stack,
) -> None:
    token = cost.login(product_id=SMALL)
    max_tokens = 100
    raw = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Hello there"}],
        }
    )
    reservation = max_tokens + len(raw)
    gate = threading.Event()
    each = usage(len(raw) - 10, max_tokens)  # within the reservation
    answer = orjson.dumps({**completion(), "usage": each})
    attempts = 10
    for _ in range(attempts + 5):
        cost.openai.queue(
            Answer(stream=[gate, answer], content_type="application/json")
        )
    post = _poster(cost, token, raw)

    with ThreadPoolExecutor(attempts) as pool:
        futures = [pool.submit(post) for _ in range(attempts)]
        _wait_until(
            lambda: (
                len(cost.openai.requests)
                + sum(f.done() and f.result().status_code == 429 for f in futures)
                == attempts
            )
        )
        gate.set()
        statuses = [f.result().status_code for f in futures]
    admitted = statuses.count(200)
    assert admitted == math.ceil(1000 / reservation) < attempts
    assert set(statuses) == {200, 429}

    # Keep spending one request at a time until the budget refuses.
    while post().status_code == 200:
        admitted += 1
    spent = sum(_charged(cost, token, requests=admitted))
    assert 1000 <= spent <= 1000 + reservation


def _poster(stack: Stack, token: str, raw: bytes) -> Callable[[], httpx.Response]:
    def post() -> httpx.Response:
        return httpx.post(
            stack.url + "/v1/chat/completions",
            content=raw,
            headers=_headers(token),
            timeout=20,
        )

    return post


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_cost_upstream_error_releases_the_reservation(cost: Stack) -> None:
    token = cost.login(product_id=SMALL)
    cost.openai.queue(
        Answer(status=500, body={"error": {"message": "boom", "type": "server_error"}})
    )
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 900,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert _post(cost, token, "/v1/chat/completions", body).status_code == 500
    report = _usage(cost, token)
    assert report["reserved_tokens"] == 0 and report["day"]["requests"] == 0
    assert _post(cost, token, "/v1/chat/completions", body).status_code == 200


# ----------------------------------------------------------------------- caps


def test_cost_model_outside_allowlist_answers_403(cost: Stack) -> None:
    token = cost.login()
    body = {"model": "gpt-4.5-preview", "messages": [{"role": "user", "content": "x"}]}
    refused = _post(cost, token, "/v1/chat/completions", body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert refused.json()["error"]["param"] == "model"
    assert not cost.openai.requests


def test_cost_models_list_shows_only_allowed_models(cost: Stack) -> None:
    headers = {"authorization": f"Bearer {cost.login()}"}

    listed = httpx.get(cost.url + "/v1/models", headers=headers).json()["data"]
    ids = {model["id"] for model in listed}

    assert ids == {"gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-6",
                   "claude-haiku-4-5"}  # fmt: skip


def test_cost_max_tokens_clamped_to_the_ceiling(cost: Stack) -> None:
    token = cost.login()
    messages = [{"role": "user", "content": "x"}]
    for body, field in (
        ({"max_tokens": 50_000}, "max_tokens"),
        ({"max_completion_tokens": 9_999}, "max_completion_tokens"),
        ({}, "max_completion_tokens"),
    ):
        request = {"model": "gpt-4o-mini", "messages": messages, **body}
        assert _post(cost, token, "/v1/chat/completions", request).status_code == 200
        assert cost.openai.requests[-1].json[field] == CEILING
    small = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 10}
    _post(cost, token, "/v1/chat/completions", small)
    assert cost.openai.requests[-1].json["max_tokens"] == 10

    claude = {"model": "claude-sonnet-4-6", "messages": messages, "max_tokens": 50_000}
    _post(cost, token, "/v1/chat/completions", claude)
    assert cost.anthropic.requests[-1].json["max_tokens"] == CEILING


def test_cost_max_tokens_refused_with_refuse_policy(
    cost: Stack, base_env: dict[str, str], tmp_path: Path
) -> None:
    env = service_env(**{**base_env, "MAX_TOKENS_CEILING": "500"})
    env["MAX_TOKENS_POLICY"] = "refuse"
    gateway = start_gateway(tmp_path, env, cost.auth.url, name="refusing")
    try:
        token = cost.login()
        body = {
            "model": "gpt-4o-mini",
            "max_tokens": 501,
            "messages": [{"role": "user", "content": "x"}],
        }
        refused = httpx.post(
            gateway.url + "/v1/chat/completions",
            content=orjson.dumps(body),
            headers=_headers(token),
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "max_tokens_too_large"
        assert refused.json()["error"]["param"] == "max_tokens"
        assert not cost.openai.requests
        ok = {**body, "max_tokens": 500}
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            content=orjson.dumps(ok),
            headers=_headers(token),
        )
        assert answer.status_code == 200
    finally:
        gateway.stop()


# ------------------------------------------------------ /v1/usage and the CLI


def test_cost_usage_endpoint_shape_and_not_rate_counted(cost: Stack) -> None:
    token = cost.login(product_id=SMALL)
    report = _usage(cost, token)
    assert report["object"] == "usage" and report["product_id"] == SMALL
    assert report["user"].startswith("txn:")
    assert report["day"]["budget"] == 1000 and report["day"]["remaining"] == 1000
    assert report["month"]["budget"] == 5_000_000
    assert report["day"]["resets_at"] > time.time()
    assert report["month"]["resets_at"] >= report["day"]["resets_at"]
    client = redis.Redis.from_url(cost.redis_url)
    try:
        assert not client.exists(f"subgate:minute:{{{report['user']}}}")
    finally:
        client.close()
    assert httpx.get(cost.url + "/v1/usage").status_code == 407


def test_cost_admin_shows_and_resets_usage(cost: Stack) -> None:
    token = cost.login()
    cost.openai.queue(Answer(body={**completion(), "usage": usage(30, 12)}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    _post(cost, token, "/v1/chat/completions", body)
    _charged(cost, token)
    user = _usage(cost, token)["user"]

    shown = _admin(cost, "--json", "usage", user)
    assert shown["day"]["input_tokens"] == 30 and shown["month"]["output_tokens"] == 12
    text = subprocess.run(
        [sys.executable, "-m", "shared.admin", "usage", user],
        cwd=REPO,
        env=service_env(REDIS_URL=cost.redis_url),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "30 in + 12 out = 42 tokens" in text

    _admin(cost, "--json", "reset-usage", user, "--day")
    after = _usage(cost, token)
    assert after["day"]["total_tokens"] == 0 and after["month"]["total_tokens"] == 42
    _admin(cost, "--json", "reset-usage", user)
    assert _usage(cost, token)["month"]["total_tokens"] == 0


def _admin(stack: Stack, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "shared.admin", *args],
        cwd=REPO,
        env=service_env(REDIS_URL=stack.redis_url),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# ------------------------------------------------- bodies that dodge the JSON check


@pytest.mark.parametrize("content_type", ["Application/JSON", "text/plain", ""])
def test_cost_caps_hold_whatever_the_content_type_says(
    cost: Stack, content_type: str
) -> None:
    token = cost.login()
    body = {"model": "o1-pro", "max_tokens": 100_000, "messages": []}
    headers = {"authorization": f"Bearer {token}", "content-type": content_type}

    refused = httpx.post(
        cost.url + "/v1/chat/completions", content=orjson.dumps(body), headers=headers
    )

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert cost.openai.requests == []


def test_cost_body_that_is_not_json_answers_400(cost: Stack) -> None:
    headers = {"authorization": f"Bearer {cost.login()}", "content-type": "text/plain"}

    refused = httpx.post(
        cost.url + "/v1/chat/completions", content=b"model=gpt-4o-mini", headers=headers
    )

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_request"
    assert cost.openai.requests == []


def test_cost_reservation_counts_every_choice(cost: Stack) -> None:
    token = cost.login()
    messages = [{"role": "user", "content": "x"}]

    def reserved(n: int) -> int:
        body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 100, "n": n}
        answer = _post(cost, token, "/v1/chat/completions", body)
        assert answer.status_code == 200
        left = int(answer.headers["x-ratelimit-remaining-tokens-day"])
        _charged(cost, token, requests=len(cost.openai.requests))
        return left

    one = reserved(1)
    spent = _usage(cost, token)["day"]["total_tokens"]
    four = reserved(4)

    # Four choices hold three more answers of 100 tokens than one does (the bodies
    # are the same size; what the first request spent meanwhile is taken out).
    spent_since = _usage(cost, token)["day"]["total_tokens"] - spent
    assert one - four - spent_since == 300
