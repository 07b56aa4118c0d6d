"""Claude through the gateway, end to end: the official `openai` SDK against translated
Chat Completions, and the official `anthropic` SDK against native `/v1/messages`."""

from __future__ import annotations

import threading

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from shared.identity import provider_user_hash
from tests.conftest import SERVER_ANTHROPIC_KEY, Stack
from tests.support.fake_anthropic import (
    error_event,
    message,
    text_stream_events,
)

MODEL = "claude-sonnet-4-6"
ACCOUNT = "5f1e6c1a-0b7d-4a8e-9c55-1b2f3a4d5e6f"


def test_chat_completion_is_translated_both_ways(stack: Stack) -> None:
    token = stack.login(app_account_token=ACCOUNT)

    answer = stack.client(token).chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        user="client-chosen",
    )

    ChatCompletion.model_validate(answer.model_dump(), strict=True)
    assert answer.choices[0].message.content == "Hello!"
    assert answer.usage is not None and answer.usage.total_tokens == 15
    sent = stack.anthropic.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SERVER_ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["system"] == "Be brief."
    assert sent.json["metadata"] == {"user_id": provider_user_hash(f"acct:{ACCOUNT}")}
    assert "authorization" not in sent.headers


def test_streamed_chat_completion_relays_each_delta(stack: Stack) -> None:
    stack.anthropic.script_stream(text_stream_events(["Bon", "jour", " !"]))
    client = stack.client(stack.login())

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Salut"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour !"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_first_delta_arrives_before_the_upstream_finishes(stack: Stack) -> None:
    gate = threading.Event()
    events = text_stream_events(["first", "second"])
    stack.anthropic.script_stream([*events[:4], gate, *events[4:]])
    client = stack.client(stack.login())

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    first_text = next(c for c in stream if c.choices and c.choices[0].delta.content)
    finished_before_first = stack.anthropic.stream_finished.is_set()
    gate.set()
    rest = [c.choices[0].delta.content for c in stream if c.choices]

    assert first_text.choices[0].delta.content == "first"
    assert not finished_before_first
    assert "second" in rest


def test_tool_call_answer_reaches_the_sdk(stack: Stack) -> None:
    tool_use = {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    stack.anthropic.script(message([tool_use], stop_reason="tool_use"))
    client = stack.client(stack.login())

    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                    },
                },
            }
        ],
        tool_choice="required",
    )

    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name) == ("toolu_01", "get_weather")
    assert call.function.arguments == '{"city":"Paris"}'
    assert stack.anthropic.requests[-1].json["tool_choice"] == {"type": "any"}


def test_overloaded_anthropic_becomes_503_with_retry_after(stack: Stack) -> None:
    stack.anthropic.script_error(
        529, "overloaded_error", "Overloaded", headers={"retry-after": "7"}
    )
    client = stack.client(stack.login())

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )

    assert raised.value.status_code == 503
    assert raised.value.code == "overloaded_error"
    assert raised.value.response.headers["retry-after"] == "7"


def test_refused_server_key_is_never_shown_as_401(stack: Stack) -> None:
    stack.anthropic.script_error(401, "authentication_error", "invalid x-api-key")
    client = stack.client(stack.login())

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )

    assert raised.value.status_code == 503
    assert raised.value.code == "provider_unavailable"


def test_error_event_mid_stream_raises_in_the_sdk(stack: Stack) -> None:
    events = text_stream_events(["partial"])
    stack.anthropic.script_stream([*events[:4], error_event()])
    client = stack.client(stack.login())

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )

    with pytest.raises(openai.APIError):
        list(stream)


def test_unsupported_parameter_answers_400_naming_it(stack: Stack) -> None:
    client = stack.client(stack.login())

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], n=2
        )

    assert raised.value.code == "unsupported_parameter"
    assert raised.value.param == "n"
    assert stack.anthropic.requests == []


def test_anthropic_sdk_works_natively(stack: Stack) -> None:
    token = stack.login(app_account_token=ACCOUNT)
    client = anthropic.Anthropic(api_key=token, base_url=stack.url, max_retries=0)

    answer = client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    )

    assert answer.content[0].text == "Hello!"  # type: ignore[union-attr]
    sent = stack.anthropic.requests[-1]
    assert sent.headers["x-api-key"] == SERVER_ANTHROPIC_KEY
    assert token not in str(sent.headers)
    assert sent.json["metadata"]["user_id"] == provider_user_hash(f"acct:{ACCOUNT}")


def test_older_sdks_token_in_x_api_key_is_accepted(stack: Stack) -> None:
    token = stack.login()
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "x"}],
    }

    response = httpx.post(
        stack.url + "/v1/messages",
        json=body,
        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
    )

    assert response.status_code == 200
    assert stack.anthropic.requests[-1].headers["x-api-key"] == SERVER_ANTHROPIC_KEY


def test_authorization_wins_over_x_api_key(stack: Stack) -> None:
    token = stack.login()

    response = httpx.post(
        stack.url + "/v1/messages",
        json={"model": MODEL},
        headers={"authorization": "Bearer forged", "x-api-key": token},
    )

    assert response.status_code == 407


def test_anthropic_sdk_streams_natively(stack: Stack) -> None:
    token = stack.login()
    client = anthropic.Anthropic(api_key=token, base_url=stack.url, max_retries=0)

    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)

    assert text == "Hello!"


def test_native_errors_come_in_anthropic_shape(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/v1/messages", json={"model": MODEL}, headers={"x-api-key": "bad"}
    )

    assert response.status_code == 407
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


def test_models_list_includes_routed_claude_models(stack: Stack) -> None:
    models = [m.id for m in stack.client(stack.login()).models.list()]

    assert "gpt-4o-mini" in models
    assert "claude-sonnet-4-6" in models
    assert models.count("claude-sonnet-4-6") == 1


def test_single_claude_model_is_answered_by_the_gateway(stack: Stack) -> None:
    model = stack.client(stack.login()).models.retrieve("claude-haiku-4-5")

    assert model.id == "claude-haiku-4-5"
    assert model.owned_by == "anthropic"


def test_raw_stream_bytes_are_not_buffered(stack: Stack) -> None:
    gate = threading.Event()
    events = text_stream_events(["a", "b"])
    stack.anthropic.script_stream([*events[:4], gate, *events[4:]])
    token = stack.login()
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }

    with httpx.stream(
        "POST",
        stack.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {token}"},
    ) as response:
        pieces = response.iter_text()
        first = next(pieces)
        gate.set()
        rest = "".join(pieces)

    assert '"role":"assistant"' in first
    assert rest.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    "extra",
    [{"reasoning_effort": []}, {"reasoning_effort": {}}, {"functions": 5}],
    ids=["effort list", "effort object", "functions number"],
)
def test_odd_shapes_answer_400_not_500(stack: Stack, extra: dict[str, object]) -> None:
    token = stack.login()
    body = {"model": "claude-opus-4-7", "messages": [{"role": "user", "content": "x"}]}

    response = httpx.post(
        stack.url + "/v1/chat/completions",
        json={**body, **extra},
        headers={"authorization": f"Bearer {token}"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "Traceback" not in stack.gateway.logs()
