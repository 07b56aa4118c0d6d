"""A real login through the gateway with the Apple-signed sandbox transaction in
`../shared/apple`, verified against Apple Root CA - G3 (online checks off: its leaf has
expired, and Apple's library then judges the chain at the payload's signedDate)."""

from __future__ import annotations

from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.processes import start_auth, start_gateway

APPLE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "apple"
TRANSACTION = APPLE_DIR / "sandbox-transaction-consumable.jws"

pytestmark = pytest.mark.skipif(
    not TRANSACTION.is_file(),
    reason=f"Apple reference data not found at {APPLE_DIR}",
)


def _login(tmp_path: Path, base_env: dict[str, str], **env: str) -> httpx.Response:
    settings = {
        **base_env,
        "APPLE_ROOT_CERTS_DIR": str(APPLE_DIR),
        "APP_BUNDLE_ID": "com.goodheartapp",
        "APPSTORE_ENVIRONMENT": "Sandbox",
        "APPSTORE_ONLINE_CHECKS": "0",
        **env,
    }
    auth = start_auth(tmp_path, settings)
    gateway = start_gateway(tmp_path, settings, auth.url)
    try:
        return httpx.post(gateway.url + "/appstore", content=TRANSACTION.read_bytes())
    finally:
        gateway.stop()
        auth.stop()


def test_real_apple_transaction_logs_in_when_its_type_is_allowed(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    response = _login(tmp_path, base_env, APPSTORE_PRODUCT_TYPES="Consumable")

    assert response.status_code == 200
    claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
    assert claims["sub"] == "txn:2000000847061981"
    assert claims["env"] == "Sandbox"
    assert claims["pid"] == "gh_super_good_ticket_1"


def test_real_apple_transaction_is_refused_with_default_product_types(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    response = _login(tmp_path, base_env)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"
