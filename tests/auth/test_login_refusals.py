"""Through the gateway: anything that is not a verifiable purchase answers 401, only
an empty or non-UTF-8 body answers 400, and no refusal echoes what was sent."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import jwt
import pytest

from auth_service.dev_storekit import DevChain, replace_certificate, tamper_payload
from tests.conftest import Stack

Make = Callable[[Stack], bytes]


def _other_chain(stack: Stack) -> bytes:
    return DevChain.create().sign_transaction(bundle_id="com.example.subgate").encode()


REFUSED_401: dict[str, Make] = {
    "tampered payload": lambda s: tamper_payload(s.sign(), productId="other").encode(),
    "other bundle id": lambda s: s.sign(bundle_id="com.evil.app").encode(),
    "expired subscription": lambda s: s.sign(expires_in=-60).encode(),
    "revoked transaction": lambda s: s.sign(revoked=True).encode(),
    "wrong environment": lambda s: s.sign(environment="Xcode").encode(),
    "product type not allowed": lambda s: s.sign(product_type="Consumable").encode(),
    "untrusted root": _other_chain,
    "swapped leaf certificate": lambda s: replace_certificate(
        s.sign(), 0, DevChain.create().leaf.der
    ).encode(),
    "garbage text": lambda s: b"this is not a transaction",
    "base64 garbage": lambda s: b"QUJDREVGR0hJSktMTU5PUA==",
    "three dots": lambda s: b"a.b.c",
}


@pytest.mark.parametrize("make", REFUSED_401.values(), ids=REFUSED_401.keys())
def test_login_refuses_what_is_not_a_verifiable_purchase(
    stack: Stack, make: Make
) -> None:
    body = make(stack)

    response = httpx.post(stack.url + "/appstore", content=body)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"
    assert body[-40:].decode(errors="replace") not in response.text


@pytest.mark.parametrize("body", [b"", b"   \n", b"\xff\xfe\x00garbage"])
def test_login_answers_400_for_empty_or_non_utf8_body(
    stack: Stack, body: bytes
) -> None:
    response = httpx.post(stack.url + "/appstore", content=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_login_with_app_account_token_names_the_account(stack: Stack) -> None:
    token = stack.login(app_account_token="A0B1C2D3-0000-4000-8000-000000000001")

    session = httpx.get(
        stack.url + "/v1/models", headers={"authorization": f"Bearer {token}"}
    )

    assert session.status_code == 200
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "acct:a0b1c2d3-0000-4000-8000-000000000001"
