"""A whole session with known secrets: every log line and every answer is scanned for
the provider keys, the JWT secret, the IAP key, session tokens and the upstream
Authorization header."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from auth_service.dev_storekit import DevChain
from tests.conftest import BUNDLE_ID
from tests.hostile.support import OwnStack, own_stack
from tests.hostile.test_outages import iap_key_pem
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import FakeOpenAI, error
from tests.support.redis_server import free_port

OPENAI_KEY = "sk-proj-SECRETopenaiKEYforTHEscan0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-SECRETanthropicKEYforTHEscan012345"
JWT_SECRET = "SECRET-jwt-secret-for-the-scan-0123456789abcdefXYZ"
IAP_KEY = iap_key_pem()


@pytest.fixture(scope="module")
def session(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    openai_upstream: FakeOpenAI,
    anthropic_upstream: FakeAnthropic,
) -> Iterator[OwnStack]:
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {
        **base_env,
        "JWT_SECRET": JWT_SECRET,
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "IAP_PRIVATE_KEY": IAP_KEY,
        "IAP_ISSUER_ID": "57246542-96fe-1a63-e053-0824d011072a",
        "IAP_KEY_ID": "2X9R4HXF34",
        "APPSTORE_STATUS_CHECK": "0",
        "APPSTORE_API_URL_PRODUCTION": nowhere,
        "APPSTORE_API_URL_SANDBOX": nowhere,
        "LOG_LEVEL": "debug",
    }
    with own_stack(tmp_path_factory.mktemp("secrets"), env) as stack:
        yield stack


def test_no_secret_in_any_answer_or_log_line(
    session: OwnStack,
    dev_chain: DevChain,
    openai_upstream: FakeOpenAI,
    anthropic_upstream: FakeAnthropic,
) -> None:
    openai_upstream.reset()
    anthropic_upstream.reset()
    answers, tokens = _whole_session(session, dev_chain, openai_upstream)
    session.stop()  # flush and close the logs

    secrets = [OPENAI_KEY, ANTHROPIC_KEY, JWT_SECRET, *tokens, *_pem_lines(IAP_KEY)]
    secrets += [f"Bearer {OPENAI_KEY}"]
    logs = session.gateway.logs() + session.auth.logs()
    assert logs.count("\n") > 20
    for secret in secrets:
        assert secret not in logs
        for answer in answers:
            if secret in tokens and answer.content.startswith(b'{"token"'):
                continue  # a login answer carries its own new token
            assert secret.encode() not in answer.content
            assert secret not in str(answer.headers.raw)
    # The providers did get the server's keys: the scan looked for the right values.
    assert (
        openai_upstream.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    )
    assert anthropic_upstream.requests[0].headers["x-api-key"] == ANTHROPIC_KEY


def _whole_session(
    stack: OwnStack, chain: DevChain, openai: FakeOpenAI
) -> tuple[list[httpx.Response], list[str]]:
    answers: list[httpx.Response] = []
    tokens: list[str] = []
    with httpx.Client(base_url=stack.url, timeout=15) as http:
        for account in (None, "7d3c1f0e-2b4a-4c8d-9e6f-0a1b2c3d4e5f"):
            login = http.post(
                "/appstore",
                content=chain.sign_transaction(
                    bundle_id=BUNDLE_ID, app_account_token=account
                ),
            )
            answers.append(login)
            tokens.append(login.json()["token"])
        auth = {"Authorization": f"Bearer {tokens[0]}"}
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        claude = {**chat, "model": "claude-sonnet-4-6"}
        messages = {**claude, "max_tokens": 5}
        answers += [
            http.post("/v1/chat/completions", json=chat, headers=auth),
            http.post("/v1/chat/completions", json={**chat, "stream": True},
                      headers=auth),
            http.post("/v1/chat/completions", json=claude, headers=auth),
            http.post("/v1/chat/completions", json={**claude, "stream": True},
                      headers=auth),
            http.post("/v1/messages", json=messages, headers=auth),
            http.post("/v1/messages", json=messages,
                      headers={"x-api-key": tokens[1]}),
            http.post("/v1/embeddings", json={"model": "m", "input": "x"},
                      headers=auth),
            http.get("/v1/models", headers=auth),
            http.get("/v1/files", headers=auth),
            http.get("/nowhere", headers=auth),
            http.post("/v1/chat/completions", json=chat,
                      headers={"Authorization": f"Bearer {tokens[0]}x"}),
            http.post("/v1/chat/completions", content=b"{bad", headers=auth),
            http.post("/appstore", content=b"garbage " + tokens[0].encode()),
        ]  # fmt: skip
        refusal = f"Incorrect API key provided: {OPENAI_KEY}."
        openai.queue(error(401, refusal, "invalid_request_error", "invalid_api_key"))
        answers.append(http.post("/v1/chat/completions", json=chat, headers=auth))
    assert answers[-1].status_code == 503
    return answers, tokens


def _pem_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and "-----" not in line]
