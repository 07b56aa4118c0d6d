"""The fake Anthropic upstream speaks Anthropic's wire format and records requests."""

from __future__ import annotations

import threading
from pathlib import Path

import anthropic
import httpx
import pytest

from gateway_service.providers.anthropic import StreamTranslator, upstream_headers
from tests.support.fake_anthropic import (
    FakeAnthropic,
    error_event,
    load_sse,
    message,
    text_stream_events,
)

WIRE = Path(__file__).with_name("wire")
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}


def test_fake_anthropic_serves_scripted_json_to_the_anthropic_sdk() -> None:
    with FakeAnthropic(api_key="sk-ant-test") as fake:
        fake.script(message([{"type": "text", "text": "Bonjour"}]))
        client = anthropic.Anthropic(api_key="sk-ant-test", base_url=fake.base_url)

        answer = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}],
        )
        client.close()

    assert answer.content[0].text == "Bonjour"  # type: ignore[union-attr]
    assert fake.requests[0].path == "/v1/messages"
    assert fake.requests[0].json["messages"][0]["content"] == "Hi"


def test_fake_anthropic_refuses_a_wrong_key_like_anthropic() -> None:
    with FakeAnthropic(api_key="right") as fake:
        response = httpx.post(
            fake.base_url + "/v1/messages", json=BODY, headers=upstream_headers("wrong")
        )

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["request-id"].startswith("req_")


def test_fake_anthropic_scripted_error_keeps_headers() -> None:
    with FakeAnthropic() as fake:
        fake.script_error(529, "overloaded_error", "Overloaded", {"retry-after": "3"})
        response = httpx.post(fake.base_url + "/v1/messages", json=BODY)

    assert response.status_code == 529
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"] == {
        "type": "overloaded_error",
        "message": "Overloaded",
    }


def test_fake_anthropic_stream_waits_for_the_test_and_translates() -> None:
    gate = threading.Event()
    events = load_sse(WIRE / "anthropic_stream_01_text.txt")
    with FakeAnthropic() as fake:
        fake.script_stream([*events[:4], gate, *events[4:]], split=5)
        translator = StreamTranslator(include_usage=False, created=1)
        out = b""
        with httpx.stream(
            "POST", fake.base_url + "/v1/messages", json=BODY
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for piece in response.iter_raw():
                out += translator.feed(piece)
                if b"Bonjour" in out:
                    gate.set()
        out += translator.finish()

    assert out.endswith(b"data: [DONE]\n\n")
    assert b"-vous ?" in out


def test_fake_anthropic_mid_stream_error_event() -> None:
    with FakeAnthropic() as fake:
        fake.script_stream([*text_stream_events(["Hi"])[:4], error_event()])
        translator = StreamTranslator(include_usage=False, created=1)
        with httpx.stream(
            "POST", fake.base_url + "/v1/messages", json=BODY
        ) as response:
            out = b"".join(translator.feed(p) for p in response.iter_raw())

    assert translator.failed
    assert b'"code":"overloaded_error"' in out


def test_fake_anthropic_records_client_disconnect() -> None:
    gate = threading.Event()
    with FakeAnthropic() as fake:
        fake.script_stream([*text_stream_events(["Hi"])[:2], gate])
        with httpx.stream(
            "POST", fake.base_url + "/v1/messages", json=BODY
        ) as response:
            next(response.iter_raw())
        # leaving the block closes the connection while the fake waits on the gate

        assert fake.disconnected.wait(timeout=10)
    assert fake.disconnects == 1


@pytest.mark.parametrize("stream", [False, True])
def test_fake_anthropic_default_answer(stream: bool) -> None:
    with FakeAnthropic() as fake:
        response = httpx.post(
            fake.base_url + "/v1/messages", json={**BODY, "stream": stream}
        )

    assert response.status_code == 200
    assert (b"event: message_stop" in response.content) is stream
