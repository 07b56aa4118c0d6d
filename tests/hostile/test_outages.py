"""Dependencies going away: Apple's App Store Server API unreachable answers 503 (never
401), and Redis outages answer 503 `unavailable` (fail closed) or let requests through
(fail open), with /readyz following Redis as the contract says."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth_service.dev_storekit import DevChain
from tests.conftest import BUNDLE_ID
from tests.hostile.support import OwnStack, assert_error_shape, own_stack, poll
from tests.support.processes import start_gateway
from tests.support.redis_server import RedisServer, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def iap_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


@pytest.fixture(scope="module")
def apple_down(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[OwnStack]:
    """Status checks on, with Apple's API at an address where nothing listens."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {
        **base_env,
        "IAP_PRIVATE_KEY": iap_key_pem(),
        "IAP_ISSUER_ID": "57246542-96fe-1a63-e053-0824d011072a",
        "IAP_KEY_ID": "2X9R4HXF34",
        "APPSTORE_STATUS_CHECK": "1",
        "APPSTORE_API_URL_PRODUCTION": nowhere,
        "APPSTORE_API_URL_SANDBOX": nowhere,
    }
    with own_stack(tmp_path_factory.mktemp("apple-down"), env) as stack:
        yield stack


def test_apple_unreachable_answers_503_not_401(
    apple_down: OwnStack, dev_chain: DevChain
) -> None:
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)

    answer = httpx.post(apple_down.url + "/appstore", content=jws, timeout=30)

    assert answer.status_code == 503, answer.text
    assert_error_shape(503, answer.content)
    assert answer.json()["error"]["code"] == "unavailable"


def test_apple_is_not_asked_for_purchases_without_status(
    apple_down: OwnStack, dev_chain: DevChain
) -> None:
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID, product_type="Non-Consumable")

    answer = httpx.post(apple_down.url + "/appstore", content=jws, timeout=30)

    assert answer.status_code == 200


# --- Redis ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_stack(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    own_redis: RedisServer,
) -> Iterator[tuple[OwnStack, str]]:
    """auth and a fail-closed gateway, plus a fail-open gateway, on their own Redis."""
    tmp = tmp_path_factory.mktemp("redis-outage")
    env = {**base_env, "REDIS_URL": own_redis.url}
    with own_stack(tmp, env) as stack:
        open_env = {**env, "RATE_LIMIT_FAIL_OPEN": "1"}
        fail_open = start_gateway(tmp, open_env, stack.auth.url, name="open")
        try:
            yield stack, fail_open.url
        finally:
            fail_open.stop()


def test_redis_outage_fails_closed_then_recovers(
    redis_stack: tuple[OwnStack, str], own_redis: RedisServer, dev_chain: DevChain
) -> None:
    stack, fail_open_url = redis_stack
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)
    token = httpx.post(stack.url + "/appstore", content=jws).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.post(stack.url + "/v1/chat/completions", json=CHAT, headers=auth)

    own_redis.stop()
    try:
        closed = httpx.post(stack.url + "/v1/chat/completions", json=CHAT, headers=auth)
        opened = httpx.post(
            fail_open_url + "/v1/chat/completions", json=CHAT, headers=auth
        )
        login = httpx.post(stack.url + "/appstore", content=jws)
        ready = {
            "gateway": httpx.get(stack.url + "/readyz"),
            "auth": httpx.get(stack.auth.url + "/readyz"),
            "open": httpx.get(fail_open_url + "/readyz"),
        }
    finally:
        own_redis.start()

    assert closed.status_code == 503
    assert closed.json()["error"]["code"] == "unavailable"
    assert opened.status_code == 200
    assert login.status_code == 503
    assert_error_shape(503, login.content)
    assert ready["gateway"].status_code == 503
    assert ready["auth"].status_code == 503
    assert ready["open"].status_code == 200
    assert ready["open"].json()["status"] == "degraded"
    assert poll(lambda: httpx.get(stack.url + "/readyz").status_code == 200, 10)
    assert poll(lambda: httpx.get(stack.auth.url + "/readyz").status_code == 200, 10)
    again = httpx.post(stack.url + "/v1/chat/completions", json=CHAT, headers=auth)
    assert again.status_code == 200
    for process in (stack.gateway, stack.auth):
        assert "Traceback" not in process.logs()


def test_a_redis_that_stops_answering_costs_a_request_about_a_second(
    redis_stack: tuple[OwnStack, str], own_redis: RedisServer, dev_chain: DevChain
) -> None:
    """Redis accepts and reads but never answers (a frozen process): every path that
    asks it gives up within its time and answers 503, and all recover by themselves."""
    stack, _ = redis_stack
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)
    token = httpx.post(stack.url + "/appstore", content=jws).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert own_redis.process is not None

    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        answers = {}
        for name, send in {
            "chat": lambda: httpx.post(
                stack.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=10
            ),
            "usage": lambda: httpx.get(
                stack.url + "/v1/usage", headers=auth, timeout=10
            ),
            "login": lambda: httpx.post(
                stack.url + "/appstore", content=jws, timeout=10
            ),
        }.items():
            started = time.monotonic()
            answers[name] = (send(), time.monotonic() - started)
    finally:
        own_redis.process.send_signal(signal.SIGCONT)

    for name, (answer, seconds) in answers.items():
        assert answer.status_code == 503, (name, answer.text)
        assert answer.json()["error"]["code"] == "unavailable", name
        assert seconds < 3, (name, seconds)
    assert poll(lambda: httpx.get(stack.url + "/readyz").status_code == 200, 10)
    again = httpx.post(stack.url + "/v1/chat/completions", json=CHAT, headers=auth)
    assert again.status_code == 200
