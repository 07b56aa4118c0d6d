"""End to end through real processes: log in, then use OpenAI through the gateway with
the official `openai` SDK, the fake upstream seeing the server's key only."""

from __future__ import annotations

import io

import httpx
import openai
import pytest

from tests.conftest import SERVER_OPENAI_KEY, Stack


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
