"""App Store environments end to end: Xcode/LocalTesting only when chosen, never on a
Production or Sandbox instance; OCSP outages answer 503; Apple's real signed data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from auth_service.dev_storekit import DevChain, transaction_payload
from tests.auth.conftest import MakeAuth, claims_of
from tests.conftest import BUNDLE_ID, Stack
from tests.support.fake_appstore import FakeAppStore
from tests.support.processes import start_auth
from tests.support.redis_server import free_port

APPLE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "apple"
REAL_JWS = APPLE_DIR / "sandbox-transaction-consumable.jws"


def _unsigned(**fields: Any) -> str:
    """A StoreKit-testing-style transaction nobody signed."""
    payload = transaction_payload(bundle_id=BUNDLE_ID, environment="Xcode", **fields)
    return jwt.encode(payload, "", algorithm="none")


def test_environments_production_instance_refuses_unsigned_xcode_data(
    stack: Stack,
) -> None:
    response = httpx.post(stack.url + "/appstore", content=_unsigned())

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"


async def test_environments_sandbox_instance_refuses_unsigned_xcode_data(
    make_auth: MakeAuth,
) -> None:
    auth = await make_auth(APPSTORE_ENVIRONMENT="Sandbox")

    response = await auth.login(_unsigned())

    assert response.status_code == 401


async def test_environments_local_testing_accepts_its_own_data(
    make_auth: MakeAuth,
) -> None:
    auth = await make_auth(APPSTORE_ENVIRONMENT="LocalTesting")
    local = transaction_payload(bundle_id=BUNDLE_ID, environment="LocalTesting")

    accepted = await auth.login(jwt.encode(local, "", algorithm="none"))
    xcode = await auth.login(_unsigned())

    assert accepted.status_code == 200
    assert claims_of(accepted.json()["token"])["env"] == "LocalTesting"
    assert xcode.status_code == 401


def test_environments_xcode_instance_accepts_unsigned_data_loudly(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    auth = start_auth(tmp_path, {**base_env, "APPSTORE_ENVIRONMENT": "Xcode"})
    try:
        response = httpx.post(auth.url + "/appstore", content=_unsigned())
        logs = [json.loads(line) for line in auth.logs().splitlines() if line]
    finally:
        auth.stop()

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["token"])["env"] == "Xcode"
    warnings = [e for e in logs if e.get("level", "").lower() == "warning"]
    assert any("WITHOUT any signature check" in e.get("message", "") for e in warnings)


async def test_environments_ocsp_outage_answers_503(
    make_auth: MakeAuth, tmp_path: Path
) -> None:
    chain = DevChain.create(ocsp_url=f"http://127.0.0.1:{free_port()}/ocsp")
    chain.write_root(tmp_path)
    auth = await make_auth(
        APPSTORE_ONLINE_CHECKS="1", APPLE_ROOT_CERTS_DIR=str(tmp_path)
    )

    response = await auth.login(chain.sign_transaction(bundle_id=BUNDLE_ID))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


@pytest.mark.skipif(not REAL_JWS.is_file(), reason=f"no Apple data in {APPLE_DIR}")
async def test_environments_real_apple_transaction_through_the_api_lookup(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    appstore.bundle_id = "com.goodheartapp"
    try:
        appstore.add_transaction(
            "Sandbox", "2000000847061981", REAL_JWS.read_text().strip()
        )
        auth = await make_auth(
            APP_BUNDLE_ID="com.goodheartapp",
            APPLE_ROOT_CERTS_DIR=str(APPLE_DIR),
            APPSTORE_PRODUCT_TYPES="Consumable",
            APPSTORE_ACCEPT_LEGACY="1",
            **appstore.env(),
        )

        response = await auth.login("2000000847061981")
    finally:
        appstore.bundle_id = BUNDLE_ID

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["token"])
    assert claims["env"] == "Sandbox"
    assert claims["pid"] == "gh_super_good_ticket_1"
