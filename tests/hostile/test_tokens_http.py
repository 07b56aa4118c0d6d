"""Token attacks at the HTTP level, through the gateway: a few representative forgeries
(the full table is unit-tested in tests/shared/test_tokens.py), a revoked purchase, and
a banned user coming back."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.settings import Secret
from shared.tokens import key_id
from tests.conftest import Stack
from tests.hostile.support import assert_error_shape
from tests.support.processes import TEST_JWT_SECRET

KID = key_id(Secret(TEST_JWT_SECRET))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "subgate-auth",
        "aud": "subgate-gateway",
        "sub": "acct:attacker",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "otid": "2000000000000001",
        "env": "Sandbox",
        "pid": "subgate.pro.monthly",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def signed(
    payload: dict[str, Any], secret: str = TEST_JWT_SECRET, **header: Any
) -> str:
    headers = {"kid": KID, **header}
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def unsigned(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, None, algorithm="none", headers={"kid": KID})


def rs256(payload: dict[str, Any]) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": KID})


def hmac_claiming(
    alg: str, payload: dict[str, Any], digest: Any = hashlib.sha256
) -> str:
    """Algorithm confusion: an HMAC made with the real secret under another `alg`."""
    header = {"alg": alg, "typ": "JWT", "kid": KID}
    parts = [_b64(json.dumps(part).encode()) for part in (header, payload)]
    signing_input = ".".join(parts).encode()
    mac = hmac.new(TEST_JWT_SECRET.encode(), signing_input, digest).digest()
    return ".".join([*parts, _b64(mac)])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


FORGERIES = {
    "alg none": lambda: unsigned(claims()),
    "RS256": lambda: rs256(claims()),
    "HMAC claiming RS256": lambda: hmac_claiming("RS256", claims()),
    "HMAC claiming ES256": lambda: hmac_claiming("ES256", claims()),
    "HS512 with the secret": lambda: hmac_claiming("HS512", claims(), hashlib.sha512),
    "wrong secret": lambda: signed(claims(), "another-secret-of-at-least-32-bytes!!"),
    "expired": lambda: signed(claims(exp=int(time.time()) - 5)),
    "not yet valid": lambda: signed(claims(nbf=int(time.time()) + 600)),
    "issued in the future": lambda: signed(claims(iat=int(time.time()) + 600)),
    "wrong audience": lambda: signed(claims(aud="someone-else")),
    "wrong issuer": lambda: signed(claims(iss="evil")),
    "missing sub": lambda: signed(claims(sub=None)),
    "missing exp": lambda: signed(claims(exp=None)),
    "unknown kid": lambda: signed(claims(), kid="0123456789abcdef"),
    "no kid": lambda: jwt.encode(claims(), TEST_JWT_SECRET, algorithm="HS256"),
    "garbage": lambda: "not.a.jwt",
    "null": lambda: "null",
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_tokens_answer_407_and_reach_nobody(stack: Stack, name: str) -> None:
    token = FORGERIES[name]()

    answer = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert answer.status_code == 407, name
    assert_error_shape(407, answer.content)
    assert answer.headers["proxy-authenticate"] == 'Bearer realm="subgate"'
    assert stack.openai.requests == []


def test_forged_token_in_x_api_key_on_messages_answers_407(stack: Stack) -> None:
    answer = httpx.post(
        stack.url + "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []},
        headers={"x-api-key": unsigned(claims())},
    )

    assert answer.status_code == 407
    assert_error_shape(407, answer.content, shape="anthropic")
    assert stack.anthropic.requests == []


def test_revoked_purchase_is_refused_at_the_gateway_and_at_login(
    stack: Stack,
) -> None:
    jws = stack.sign()
    token = httpx.post(stack.url + "/appstore", content=jws).json()["token"]
    session = jwt.decode(token, options={"verify_signature": False})
    with redis.Redis.from_url(stack.redis_url) as client:
        client.sadd(f"subgate:revoked:{{{session['sub']}}}", session["otid"])

    used = httpx.get(stack.url + "/v1/models", headers=_bearer(token))
    again = httpx.post(stack.url + "/appstore", content=jws)

    assert used.status_code == 401
    assert used.json()["error"]["code"] == "subscription_required"
    assert again.status_code == 401
    assert stack.openai.requests == []


def test_banned_user_cannot_use_old_token_or_log_in_again(stack: Stack) -> None:
    account = str(uuid.uuid4())
    token = stack.login(app_account_token=account)
    with redis.Redis.from_url(stack.redis_url) as client:
        key = f"subgate:ban:{{acct:{account}}}"
        client.hset(key, mapping={"strikes": 50, "banned_at": int(time.time())})

    used = httpx.get(stack.url + "/v1/models", headers=_bearer(token))
    relogin = httpx.post(
        stack.url + "/appstore", content=stack.sign(app_account_token=account)
    )

    assert used.status_code == 403
    assert used.json()["error"]["code"] == "banned"
    assert relogin.status_code == 403
    assert relogin.json()["error"]["code"] == "banned"
    assert "token" not in relogin.text
    assert stack.openai.requests == []


def test_token_of_another_purchase_still_works_after_a_ban(stack: Stack) -> None:
    banned, other = str(uuid.uuid4()), str(uuid.uuid4())
    stack.login(app_account_token=banned)
    with redis.Redis.from_url(stack.redis_url) as client:
        client.hset(f"subgate:ban:{{acct:{banned}}}", "banned_at", int(time.time()))

    token = stack.login(app_account_token=other)
    answer = httpx.get(stack.url + "/v1/models", headers=_bearer(token))

    assert answer.status_code == 200


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
