"""Session tokens: what the gateway accepts and the many ways a token is refused."""

from __future__ import annotations

import base64
import json
import time
import warnings
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.errors import SessionExpired
from shared.settings import Settings, load_settings
from shared.tokens import AUDIENCE, ISSUER, TokenSigner, TokenVerifier, key_id

SECRET = "a-test-secret-that-is-long-enough-0123456789"
OLD_SECRET = "an-older-secret-that-is-also-long-enough-987"


def make_settings(**env: str) -> Settings:
    return load_settings({"JWT_SECRET": SECRET, **env}, env_file=None)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "acct:1234",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
        "otid": "1000",
        "env": "Sandbox",
        "pid": "pro",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(payload: dict[str, Any], key: str = SECRET, **header: Any) -> str:
    header.setdefault("kid", key_id(make_settings().jwt_secret))
    return jwt.encode(payload, key, algorithm="HS256", headers=header)


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_token_minted_by_auth_verifies_at_gateway() -> None:
    settings = make_settings()
    token, expires_at = TokenSigner(settings).mint(
        "acct:abc", original_transaction_id="42", environment="Sandbox", product_id="p"
    )

    session = TokenVerifier(settings).verify(token)

    assert session.user_id == "acct:abc"
    assert session.original_transaction_id == "42"
    assert session.expires_at == expires_at
    assert jwt.get_unverified_header(token)["kid"] == key_id(settings.jwt_secret)


def test_token_carries_contract_claims() -> None:
    token, _ = TokenSigner(make_settings()).mint(
        "txn:9", original_transaction_id="9", environment="Production", product_id="p"
    )

    payload = jwt.decode(token, options={"verify_signature": False})

    assert set(payload) == {
        "iss",
        "aud",
        "sub",
        "iat",
        "exp",
        "jti",
        "otid",
        "env",
        "pid",
    }
    assert payload["iss"] == "subgate-auth" and payload["aud"] == "subgate-gateway"


def test_token_never_outlives_the_purchase() -> None:
    not_after = int(time.time()) + 30

    _, expires_at = TokenSigner(make_settings()).mint(
        "u",
        original_transaction_id="1",
        environment="Sandbox",
        product_id=None,
        not_after=not_after,
    )

    assert expires_at == not_after


def test_token_ttl_follows_setting() -> None:
    _, expires_at = TokenSigner(make_settings(JWT_TTL_SECONDS="120")).mint(
        "u", original_transaction_id="1", environment="Sandbox", product_id=None
    )

    assert expires_at - int(time.time()) in (119, 120)


def test_previous_secret_still_verifies_during_rotation() -> None:
    old = load_settings({"JWT_SECRET": OLD_SECRET}, env_file=None)
    token, _ = TokenSigner(old).mint(
        "u", original_transaction_id="1", environment="Sandbox", product_id=None
    )
    rotated = make_settings(JWT_PREVIOUS_SECRETS=OLD_SECRET)

    assert TokenVerifier(rotated).verify(token).user_id == "u"
    with pytest.raises(SessionExpired):
        TokenVerifier(make_settings()).verify(token)


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


REFUSED = {
    "garbage": lambda: "not-a-token",
    "empty": lambda: "",
    "alg none": lambda: (
        b64({"alg": "none", "kid": key_id(make_settings().jwt_secret)})
        + "."
        + b64(claims())
        + "."
    ),
    "wrong secret": lambda: forge(
        claims(), key="another-secret-that-is-long-enough-xyz"
    ),
    "expired": lambda: forge(claims(exp=int(time.time()) - 10)),
    "not yet valid": lambda: forge(claims(nbf=int(time.time()) + 600)),
    "issued in the future": lambda: forge(claims(iat=int(time.time()) + 600)),
    "wrong audience": lambda: forge(claims(aud="someone-else")),
    "wrong issuer": lambda: forge(claims(iss="evil")),
    "missing sub": lambda: forge(claims(sub=None)),
    "missing exp": lambda: forge(claims(exp=None)),
    "missing jti": lambda: forge(claims(jti=None)),
    "empty sub": lambda: forge(claims(sub="")),
    "unknown kid": lambda: forge(claims(), kid="0123456789abcdef"),
    "no kid": lambda: jwt.encode(claims(), SECRET, algorithm="HS256"),
    "HS512 with the right secret": lambda: _hs512(),
    "RS256 signed": lambda: jwt.encode(
        claims(),
        _rsa_pem(),
        algorithm="RS256",
        headers={"kid": key_id(make_settings().jwt_secret)},
    ),
    "tampered payload": lambda: _tamper(forge(claims())),
}


def _hs512() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        kid = key_id(make_settings().jwt_secret)
        return jwt.encode(claims(), SECRET, algorithm="HS512", headers={"kid": kid})


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    return ".".join([header, b64(claims(sub="acct:someone-else")), signature])


@pytest.mark.parametrize("make_token", REFUSED.values(), ids=REFUSED.keys())
def test_verify_refuses(make_token: Any) -> None:
    with pytest.raises(SessionExpired):
        TokenVerifier(make_settings()).verify(make_token())


def test_session_expired_error_tells_the_app_to_log_in_again() -> None:
    error = SessionExpired()

    assert error.status == 407
    assert error.headers["Proxy-Authenticate"] == 'Bearer realm="subgate"'
    assert json.loads(error.body())["error"]["code"] == "session_expired"


def test_remembered_token_is_refused_once_it_expires() -> None:
    verifier = TokenVerifier(make_settings())
    expires_at = int(time.time()) + 1
    token = forge(claims(exp=expires_at))
    assert verifier.verify(token).expires_at == expires_at

    while time.time() < expires_at:
        time.sleep(0.05)

    with pytest.raises(SessionExpired):
        verifier.verify(token)
