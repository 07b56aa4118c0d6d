"""Observability as the contract says: one JSON access line per request with the
request id carried from gateway to auth and provider, and the contract's metric series
on the metrics ports (never on the public one)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson

from tests.conftest import Stack
from tests.hostile.support import metric_value, metrics_text, poll

ACCESS_FIELDS = {"time", "level", "service", "request_id", "method", "path", "status",
                 "user", "provider", "model", "upstream_ms"}  # fmt: skip


def access_lines(logs: str, request_id: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in logs.splitlines() if line.startswith("{")]
    return [
        line
        for line in lines
        if line.get("logger") == "subgate.access"
        and line.get("request_id") == request_id
    ]


def test_one_access_line_per_request_with_the_contracts_fields(stack: Stack) -> None:
    token = stack.login()
    rid = f"obs-{uuid.uuid4().hex}"

    answer = httpx.post(
        stack.url + "/v1/chat/completions",
        json={
            "model": "claude-sonnet-4-6",
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid},
    )

    assert answer.headers["x-request-id"] == rid
    assert poll(lambda: len(access_lines(stack.gateway.logs(), rid)) == 1)
    (line,) = access_lines(stack.gateway.logs(), rid)
    assert set(line) >= ACCESS_FIELDS
    assert line["service"] == "gateway" and line["status"] == 200
    assert line["provider"] == "anthropic" and line["model"] == "claude-sonnet-4-6"
    assert line["user"].startswith("txn:") and line["upstream_ms"] > 0
    assert line["tokens"] == {"prompt": 10, "completion": 5}


def test_request_id_travels_from_gateway_to_auth(stack: Stack) -> None:
    rid = f"login-{uuid.uuid4().hex}"

    answer = httpx.post(
        stack.url + "/appstore", content=stack.sign(), headers={"X-Request-ID": rid}
    )

    assert answer.headers["x-request-id"] == rid
    assert poll(lambda: len(access_lines(stack.auth.logs(), rid)) == 1)
    assert len(access_lines(stack.gateway.logs(), rid)) == 1
    (line,) = access_lines(stack.auth.logs(), rid)
    assert line["service"] == "auth" and line["status"] == 200


def test_generated_request_id_reaches_the_provider(stack: Stack) -> None:
    token = stack.login()

    answer = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {token}"},
    )

    rid = answer.headers["x-request-id"]
    assert stack.openai.requests[-1].headers.get("x-request-id") == rid


def test_refused_requests_are_logged_too(stack: Stack) -> None:
    rid = f"refused-{uuid.uuid4().hex}"

    httpx.get(stack.url + "/v1/files", headers={"X-Request-ID": rid})

    assert poll(lambda: len(access_lines(stack.gateway.logs(), rid)) == 1)
    (line,) = access_lines(stack.gateway.logs(), rid)
    assert line["status"] == 407


def test_metrics_ports_serve_the_contracts_series(stack: Stack) -> None:
    token = stack.login()
    auth = {"Authorization": f"Bearer {token}"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    httpx.post(stack.url + "/v1/chat/completions", json=chat, headers=auth)

    gateway = metrics_text(stack.gateway)
    auth_text = metrics_text(stack.auth, "AUTH")

    labels = {"service": "gateway", "route": "/v1/chat/completions", "status": "200",
              "provider": "openai"}  # fmt: skip
    assert metric_value(gateway, "subgate_requests_total", labels) >= 1
    assert metric_value(gateway, "subgate_request_duration_seconds_count") >= 1
    assert metric_value(gateway, "subgate_upstream_duration_seconds_count") >= 1
    assert metric_value(gateway, "subgate_limiter_decisions_total") >= 1
    assert "subgate_upstream_errors_total" in gateway
    assert "subgate_active_streams " in gateway
    assert metric_value(auth_text, "subgate_requests_total", {"service": "auth"}) >= 1
    assert metric_value(auth_text, "subgate_logins_total", {"outcome": "ok"}) >= 1


def test_metrics_are_not_on_the_public_ports(stack: Stack) -> None:
    for url in (stack.url, stack.auth.url):
        answer = httpx.get(url + "/metrics")
        assert answer.status_code == 404
        assert b"subgate_requests_total" not in answer.content


def test_readyz_is_ready_while_redis_answers(stack: Stack) -> None:
    assert httpx.get(stack.url + "/readyz").json() == {"status": "ready"}
    assert httpx.get(stack.auth.url + "/readyz").json() == {"status": "ready"}
