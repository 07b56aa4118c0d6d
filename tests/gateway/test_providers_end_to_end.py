"""Every shipped provider example, loaded by a real gateway, routes a Chat Completions
call to its provider (a fake OpenAI-compatible server) with that provider's key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx
import jwt
import openai
import pytest

from shared.identity import provider_user_hash
from tests.conftest import Stack
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import start_auth, start_gateway

EXAMPLES = sorted((Path(__file__).parents[2] / "providers" / "examples").glob("*.toml"))


def _model_for(pattern: str) -> str:
    """A model name that the route pattern (exact name or glob) matches."""
    return pattern.replace("*", "test").replace("?", "x")


def _pointed_at(example: Path, base_url: str, tmp_path: Path) -> Path:
    """The example file with every provider's base URL replaced by the fake's."""
    text = re.sub(
        r'(?m)^base_url = ".*"$', f'base_url = "{base_url}"', example.read_text()
    )
    copy = tmp_path / example.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_shipped_example_routes_to_its_provider(
    example: Path,
    tmp_path: Path,
    base_env: dict[str, str],
    running_stack: Stack,
) -> None:
    providers = tomllib.loads(example.read_text())["providers"]
    name, provider = next(iter(providers.items()))
    key_env = provider.get("api_key_env")
    model = _model_for(provider["models"][0])

    with FakeOpenAI() as fake:
        env = {
            **base_env,
            "PROVIDERS_FILE": str(
                _pointed_at(example, fake.base_url + "/v1", tmp_path)
            ),
            **({key_env: f"key-for-{name}"} if key_env else {}),
        }
        auth = start_auth(tmp_path, env)
        gateway = start_gateway(tmp_path, env, auth.url)
        try:
            token = running_stack.login()
            client = openai.OpenAI(
                api_key=token, base_url=gateway.url + "/v1", max_retries=0
            )
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], user="me"
            )
        finally:
            gateway.stop()
            auth.stop()

    assert answer.choices[0].message.content == "Hello from the fake!"
    seen = fake.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.json["model"] == model
    user = jwt.decode(token, options={"verify_signature": False})["sub"]
    assert seen.json["user"] == provider_user_hash(user)
    expected = f"Bearer key-for-{name}" if key_env else None
    assert seen.headers.get("authorization") == expected
    assert token not in str(seen.headers)


def test_routed_provider_without_its_key_answers_503_naming_it(
    tmp_path: Path, base_env: dict[str, str], running_stack: Stack
) -> None:
    example = next(e for e in EXAMPLES if e.stem == "groq")
    env = {**base_env, "PROVIDERS_FILE": str(example)}
    auth = start_auth(tmp_path, env)
    gateway = start_gateway(tmp_path, env, auth.url)
    try:
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "llama-3.3-70b-versatile", "messages": []},
            headers={"authorization": f"Bearer {running_stack.login()}"},
        )
    finally:
        gateway.stop()
        auth.stop()

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "provider_unavailable"
    assert "groq" in error["message"] and "GROQ_API_KEY" in error["message"]
