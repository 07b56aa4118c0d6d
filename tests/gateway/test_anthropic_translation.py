"""OpenAI Chat <-> Anthropic Messages translation, checked against the wire examples."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway_service.providers import anthropic
from gateway_service.providers.anthropic import (
    StreamTranslator,
    translate_error,
    translate_request,
    translate_response,
)
from gateway_service.providers.config import ModelConfig, ProviderRegistry
from shared.errors import InvalidRequest, ProviderUnavailable, UnsupportedParameter
from shared.settings import load_settings
from tests.support.fake_anthropic import encode_event, error_event, load_sse

WIRE = Path(__file__).with_name("wire")
HASH = "u_3f9a1c0d5e7b2a4c"
CREATED = 1767225600
SONNET = ModelConfig(
    name="claude-sonnet-4-6*",
    max_tokens=4096,
    exclusive_params=("temperature", "top_p"),
    reasoning="adaptive",
    structured_outputs=True,
)
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8"
    "AAAAASUVORK5CYII="
)
WEBP_HEAD = "UklGRiQAAABXRUJQVlA4IBgAAAAwAQCdASoBAAEAAwA0JaQAA3AA/vuUAAA="


def _load(name: str) -> Any:
    return json.loads((WIRE / name).read_text(encoding="utf-8"))


def _request_pairs() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(WIRE.glob("openai_chat_request_*.json")):
        suffix = path.name[len("openai_chat_request_") :]
        pairs.append((path.name, "anthropic_request_" + suffix))
    return pairs


def _body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(extra)
    return body


def _translate(body: dict[str, Any], model: ModelConfig = SONNET) -> dict[str, Any]:
    return translate_request(body, user_hash=HASH, model=model)


def _stream_bytes(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(encode_event(event) for event in events)


def _data_lines(output: bytes) -> list[str]:
    text = output.decode("utf-8")
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(block.startswith("data: ") for block in blocks)
    return [block[len("data: ") :] for block in blocks]


def _translate_stream(
    raw: bytes, include_usage: bool, pieces: list[bytes] | None = None
) -> tuple[bytes, StreamTranslator]:
    translator = StreamTranslator(include_usage=include_usage, created=CREATED)
    out = b"".join(translator.feed(piece) for piece in (pieces or [raw]))
    return out + translator.finish(), translator


def _random_pieces(raw: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, start = [], 0
    while start < len(raw):
        size = rng.randint(1, 7)
        pieces.append(raw[start : start + size])
        start += size
    return pieces


def _accumulate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Rebuild content, tool calls, finish_reason and usage from chunks."""
    content, calls, finish, usage = "", {}, [], None
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk, strict=True)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    call["index"], {"id": None, "name": "", "args": ""}
                )
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += call.get("function", {}).get("name") or ""
                slot["args"] += call.get("function", {}).get("arguments") or ""
            if choice["finish_reason"] is not None:
                finish.append(choice["finish_reason"])
    return {"content": content, "calls": calls, "finish": finish, "usage": usage}


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(("openai_file", "anthropic_file"), _request_pairs())
def test_translate_request_matches_wire_example(
    openai_file: str, anthropic_file: str
) -> None:
    expected = _load(anthropic_file)
    expected["metadata"] = {"user_id": HASH}  # the contract: Subgate's hash, always

    assert _translate(_load(openai_file)) == expected


def test_translate_request_never_forwards_client_user() -> None:
    body = _body(user="alice@example.com", safety_identifier="alice")

    out = _translate(body)

    assert out["metadata"] == {"user_id": HASH}
    assert "alice" not in json.dumps(out)


def test_translate_request_system_message_in_the_middle_is_hoisted() -> None:
    body = _body(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hello."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Weather?"},
        ]
    )

    out = _translate(body)

    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_translate_request_merges_consecutive_messages_of_one_role() -> None:
    body = _body(
        messages=[
            {"role": "user", "content": "One"},
            {"role": "user", "content": [{"type": "text", "text": "Two"}]},
            {"role": "assistant", "content": "Three"},
        ]
    )

    out = _translate(body)

    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "One"},
                {"type": "text", "text": "Two"},
            ],
        },
        {"role": "assistant", "content": "Three"},
    ]


def test_translate_request_history_starting_with_assistant_gets_a_user_turn() -> None:
    body = _body(messages=[{"role": "assistant", "content": "Hello."}])

    out = _translate(body)

    assert out["messages"][0]["role"] == "user"
    assert out["messages"][1] == {"role": "assistant", "content": "Hello."}


def test_translate_request_two_parallel_tool_calls_answered_by_two_results() -> None:
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "f", "arguments": "{}"},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "g", "arguments": ""},
        },
    ]
    body = _body(
        messages=[
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_a", "content": "A"},
            {
                "role": "tool",
                "tool_call_id": "call_b",
                "content": [{"type": "text", "text": "B"}],
            },
            {"role": "user", "content": "Now summarise."},
        ]
    )

    out = _translate(body)

    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_a", "name": "f", "input": {}},
            {"type": "tool_use", "id": "call_b", "name": "g", "input": {}},
        ],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": "A"},
            {
                "type": "tool_result",
                "tool_use_id": "call_b",
                "content": [{"type": "text", "text": "B"}],
            },
            {"type": "text", "text": "Now summarise."},
        ],
    }
    assert len(out["messages"]) == 3


@pytest.mark.parametrize("arguments", [None, "", "  ", "null"])
def test_translate_request_empty_tool_arguments_become_empty_object(
    arguments: Any,
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f"}}
    if arguments is not None:
        call["function"]["arguments"] = arguments
    body = _body(
        messages=[
            {"role": "user", "content": "Go"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    )

    out = _translate(body)

    assert out["messages"][1]["content"][0]["input"] == {}


def test_translate_request_tool_without_parameters_gets_empty_schema() -> None:
    body = _body(tools=[{"type": "function", "function": {"name": "now"}}])

    out = _translate(body)

    assert out["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_translate_request_parallel_tool_calls_false_without_choice() -> None:
    body = _body(
        tools=[{"type": "function", "function": {"name": "now"}}],
        parallel_tool_calls=False,
    )

    assert _translate(body)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


def test_translate_request_webp_data_url_becomes_image_block() -> None:
    url = "data:image/webp;base64," + WEBP_HEAD
    part = {"type": "image_url", "image_url": {"url": url}}
    body = _body(messages=[{"role": "user", "content": [part]}])

    out = _translate(body)

    assert out["messages"][0]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/webp", "data": WEBP_HEAD},
        }
    ]


def test_translate_request_mislabelled_image_uses_its_real_type() -> None:
    url = "data:image/jpeg;base64," + PNG_1PX
    body = _body(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}],
            }
        ]
    )

    block = _translate(body)["messages"][0]["content"][0]

    assert block["source"]["media_type"] == "image/png"


@pytest.mark.parametrize(
    "url",
    [
        "data:image/bmp;base64,Qk06AAAAAAAAADYAAAAoAAAA",
        "data:image/heic;base64,AAAAGGZ0eXA=",
    ],
)
def test_translate_request_unsupported_image_type_is_a_clear_400(url: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    body = _body(messages=[{"role": "user", "content": [part]}])

    with pytest.raises(InvalidRequest) as caught:
        _translate(body)

    assert caught.value.status == 400
    assert "not supported" in caught.value.message
    assert "JPEG, PNG, GIF or WebP" in caught.value.message


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("logit_bias", {"123": 5}),
    ],
)
def test_translate_request_unsupported_parameter_is_refused(
    param: str, value: Any
) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        _translate(_body(**{param: value}))

    error = json.loads(caught.value.body())["error"]
    assert caught.value.status == 400
    assert error["code"] == "unsupported_parameter"
    assert error["param"] == param


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 1),
        ("logprobs", False),
        ("seed", 7),
        ("presence_penalty", 0),
        ("frequency_penalty", 0.0),
        ("store", True),
        ("service_tier", "auto"),
        ("metadata", {"k": "v"}),
        ("prompt_cache_key", "abc"),
        ("verbosity", "low"),
        ("modalities", ["text"]),
    ],
)
def test_translate_request_harmless_parameter_is_dropped(
    param: str, value: Any
) -> None:
    out = _translate(_body(**{param: value}))

    assert param not in out or (param == "metadata" and out[param] == {"user_id": HASH})


def test_translate_request_clamps_temperature_to_anthropic_range() -> None:
    assert _translate(_body(temperature=1.7))["temperature"] == 1.0


def test_translate_request_refuses_temperature_out_of_openai_range() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _translate(_body(temperature=3))

    assert caught.value.param == "temperature"


def test_translate_request_drops_params_the_model_refuses() -> None:
    registry = _default_registry()
    _, opus = registry.route("claude-opus-4-7") or (None, None)
    assert opus is not None

    out = _translate(_body(model="claude-opus-4-7", temperature=0.2, top_p=0.9), opus)

    assert "temperature" not in out
    assert "top_p" not in out


def test_translate_request_keeps_one_of_exclusive_params() -> None:
    registry = _default_registry()
    _, sonnet = registry.route("claude-sonnet-4-6") or (None, None)
    assert sonnet is not None

    out = _translate(_body(temperature=0.2, top_p=0.9), sonnet)

    assert out["temperature"] == 0.2
    assert "top_p" not in out


def test_translate_request_default_and_ceiling_of_max_tokens() -> None:
    model = ModelConfig(max_tokens=1000, max_tokens_limit=2000)

    assert _translate(_body(), model)["max_tokens"] == 1000
    assert _translate(_body(max_tokens=5000), model)["max_tokens"] == 2000
    assert (
        _translate(_body(max_completion_tokens=7, max_tokens=9), model)["max_tokens"]
        == 7
    )


def test_translate_request_json_object_becomes_a_system_instruction() -> None:
    body = _body(
        messages=[
            {"role": "system", "content": "Extract."},
            {"role": "user", "content": "x"},
        ],
        response_format={"type": "json_object"},
    )

    out = _translate(body)

    assert out["system"][0] == {"type": "text", "text": "Extract."}
    assert "JSON object" in out["system"][1]["text"]
    assert "output_config" not in out


def test_translate_request_json_schema_without_structured_outputs_is_instructed() -> (
    None
):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    out = _translate(_body(response_format=fmt), ModelConfig())

    assert "output_config" not in out
    assert json.dumps(schema, separators=(",", ":")) in out["system"]


def test_translate_request_stop_drops_whitespace_only_entries() -> None:
    assert _translate(_body(stop="END"))["stop_sequences"] == ["END"]
    assert "stop_sequences" not in _translate(_body(stop=["\n", " "]))


def test_translate_request_tool_choice_required_without_tools_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _translate(_body(tool_choice="required"))

    assert caught.value.param == "tool_choice"


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("anthropic_file", "openai_file"),
    [
        ("anthropic_response_01_text.json", "openai_chat_response_01_text.json"),
        ("anthropic_response_02_cached.json", "openai_chat_response_02_cached.json"),
        (
            "anthropic_response_03_tool_use.json",
            "openai_chat_response_03_tool_calls.json",
        ),
        (
            "anthropic_response_06_max_tokens.json",
            "openai_chat_response_06_length.json",
        ),
        (
            "anthropic_response_07_stop_sequence.json",
            "openai_chat_response_07_stop_sequence.json",
        ),
        ("anthropic_response_08_json.json", "openai_chat_response_08_json.json"),
    ],
)
def test_translate_response_matches_wire_example(
    anthropic_file: str, openai_file: str
) -> None:
    out = translate_response(_load(anthropic_file), created=CREATED)

    assert out == _load(openai_file)
    ChatCompletion.model_validate(out, strict=True)


def test_translate_response_thinking_is_dropped_and_counted() -> None:
    out = translate_response(
        _load("anthropic_response_09_thinking.json"), created=CREATED
    )

    ChatCompletion.model_validate(out, strict=True)
    assert out["choices"][0]["message"]["content"] == "391"
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 36


def test_translate_response_text_and_tool_call() -> None:
    answer = _load("anthropic_response_03_tool_use.json")
    answer["content"].insert(0, {"type": "text", "text": "Checking."})

    out = translate_response(answer, created=CREATED)

    message = out["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    ChatCompletion.model_validate(out, strict=True)


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
    ],
)
def test_translate_response_finish_reason(stop_reason: str, expected: str) -> None:
    answer = _load("anthropic_response_01_text.json")
    answer["stop_reason"] = stop_reason

    out = translate_response(answer, created=CREATED)

    assert out["choices"][0]["finish_reason"] == expected
    ChatCompletion.model_validate(out, strict=True)


# --------------------------------------------------------------------------- streams

STREAM_PAIRS = [
    ("anthropic_stream_01_text.txt", "openai_chat_stream_01_text.txt", False),
    ("anthropic_stream_04_tool_use.txt", "openai_chat_stream_04_tool_calls.txt", True),
    (
        "anthropic_stream_05_text_after_tools.txt",
        "openai_chat_stream_05_text_with_usage.txt",
        True,
    ),
    (
        "anthropic_stream_07_stop_sequence.txt",
        "openai_chat_stream_07_stop_with_usage.txt",
        True,
    ),
    (
        "anthropic_stream_09_thinking.txt",
        "openai_chat_stream_09_reasoning_dropped.txt",
        True,
    ),
]


@pytest.mark.parametrize(("anthropic_file", "openai_file", "usage"), STREAM_PAIRS)
def test_stream_translator_matches_wire_example(
    anthropic_file: str, openai_file: str, usage: bool
) -> None:
    raw = (WIRE / anthropic_file).read_bytes()
    expected = _data_lines((WIRE / openai_file).read_bytes())

    out, translator = _translate_stream(raw, usage)

    lines = _data_lines(out)
    assert lines[-1] == "[DONE]"
    assert [json.loads(x) for x in lines[:-1]] == [json.loads(x) for x in expected[:-1]]
    for line in lines[:-1]:
        ChatCompletionChunk.model_validate(json.loads(line), strict=True)
    assert translator.done and not translator.failed


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("anthropic_file", "openai_file", "usage"), STREAM_PAIRS)
def test_stream_translator_any_split_gives_same_output(
    anthropic_file: str, openai_file: str, usage: bool, seed: int
) -> None:
    raw = (WIRE / anthropic_file).read_bytes()
    whole, _ = _translate_stream(raw, usage)

    split, _ = _translate_stream(raw, usage, _random_pieces(raw, seed))

    assert split == whole


def test_stream_translator_emits_text_as_soon_as_event_is_complete() -> None:
    events = load_sse(WIRE / "anthropic_stream_01_text.txt")
    translator = StreamTranslator(include_usage=False, created=CREATED)
    translator.feed(_stream_bytes(events[:3]))
    delta = encode_event(events[3])

    assert translator.feed(delta[:-1]) == b""
    out = translator.feed(delta[-1:])

    assert json.loads(_data_lines(out)[0])["choices"][0]["delta"] == {
        "content": "Bonjour"
    }


def test_stream_translator_multibyte_text_split_mid_character() -> None:
    raw = (WIRE / "anthropic_stream_05_text_after_tools.txt").read_bytes()
    cut = raw.index("°".encode()) + 1

    out, _ = _translate_stream(raw, True, [raw[:cut], raw[cut:]])

    assert (
        "24 °C"
        in _accumulate([json.loads(x) for x in _data_lines(out)[:-1]])["content"]
    )


def test_stream_translator_tool_arguments_over_many_deltas() -> None:
    events = load_sse(WIRE / "anthropic_stream_04_tool_use.txt")
    arguments = json.dumps({"city": "Paris", "unit": "celsius", "note": "é" * 10})
    tool_events = [e for e in events if e[1].get("index") == 1]
    rest = [e for e in events if e[1].get("index") != 1]
    pieces = [arguments[i : i + 3] for i in range(0, len(arguments), 3)]
    deltas = [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            },
        )
        for piece in pieces
    ]
    stream = [*rest[:6], tool_events[0], *deltas, tool_events[-1], *rest[6:]]
    raw = _stream_bytes(stream)

    out, _ = _translate_stream(raw, True, _random_pieces(raw, 42))

    result = _accumulate([json.loads(x) for x in _data_lines(out)[:-1]])
    assert json.loads(result["calls"][0]["args"]) == json.loads(arguments)
    assert result["calls"][0]["id"] == "toolu_01Ab2Cd3Ef4Gh5Ij6Kl7Mn8P"
    assert json.loads(result["calls"][1]["args"]) == {"city": "Tokyo"}
    assert result["finish"] == ["tool_calls"]


def test_stream_translator_tool_without_arguments_gets_empty_object() -> None:
    events = load_sse(WIRE / "anthropic_stream_04_tool_use.txt")
    stream = [
        e
        for e in events
        if not (e[1].get("index") == 2 and e[1].get("type") == "content_block_delta")
    ]

    out, _ = _translate_stream(_stream_bytes(stream), False)

    result = _accumulate([json.loads(x) for x in _data_lines(out)[:-1]])
    assert result["calls"][1]["args"] == "{}"


def test_stream_and_json_answer_give_the_same_result() -> None:
    events = load_sse(WIRE / "anthropic_stream_04_tool_use.txt")
    message = copy.deepcopy(events[0][1]["message"])
    message["content"] = [
        {"type": "text", "text": "I'll look up both cities."},
        {
            "type": "tool_use",
            "id": "toolu_01Ab2Cd3Ef4Gh5Ij6Kl7Mn8P",
            "name": "get_weather",
            "input": {"city": "Paris"},
        },
        {
            "type": "tool_use",
            "id": "toolu_01Qr9St8Uv7Wx6Yz5Ab4Cd3E",
            "name": "get_weather",
            "input": {"city": "Tokyo"},
        },
    ]
    message["stop_reason"] = "tool_use"
    message["usage"]["output_tokens"] = 97

    streamed, _ = _translate_stream(_stream_bytes(events), True)
    answer = translate_response(message, created=CREATED)

    result = _accumulate([json.loads(x) for x in _data_lines(streamed)[:-1]])
    choice = answer["choices"][0]
    assert result["content"] == choice["message"]["content"]
    assert [
        (c["id"], c["name"], json.loads(c["args"])) for c in result["calls"].values()
    ] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in choice["message"]["tool_calls"]
    ]
    assert result["finish"] == [choice["finish_reason"]]
    assert result["usage"] == answer["usage"]


def test_stream_translator_without_include_usage_has_no_usage_key() -> None:
    raw = (WIRE / "anthropic_stream_07_stop_sequence.txt").read_bytes()

    out, translator = _translate_stream(raw, False)

    chunks = [json.loads(x) for x in _data_lines(out)[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert translator.usage == {
        "input_tokens": 26,
        "output_tokens": 8,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def test_stream_translator_error_event_ends_stream_with_error_line() -> None:
    events = load_sse(WIRE / "anthropic_stream_01_text.txt")
    raw = _stream_bytes([*events[:4], error_event("overloaded_error", "Overloaded")])

    out, translator = _translate_stream(raw, False)

    lines = _data_lines(out)
    assert "[DONE]" not in lines
    assert json.loads(lines[-1]) == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert translator.done and translator.failed
    assert translator.feed(_stream_bytes(events[4:])) == b""


def test_stream_translator_truncated_stream_ends_with_error_line() -> None:
    events = load_sse(WIRE / "anthropic_stream_01_text.txt")

    out, translator = _translate_stream(_stream_bytes(events[:5]), False)

    lines = _data_lines(out)
    assert json.loads(lines[-1])["error"]["code"] == "stream_incomplete"
    assert translator.failed


def _openai_client_over(body: bytes) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(
        api_key="x", base_url="http://gateway.test/v1", http_client=http
    )


def test_openai_sdk_reads_translated_stream() -> None:
    raw = (WIRE / "anthropic_stream_04_tool_use.txt").read_bytes()
    out, _ = _translate_stream(raw, True)

    with _openai_client_over(out) as client:
        stream = client.chat.completions.create(
            model="claude-sonnet-4-6",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)

    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 500


def test_openai_sdk_raises_on_mid_stream_error() -> None:
    events = load_sse(WIRE / "anthropic_stream_01_text.txt")
    out, _ = _translate_stream(_stream_bytes([*events[:4], error_event()]), False)

    with _openai_client_over(out) as client:
        stream = client.chat.completions.create(
            model="claude-sonnet-4-6",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
        with pytest.raises(openai.APIError) as caught:
            list(stream)

    assert "Overloaded" in str(caught.value)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "file", "expected_status", "expected_type", "expected_code"),
    [
        (
            400,
            "anthropic_error_400_invalid_request.json",
            400,
            "invalid_request_error",
            "invalid_request_error",
        ),
        (
            429,
            "anthropic_error_429_rate_limit.json",
            429,
            "rate_limit_error",
            "rate_limit_error",
        ),
        (500, "anthropic_error_500_api_error.json", 500, "server_error", "api_error"),
        (
            529,
            "anthropic_error_529_overloaded.json",
            503,
            "server_error",
            "overloaded_error",
        ),
    ],
)
def test_translate_error_maps_wire_examples(
    status: int, file: str, expected_status: int, expected_type: str, expected_code: str
) -> None:
    raw = (WIRE / file).read_bytes()

    error = translate_error(status, raw, "17")

    body = json.loads(error.body())["error"]
    assert error.status == expected_status
    assert body == {
        "message": json.loads(raw)["error"]["message"],
        "type": expected_type,
        "code": expected_code,
        "param": None,
    }
    assert error.headers["Retry-After"] == "17"


@pytest.mark.parametrize(
    ("status", "anthropic_type"),
    [(404, "not_found_error"), (413, "request_too_large")],
)
def test_translate_error_keeps_client_errors(status: int, anthropic_type: str) -> None:
    raw = json.dumps(
        {"type": "error", "error": {"type": anthropic_type, "message": "m"}}
    ).encode()

    error = translate_error(status, raw, None)

    assert (error.status, error.code, error.type) == (
        status,
        anthropic_type,
        "invalid_request_error",
    )
    assert "Retry-After" not in error.headers


@pytest.mark.parametrize("status", [401, 403])
def test_translate_error_refused_server_key_is_provider_unavailable(
    status: int,
) -> None:
    raw = (WIRE / "anthropic_error_401_authentication.json").read_bytes()

    error = translate_error(status, raw, None)

    assert isinstance(error, ProviderUnavailable)
    assert (error.status, error.code) == (503, "provider_unavailable")
    assert "x-api-key" not in error.message


def test_translate_error_unparseable_body() -> None:
    error = translate_error(502, b"<html>Bad gateway</html>", None)

    assert error.status == 502
    assert json.loads(error.body())["error"]["code"] == "api_error"


def test_upstream_headers_pin_the_version() -> None:
    headers = anthropic.upstream_headers("sk-ant-test")

    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-api-key"] == "sk-ant-test"


def _default_registry() -> ProviderRegistry:
    from gateway_service.providers.config import load_providers

    settings = load_settings({"JWT_SECRET": "x" * 40}, env_file=None)
    return load_providers(None, settings, {})
