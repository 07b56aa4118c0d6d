"""OpenAI Chat Completions request -> Anthropic Messages request."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Any

from gateway_service.providers.config import ModelConfig
from shared.errors import InvalidRequest, UnsupportedParameter

logger = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

# Parameters Anthropic has no use for and whose absence changes nothing for the client.
DROPPED_PARAMS = frozenset(
    {
        "seed",
        "store",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "verbosity",
        "user",
        "safety_identifier",
        "stream_options",
    }
)
_UNSUPPORTED_MESSAGES = {
    "n": "n > 1 is not supported for Claude models; send n=1 or omit it.",
    "logprobs": "logprobs are not available for Claude models.",
    "top_logprobs": "top_logprobs is not available for Claude models.",
    "presence_penalty": "presence_penalty is not supported for Claude models.",
    "frequency_penalty": "frequency_penalty is not supported for Claude models.",
    "logit_bias": "logit_bias is not supported for Claude models.",
    "audio": "Audio output is not supported for Claude models.",
    "modalities": "Only text output is supported for Claude models.",
    "prediction": "Predicted outputs are not supported for Claude models.",
    "web_search_options": "web_search_options is not supported for Claude models.",
}
# Translated explicitly below; everything else unknown is dropped and logged.
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "reasoning_effort",
        "modalities",
    }
)
_BUDGETS = {"low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 65536}
_JSON_OBJECT_INSTRUCTION = (
    "Respond with one valid JSON object and nothing else: no prose, no code fences."
)
_CONTINUE_TEXT = "(continue)"


def upstream_headers(api_key: str) -> dict[str, str]:
    """Headers for a translated call to Anthropic with the server's key."""
    return {
        "x-api-key": api_key,
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
    }


# --------------------------------------------------------------------------- request


def translate_request(
    body: dict[str, Any], *, user_hash: str, model: ModelConfig
) -> dict[str, Any]:
    """An OpenAI chat completion request as an Anthropic Messages request.

    Raises UnsupportedParameter or InvalidRequest naming the offending parameter. The
    client's `user`/`safety_identifier` are never forwarded; `user_hash` is sent as
    `metadata.user_id` instead.
    """
    _refuse_unsupported(body)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("model must be a non-empty string.", param="model")

    system, messages = _translate_messages(body.get("messages"))
    out: dict[str, Any] = {
        "model": name,
        "max_tokens": _max_tokens(body, model),
        "messages": messages,
    }
    if system:
        out["system"] = system

    out.update(_tools(body))
    out.update(_sampling(body))
    _apply_response_format(out, body.get("response_format"), model)
    _apply_reasoning(out, body.get("reasoning_effort"), model)
    _drop_for_model(out, model)
    if user_hash:
        out["metadata"] = {"user_id": user_hash}
    if body.get("stream"):
        out["stream"] = True
    _log_ignored(body)
    return out


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for param, message in _UNSUPPORTED_MESSAGES.items():
        if not _is_neutral(param, body.get(param)):
            raise UnsupportedParameter(message, param=param)


def _is_neutral(param: str, value: Any) -> bool:
    """Whether a parameter Anthropic lacks is at a value that changes nothing."""
    if value is None:
        return True
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if param == "n":
        return number and value == 1
    if param in ("top_logprobs", "presence_penalty", "frequency_penalty"):
        return number and value == 0
    if param == "logprobs":
        return value is False
    if param == "logit_bias":
        return bool(value == {})
    if param == "modalities":
        return value in (["text"], [])
    return False


def _log_ignored(body: dict[str, Any]) -> None:
    unknown = sorted(
        set(body) - _TRANSLATED - DROPPED_PARAMS - set(_UNSUPPORTED_MESSAGES)
    )
    if unknown:
        logger.info("Dropped parameters unknown to the Claude translation: %s", unknown)


def _max_tokens(body: dict[str, Any], model: ModelConfig) -> int:
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{param} must be a positive integer.", param=param)
        limit = model.max_tokens_limit
        return min(value, limit) if limit else value
    return model.max_tokens


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        out["top_p"] = top_p
    top_k = body.get("top_k")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InvalidRequest("top_k must be a positive integer.", param="top_k")
        out["top_k"] = top_k

    stops = _stop_sequences(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    return out


def _number(body: dict[str, Any], param: str, low: float, high: float) -> float | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{param} must be a number.", param=param)
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high}.", param=param)
    return value


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest(
            "stop must be a string or a list of strings.", param="stop"
        )
    # Anthropic refuses whitespace-only stop sequences.
    return [s for s in items if s.strip()]


def _drop_for_model(out: dict[str, Any], model: ModelConfig) -> None:
    for param in model.drop_params:
        out.pop(param, None)
    present = [p for p in model.exclusive_params if p in out]
    for param in present[1:]:
        del out[param]


# --------------------------------------------------------------------------- messages


def _translate_messages(raw: Any) -> tuple[str | list[dict[str, Any]], list[Any]]:
    """System prompt (hoisted from anywhere) and alternating Anthropic messages."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty list.", param="messages")

    system: list[dict[str, Any]] = []
    plain_system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param="messages")
        role = message.get("role")
        if role in ("system", "developer"):
            blocks = _text_blocks(message.get("content"), f"messages[{i}].content")
            system.extend(blocks)
            if isinstance(message.get("content"), str):
                plain_system.append(message["content"])
        else:
            _append_turn(turns, _turn(role, message, i))

    if not turns:
        raise InvalidRequest(
            "messages must hold at least one user or assistant message.",
            param="messages",
        )
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": _CONTINUE_TEXT})
    _trim_final_assistant(turns)
    one_string = len(plain_system) == 1 and len(system) == 1
    return (plain_system[0] if one_string else system), turns


def _turn(role: Any, message: dict[str, Any], i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if role == "user":
        return {"role": "user", "content": _user_content(message.get("content"), where)}
    if role == "assistant":
        return {"role": "assistant", "content": _assistant_content(message, where)}
    if role == "tool":
        return {"role": "user", "content": [_tool_result(message, where)]}
    if role == "function":
        raise InvalidRequest(
            f"{where}: role 'function' is not supported for Claude models; use tools.",
            param="messages",
        )
    raise InvalidRequest(f"{where}.role {role!r} is not valid.", param="messages")


def _append_turn(turns: list[dict[str, Any]], turn: dict[str, Any]) -> None:
    """Append, merging into the previous turn when the role repeats."""
    if turns and turns[-1]["role"] == turn["role"]:
        previous = turns[-1]
        previous["content"] = _as_blocks(previous["content"]) + _as_blocks(
            turn["content"]
        )
        _tool_results_first(previous)
    else:
        turns.append(turn)


def _tool_results_first(turn: dict[str, Any]) -> None:
    # Anthropic wants a user turn's tool_result blocks before any other content.
    blocks = turn["content"]
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if results:
        turn["content"] = results + [
            b for b in blocks if b.get("type") != "tool_result"
        ]


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _trim_final_assistant(turns: list[dict[str, Any]]) -> None:
    # A final assistant turn is a prefill; Anthropic refuses one ending in whitespace.
    last = turns[-1]
    if last["role"] != "assistant":
        return
    if isinstance(last["content"], str):
        last["content"] = last["content"].rstrip()
    elif last["content"] and last["content"][-1].get("type") == "text":
        last["content"][-1]["text"] = last["content"][-1]["text"].rstrip()


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Text-only content (system prompts, assistant text) as text blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list.", param="messages")
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise InvalidRequest(
                f"{where}[{j}] must be a text part here.", param="messages"
            )
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise InvalidRequest(
                f"{where}[{j}].text must be a string.", param="messages"
            )
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where}.content must be a string or a list of parts.", param="messages"
        )
    blocks = []
    for j, part in enumerate(content):
        block = _user_part(part, f"{where}.content[{j}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _user_part(part: Any, where: str) -> dict[str, Any] | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}.text must be a string.", param="messages")
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        return _image_block(part.get("image_url"), where)
    if kind == "file":
        return _document_block(part.get("file"), where)
    if kind == "input_audio":
        raise UnsupportedParameter(
            f"{where}: audio input is not supported for Claude models.",
            param="messages",
        )
    raise InvalidRequest(
        f"{where}: unknown content part type {kind!r}.", param="messages"
    )


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}.image_url.url must be a URL.", param="messages")
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise InvalidRequest(
            f"{where}: image URLs must be https:// or data: URLs.", param="messages"
        )
    media_type, data = _data_url(url, where)
    media_type = _image_media_type(media_type, data, where)
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, _, data = url[len("data:") :].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding.lower() != "base64" or not data:
        raise InvalidRequest(
            f"{where}: data URLs must be base64 encoded (data:<type>;base64,<data>).",
            param="messages",
        )
    return media_type.strip().lower(), data


def _image_media_type(declared: str, data: str, where: str) -> str:
    """The image's real type, checked against what Anthropic accepts."""
    if declared == "image/jpg":
        declared = "image/jpeg"
    sniffed = _sniff_image(data)
    if sniffed is not None:
        return sniffed
    if declared in IMAGE_TYPES:
        return declared
    raise InvalidRequest(
        f"{where}: image type {declared or 'unknown'!r} is not supported for Claude "
        "models; send JPEG, PNG, GIF or WebP.",
        param="messages",
    )


def _sniff_image(data: str) -> str | None:
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4))
    except (binascii.Error, ValueError):
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _document_block(file: Any, where: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str) or not data.startswith("data:"):
        raise UnsupportedParameter(
            f"{where}: only inline PDF files (file_data) work with Claude models.",
            param="messages",
        )
    media_type, payload = _data_url(data, where)
    if media_type != "application/pdf":
        raise InvalidRequest(
            f"{where}: file type {media_type!r} is not supported; send a PDF.",
            param="messages",
        )
    source = {"type": "base64", "media_type": media_type, "data": payload}
    return {"type": "document", "source": source}


def _assistant_content(
    message: dict[str, Any], where: str
) -> str | list[dict[str, Any]]:
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if message.get("function_call"):
        calls = [*calls, {"id": _legacy_id(), "function": message["function_call"]}]
    if isinstance(content, str) and not calls:
        return content
    blocks = _text_blocks(content, f"{where}.content")
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list.", param="messages")
    for k, call in enumerate(calls):
        blocks.append(_tool_use_block(call, f"{where}.tool_calls[{k}]"))
    return blocks


def _tool_use_block(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is missing.", param="messages")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.id is missing.", param="messages")
    return {
        "type": "tool_use",
        "id": call_id,
        "name": function["name"],
        "input": _arguments(function.get("arguments"), where),
    }


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        raise InvalidRequest(
            f"{where}.function.arguments must be a JSON object.", param="messages"
        ) from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise InvalidRequest(
            f"{where}.function.arguments must be a JSON object.", param="messages"
        )
    return parsed


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_call_id is missing.", param="messages")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif isinstance(content, list):
        parts = _user_content(content, where)
        if parts:
            block["content"] = parts
    elif content is not None:
        raise InvalidRequest(
            f"{where}.content must be a string or a list of parts.", param="messages"
        )
    return block


def _legacy_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------- tools


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    functions = body.get("functions")
    if tools is None and functions is not None:
        if not isinstance(functions, list):
            raise InvalidRequest("functions must be a list.", param="functions")
        tools = [{"type": "function", "function": f} for f in functions]
    choice = body.get("tool_choice", _legacy_choice(body.get("function_call")))
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
        return {}
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list.", param="tools")

    out: dict[str, Any] = {"tools": [_tool(t, i) for i, t in enumerate(tools)]}
    anthropic_choice = _tool_choice(choice)
    if body.get("parallel_tool_calls") is False:
        anthropic_choice = anthropic_choice or {"type": "auto"}
        if anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
    if anthropic_choice:
        out["tool_choice"] = anthropic_choice
    return out


def _legacy_choice(function_call: Any) -> Any:
    if isinstance(function_call, dict):
        return {"type": "function", "function": function_call}
    return function_call


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise UnsupportedParameter(
            f"tools[{i}]: only function tools are supported for Claude models.",
            param="tools",
        )
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"tools[{i}].function.name is missing.", param="tools")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = parameters
    if function.get("strict") is True:
        out["strict"] = True
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    name = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            "tool_choice must be auto, none, required or a named function.",
            param="tool_choice",
        )
    return {"type": "tool", "name": name}


# --------------------------------------------------------------------------- options


def _apply_response_format(
    out: dict[str, Any], response_format: Any, model: ModelConfig
) -> None:
    """json_schema -> structured outputs; json_object -> a system instruction."""
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        _add_system(out, _JSON_OBJECT_INSTRUCTION)
        return
    spec = response_format.get("json_schema") if kind == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "response_format must be text, json_object or json_schema with a schema.",
            param="response_format",
        )
    if model.structured_outputs:
        fmt = {"type": "json_schema", "schema": schema}
        out.setdefault("output_config", {})["format"] = fmt
    else:
        schema_text = json.dumps(schema, separators=(",", ":"))
        _add_system(
            out,
            f"{_JSON_OBJECT_INSTRUCTION} It must match this JSON schema: {schema_text}",
        )


def _add_system(out: dict[str, Any], text: str) -> None:
    system = out.get("system")
    if not system:
        out["system"] = text
    elif isinstance(system, str):
        out["system"] = [
            {"type": "text", "text": system},
            {"type": "text", "text": text},
        ]
    else:
        system.append({"type": "text", "text": text})


def _apply_reasoning(out: dict[str, Any], effort: Any, model: ModelConfig) -> None:
    """reasoning_effort -> extended thinking, where the model has it."""
    if effort in (None, "none", "minimal") or model.reasoning == "none":
        return
    if not isinstance(effort, str) or effort not in _BUDGETS:
        raise InvalidRequest(
            "reasoning_effort must be none, minimal, low, medium, high, xhigh or max.",
            param="reasoning_effort",
        )
    choice = out.get("tool_choice", {}).get("type")
    if choice in ("any", "tool"):
        raise UnsupportedParameter(
            "reasoning_effort cannot be combined with a required or named tool_choice "
            "for Claude models.",
            param="reasoning_effort",
        )
    if model.reasoning == "adaptive":
        out["thinking"] = {"type": "adaptive"}
        out.setdefault("output_config", {})["effort"] = effort
    else:
        budget = min(_BUDGETS[effort], out["max_tokens"] - 1)
        if budget < 1024:
            return  # too little room to think: answer without thinking
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    # Thinking refuses non-default sampling settings.
    for param in ("temperature", "top_p", "top_k"):
        out.pop(param, None)


# --------------------------------------------------------------------------- answers
