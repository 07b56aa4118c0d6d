"""Fuzzing with hypothesis against the running stack: login bodies, gateway bodies and
headers. Never a 5xx, always the contract's error shape, never an echo of a secret."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth_service.dev_storekit import DevChain, replace_certificate
from tests.conftest import SERVER_ANTHROPIC_KEY, SERVER_OPENAI_KEY, Stack
from tests.hostile.support import assert_error_shape
from tests.support.processes import TEST_JWT_SECRET

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SECRETS = (SERVER_OPENAI_KEY, SERVER_ANTHROPIC_KEY, TEST_JWT_SECRET)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
chat_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o-mini", "claude-sonnet-4-6"]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": st.sampled_from(["user", "system", "assistant", "tool"])
                    | json_values,
                    "content": json_values,
                    "tool_calls": json_values,
                    "name": json_values,
                },
            ),
            max_size=3,
        )
        | json_values,
        "stream": json_values,
        "max_tokens": st.integers() | json_values,
        "temperature": json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "stop": json_values,
        "stream_options": json_values,
        "response_format": json_values,
        "n": json_values,
        "user": json_values,
    },
)


@pytest.fixture(scope="module")
def token(running_stack: Stack) -> str:
    return running_stack.login()


def assert_safe(
    answer: httpx.Response, sent: bytes = b"", shape: str = "openai"
) -> None:
    """No 5xx of Subgate's own (the fake provider's own 500 on nonsense it cannot
    read is relayed as `upstream_error`), the error shape, no secret, no echo."""
    relayed = b'"upstream_error"' in answer.content
    assert answer.status_code < 500 or relayed, (answer.status_code, answer.text)
    if answer.status_code >= 400:
        assert_error_shape(answer.status_code, answer.content, shape, relayed=relayed)
    for secret in SECRETS:
        assert secret.encode() not in answer.content
        assert secret not in str(answer.headers)
    if len(sent) >= 12 and answer.status_code >= 400:
        assert sent not in answer.content


# --- /appstore ------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=4096))
def test_fuzz_login_random_bytes(running_stack: Stack, body: bytes) -> None:
    answer = httpx.post(running_stack.url + "/appstore", content=body)

    assert answer.status_code in (400, 401, 413), answer.text
    assert_safe(answer, body)


@FUZZ
@given(body=st.text(max_size=2000))
def test_fuzz_login_unicode(running_stack: Stack, body: str) -> None:
    sent = body.encode()
    answer = httpx.post(running_stack.url + "/appstore", content=sent)

    assert answer.status_code in (400, 401), answer.text
    assert_safe(answer, sent.strip())


@FUZZ
@given(raw=st.binary(min_size=1, max_size=3000))
def test_fuzz_login_base64_garbage(running_stack: Stack, raw: bytes) -> None:
    sent = base64.b64encode(raw)
    answer = httpx.post(running_stack.url + "/appstore", content=sent)

    assert answer.status_code == 401, answer.text
    assert_safe(answer, sent)


@FUZZ
@given(data=st.data())
def test_fuzz_login_almost_valid_jws(
    running_stack: Stack, dev_chain: DevChain, data: st.DataObject
) -> None:
    jws = running_stack.sign()
    position = data.draw(st.integers(0, len(jws) - 1))
    replacement = data.draw(st.sampled_from("AZaz09-_.=+/ "))
    mutated = jws[:position] + replacement + jws[position + 1 :]
    if mutated == jws:
        return

    answer = httpx.post(running_stack.url + "/appstore", content=mutated)

    assert answer.status_code in (400, 401), answer.text
    assert_safe(answer, mutated.encode())


@FUZZ
@given(data=st.data())
def test_fuzz_login_jws_with_swapped_or_extra_certificates(
    running_stack: Stack, dev_chain: DevChain, data: st.DataObject
) -> None:
    other = DevChain.create()
    jws = running_stack.sign()
    kind = data.draw(st.sampled_from(["swap", "extra", "drop", "garbage"]))
    position = data.draw(st.integers(0, 2))
    forged = _forge_chain(jws, other, kind, position, data.draw(st.binary(max_size=64)))

    answer = httpx.post(running_stack.url + "/appstore", content=forged)

    assert answer.status_code == 401, answer.text
    assert_safe(answer, forged.encode())


def _forge_chain(
    jws: str, other: DevChain, kind: str, position: int, junk: bytes
) -> str:
    members = [other.leaf, other.intermediate, other.root]
    if kind == "swap":
        return replace_certificate(jws, position, members[position].der)
    header, payload, signature = jws.split(".")
    fields = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    if kind == "extra":
        fields["x5c"].insert(position, base64.b64encode(members[position].der).decode())
    elif kind == "drop":
        del fields["x5c"][position]
    else:
        fields["x5c"][position] = base64.b64encode(junk).decode()
    encoded = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=")
    return f"{encoded.decode()}.{payload}.{signature}"


def test_login_huge_body_answers_413(running_stack: Stack) -> None:
    answer = httpx.post(running_stack.url + "/appstore", content=b"A" * (3 << 20))

    assert answer.status_code == 413
    assert_safe(answer)


# --- /v1 bodies and headers -----------------------------------------------------------


@FUZZ
@given(body=chat_fields)
def test_fuzz_chat_fields_of_wrong_types(
    running_stack: Stack, token: str, body: dict[str, Any]
) -> None:
    answer = httpx.post(
        running_stack.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )

    assert_safe(answer)


@FUZZ
@given(body=chat_fields)
def test_fuzz_native_messages_fields(
    running_stack: Stack, token: str, body: dict[str, Any]
) -> None:
    answer = httpx.post(
        running_stack.url + "/v1/messages",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )

    assert_safe(answer, shape="anthropic")


@FUZZ
@given(body=st.binary(max_size=2048))
def test_fuzz_chat_invalid_json(running_stack: Stack, token: str, body: bytes) -> None:
    answer = httpx.post(
        running_stack.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": "application/json"},
    )  # fmt: skip

    assert_safe(answer, body)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"model":"gpt-4o-mini","max_tokens":' + b"9" * 5000 + b"}",
        b'{"model":"claude-sonnet-4-6","max_tokens":1e400,"messages":[]}',
        b'{"model":"claude-sonnet-4-6","max_tokens":' + b"9" * 40 + b',"messages":[]}',
        b'{"model":"gpt-4o-mini","x":"\\ud800"}',
        b'{"model":"gpt-4o-mini"}\x00',
        b"\xef\xbb\xbf{}",
    ],
)
def test_hostile_json_bodies_are_4xx(
    running_stack: Stack, token: str, body: bytes
) -> None:
    answer = httpx.post(
        running_stack.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": "application/json"},
    )  # fmt: skip

    assert_safe(answer, body)


header_names = st.text(
    "abcdefghijklmnopqrstuvwxyz0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=30
)
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=200,
).map(str.strip)


@FUZZ
@given(headers=st.dictionaries(header_names, header_values, max_size=8))
def test_fuzz_request_headers(
    running_stack: Stack, token: str, headers: dict[str, str]
) -> None:
    sent = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    sent["Authorization"] = f"Bearer {token}"
    encoded = {k: v.encode("latin-1") for k, v in sent.items()}

    answer = httpx.post(
        running_stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers=encoded,
    )

    assert_safe(answer)


@FUZZ
@given(value=header_values)
def test_fuzz_authorization_header(running_stack: Stack, value: str) -> None:
    answer = httpx.get(
        running_stack.url + "/v1/models",
        headers={"Authorization": value.encode("latin-1")},
    )

    assert answer.status_code == 407
    assert_safe(answer)
