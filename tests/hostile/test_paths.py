"""Request targets a client might use to reach another host or another endpoint: dot
segments, encoded slashes, `//host`, absolute-form targets and `@`. Raw sockets, since
HTTP clients normalise such targets before sending them."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.hostile.support import (
    RawAnswer,
    assert_error_shape,
    http_request,
    parse_answer,
    raw_request,
)

# Targets that must never reach any provider (403 or 404, or a 400 from the parser).
REFUSED = [
    "/v1/../v1/files",
    "/v1/models/../../admin",
    "/v1/chat/completions/..",
    "/v1/chat%2Fcompletions",
    "/v1/chat%2fcompletions",
    "/v1/models/%2e%2e/files",
    "/v1/models/..%2F..%2Ffiles",
    "/v1/models/%252e%252e",
    "/v1//chat/completions",
    "/v1/models/@evil.example",
    "/v1/models/x@evil.example/v1/files",
    "/v1/models\\..\\files",
    "//evil.example/v1/chat/completions",
    "///evil.example/v1/models",
    "/v1/files",
    "/v1/batches",
    "/v1/fine_tuning/jobs",
    "/v1/assistants",
    "/v1/responses/resp_123",
    "/v1/organization/costs",
]


@pytest.fixture
def token(stack: Stack) -> str:
    return stack.login()


def send(
    stack: Stack, method: str, target: str, token: str, body: bytes = b""
) -> RawAnswer:
    data = http_request(method, target, {"Authorization": f"Bearer {token}"}, body)
    return raw_request(stack.gateway.port, data)


@pytest.mark.parametrize("target", REFUSED)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_odd_targets_never_reach_a_provider(
    stack: Stack, token: str, method: str, target: str
) -> None:
    answer = send(stack, method, target, token, b"{}" if method == "POST" else b"")

    assert answer.status in (400, 403, 404), (target, answer.head)
    if answer.status != 400:
        assert_error_shape(answer.status, answer.body)
    assert stack.openai.requests == []
    assert stack.anthropic.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions/chatcmpl-123"),
        ("DELETE", "/v1/chat/completions/chatcmpl-123"),
        ("DELETE", "/v1/models/ft:gpt-4o:acme:1"),
        ("DELETE", "/v1/models/gpt-4o"),
        ("POST", "/v1/models/gpt-4o"),
        ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/messages"),
        ("GET", "/v1/responses"),
    ],
)
def test_methods_outside_allowed_paths_answer_403(
    stack: Stack, token: str, method: str, path: str
) -> None:
    answer = send(stack, method, path, token)

    assert answer.status == 403, answer.head
    assert_error_shape(
        403, answer.body, "anthropic" if "messages" in path else "openai"
    )
    assert b"endpoint_not_allowed" in answer.body
    assert stack.openai.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/v1/models/gpt-4o",
        "http://evil.example:80/v1/models/gpt-4o",
        "http://user@evil.example/v1/models/gpt-4o",
        "https://127.0.0.1:1/v1/models/gpt-4o",
        "/v1/models/gpt-4o#@evil.example",
    ],
)
def test_absolute_form_targets_cannot_change_the_upstream_host(
    stack: Stack, token: str, target: str
) -> None:
    answer = send(stack, "GET", target, token)

    assert answer.status in (200, 400, 403, 404), answer.head
    upstream_host = stack.openai.base_url.removeprefix("http://")
    for seen in stack.openai.requests:
        assert seen.headers["host"] == upstream_host
        assert seen.path == "/v1/models/gpt-4o"


def test_host_header_does_not_choose_the_upstream(stack: Stack, token: str) -> None:
    data = http_request(
        "GET",
        "/v1/models/gpt-4o",
        {"Authorization": f"Bearer {token}", "X-Forwarded-Host": "evil.example"},
    ).replace(b"Host: 127.0.0.1", b"Host: evil.example")

    answer = raw_request(stack.gateway.port, data)

    assert answer.status == 200
    seen = stack.openai.requests[-1]
    assert seen.headers["host"] == stack.openai.base_url.removeprefix("http://")
    assert "x-forwarded-host" not in seen.headers


def test_query_string_cannot_smuggle_a_path(stack: Stack, token: str) -> None:
    answer = send(stack, "GET", "/v1/models/gpt-4o?x=/../../v1/files#frag", token)

    assert answer.status == 200
    seen = stack.openai.requests[-1]
    assert seen.path == "/v1/models/gpt-4o"


def test_pipelined_second_request_is_judged_on_its_own(
    stack: Stack, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    first = http_request("GET", "/v1/models/gpt-4o", auth).replace(
        b"Connection: close\r\n", b""
    )
    second = http_request("GET", "/v1/files", auth)

    answer = raw_request(stack.gateway.port, first + second)
    rest = answer.body.split(b"HTTP/1.1 ", 1)[1]

    assert answer.status == 200
    assert parse_answer(b"HTTP/1.1 " + rest).status == 403
    assert [r.path for r in stack.openai.requests] == ["/v1/models/gpt-4o"]
