"""End to end through real processes: log in, then use OpenAI through the gateway with
the official `openai` SDK, the fake upstream seeing the server's key only."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import openai
import pytest

from shared.settings import load_settings
from shared.tokens import TokenSigner
from tests.conftest import SERVER_OPENAI_KEY, Stack
from tests.support.fake_openai import error
from tests.support.processes import start_auth, start_gateway


def test_login_answers_token_and_expiry(stack: Stack) -> None:
    response = httpx.post(stack.url + "/appstore", content=stack.sign())

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert response.headers["x-request-id"]


def test_chat_completion_reaches_upstream_with_server_key(stack: Stack) -> None:
    token = stack.login()

    answer = stack.client(token).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], user="me"
    )

    assert answer.choices[0].message.content == "Hello from the fake!"
    seen = stack.openai.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {SERVER_OPENAI_KEY}"
    assert token not in str(seen.headers) and token.encode() not in seen.body
    assert seen.json["user"] != "me" and len(seen.json["user"]) == 32


def test_streamed_chat_completion_arrives_in_chunks(stack: Stack) -> None:
    token = stack.login()

    stream = stack.client(token).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices]

    assert "".join(p or "" for p in pieces) == "Hello from the fake!"


def test_embeddings_models_and_transcription(stack: Stack) -> None:
    client = stack.client(stack.login())

    embedding = client.embeddings.create(model="text-embedding-3-small", input="hi")
    models = client.models.list()
    audio = io.BytesIO(b"RIFF" + b"\0" * 2048)
    audio.name = "hello.wav"
    transcript = client.audio.transcriptions.create(model="whisper-1", file=audio)

    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]
    assert "gpt-4o-mini" in [model.id for model in models]
    assert transcript.text.startswith("fake transcript of")
    upload = stack.openai.requests[-1]
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert b"hello.wav" in upload.body


def test_missing_token_answers_407(stack: Stack) -> None:
    response = httpx.post(stack.url + "/v1/chat/completions", json={})

    assert response.status_code == 407
    assert response.headers["proxy-authenticate"] == 'Bearer realm="subgate"'
    assert response.json()["error"]["code"] == "session_expired"


def test_sdk_raises_on_forged_token(stack: Stack) -> None:
    client = stack.client("eyJhbGciOiJIUzI1NiJ9.e30.forged")

    with pytest.raises(openai.APIStatusError) as raised:
        client.models.list()

    assert raised.value.status_code == 407


def test_client_credentials_cookies_and_hop_by_hop_headers_never_reach_openai(
    stack: Stack,
) -> None:
    token = stack.login()
    headers = {
        "authorization": f"Bearer {token}",
        "cookie": "session=secret-cookie",
        "connection": "keep-alive, x-hop",
        "x-hop": "hop-value",
        "proxy-authorization": "Basic c2VjcmV0",
        "openai-organization": "org-chosen-by-client",
        "x-api-key": "client-key",
        "x-request-id": "req-from-client-42",
        "x-custom-ok": "kept",
    }

    response = httpx.post(
        stack.url + "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hi"},
        headers=headers,
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-from-client-42"
    seen = stack.openai.requests[-1].headers
    assert seen["authorization"] == f"Bearer {SERVER_OPENAI_KEY}"
    for name in ("cookie", "x-hop", "proxy-authorization", "x-api-key"):
        assert name not in seen
    assert seen.get("openai-organization") != "org-chosen-by-client"
    assert seen["x-request-id"] == "req-from-client-42"
    assert seen["x-custom-ok"] == "kept"


def test_every_answer_has_a_request_id(stack: Stack) -> None:
    for response in (
        httpx.get(stack.url + "/healthz"),
        httpx.get(stack.url + "/nowhere"),
        httpx.post(stack.url + "/appstore", content=b""),
        httpx.get(stack.url + "/v1/models"),
    ):
        assert len(response.headers["x-request-id"]) >= 16


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models/gpt-4o-mini"),
        ("GET", "/v1/files"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/responses/resp_123"),
        ("POST", "/v1/batches"),
    ],
)
def test_paths_outside_allowed_paths_answer_403(
    stack: Stack, method: str, path: str
) -> None:
    token = stack.login()

    response = httpx.request(
        method, stack.url + path, headers={"authorization": f"Bearer {token}"}
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "endpoint_not_allowed"
    assert stack.openai.requests == []


def test_openai_server_key_refusal_becomes_provider_unavailable(stack: Stack) -> None:
    stack.openai.queue(
        error(401, "Incorrect API key", "invalid_request_error", "invalid_api_key")
    )
    client = stack.client(stack.login())

    with pytest.raises(openai.APIStatusError) as raised:
        client.models.retrieve("gpt-4o-mini")

    assert raised.value.status_code == 503
    assert raised.value.code == "provider_unavailable"


def test_openai_errors_keep_status_body_and_retry_after(stack: Stack) -> None:
    answer = error(429, "Slow down", "requests", "rate_limit_exceeded")
    answer.headers = {"retry-after": "3"}
    stack.openai.queue(answer)
    client = stack.client(stack.login())

    with pytest.raises(openai.RateLimitError) as raised:
        client.models.retrieve("gpt-4o-mini")

    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["retry-after"] == "3"


def test_provider_without_key_answers_503_naming_it(
    tmp_path: Path, base_env: dict[str, str], running_stack: Stack
) -> None:
    env = {**base_env, "OPENAI_API_KEY": ""}
    auth = start_auth(tmp_path, env)
    gateway = start_gateway(tmp_path, env, auth.url)
    try:
        token = running_stack.login()
        response = httpx.post(
            gateway.url + "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "x"},
            headers={"authorization": f"Bearer {token}"},
        )
    finally:
        gateway.stop()
        auth.stop()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert "openai" in response.json()["error"]["message"]


def test_usage_without_budgets_is_counted_and_shown_at_once(stack: Stack) -> None:
    token = stack.login()
    client = stack.client(token)
    for _ in range(3):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )

    usage = httpx.get(
        stack.url + "/v1/usage", headers={"authorization": f"Bearer {token}"}
    ).json()

    assert usage["day"]["requests"] == 3
    assert (usage["day"]["input_tokens"], usage["day"]["output_tokens"]) == (36, 15)
    assert usage["day"]["budget"] is None


def test_token_from_an_unsigned_test_environment_is_refused(
    stack: Stack, base_env: dict[str, str]
) -> None:
    settings = load_settings(base_env, env_file=None)
    token, _ = TokenSigner(settings).mint(
        "txn:1", original_transaction_id="1", environment="Xcode", product_id="p"
    )

    response = httpx.get(
        stack.url + "/v1/models", headers={"authorization": f"Bearer {token}"}
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"


@pytest.mark.parametrize(
    "path", ["/appstore/..%2fhealthz", "/appstore/%2e%2e/readyz", "/appstore/admin"]
)
def test_only_the_auth_services_public_routes_are_forwarded(
    stack: Stack, path: str
) -> None:
    response = httpx.get(stack.url + path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unconfigured_provider_costs_the_user_nothing(
    tmp_path: Path, base_env: dict[str, str], running_stack: Stack
) -> None:
    env = {**base_env, "OPENAI_API_KEY": "", "USER_MINUTE_RATE_LIMIT": "2"}
    auth = start_auth(tmp_path, env)
    gateway = start_gateway(tmp_path, env, auth.url)
    try:
        token = running_stack.login()
        answers = [
            httpx.post(
                gateway.url + "/v1/embeddings",
                json={"model": "text-embedding-3-small", "input": "x"},
                headers={"authorization": f"Bearer {token}"},
            )
            for _ in range(5)
        ]
    finally:
        gateway.stop()
        auth.stop()

    assert [a.status_code for a in answers] == [503] * 5
    assert all(a.headers["x-should-retry"] == "false" for a in answers)
    assert "OPENAI_API_KEY" in answers[0].json()["error"]["message"]
